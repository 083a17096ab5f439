//! A network namespace joined to the host by one veth link, for tests that cut a server off the
//! network and bring it back. Created with iproute2 (root needed), removed on drop, also when a
//! test fails. Only the addresses 10.213.N.1 (host side) and 10.213.N.2 (namespace side) are
//! used, so no traffic leaves the machine.

use std::process::Command;

pub struct NetNs {
    pub name: String,
    host_if: String,
    /// The host's address on the link, and the namespace's.
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A new namespace; `net` (1..=250) picks the 10.213.`net`.0/24 link, so tests running at
    /// the same time use different ones.
    pub fn create(net: u8) -> NetNs {
        let tag = format!("{}{net}", std::process::id() % 10000);
        let ns = NetNs {
            name: format!("dfs-test-{tag}"),
            host_if: format!("dfsh{tag}"),
            host_ip: format!("10.213.{net}.1"),
            ns_ip: format!("10.213.{net}.2"),
        };
        let ns_if = format!("dfsn{tag}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/24", ns.ns_ip), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Cuts (`false`) or restores (`true`) the link: nothing passes while it is down.
    pub fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}
