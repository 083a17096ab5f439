//! Deployment as an operator does it: the example configuration files and the command lines
//! of the systemd units in `deploy/`, for a metadata server and six chunk servers that each
//! listen on their own loopback address (127.0.0.2, 127.0.0.3, ...), as on separate hosts.

use dfs_tests::process::{binary, Mount};
use dfs_tests::random_bytes;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` in an example file, which must contain it.
fn set(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer holds {from:?}");
    text.replacen(from, to, 1)
}

/// A free UDP port on `ip`.
fn free_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The unit's ExecStart, with the install paths mapped into this test's directories.
fn exec_start(unit: &str, instance: &str, etc: &Path) -> Command {
    let line = repo_file(&format!("deploy/systemd/{unit}"))
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=").map(str::to_string))
        .expect("ExecStart line");
    let mut words = line.split_whitespace().map(|w| {
        w.replace("%i", instance)
            .replace("/etc/dfs", etc.to_str().unwrap())
    });
    let program = words.next().unwrap();
    let name = program
        .strip_prefix("/usr/local/bin/")
        .expect("installed binary");
    let mut cmd = Command::new(binary(name));
    cmd.args(words);
    cmd
}

/// Started daemons, killed when the test ends however it ends.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            out += &format!(
                "--- {}\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            );
        }
    }
    out
}

#[test]
fn cluster_from_the_example_configuration_on_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let certs = etc.join("certs");
    let out = Command::new(binary("dfs"))
        .args(["cert", "init", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut daemons = Daemons(Vec::new());
    let start = |cmd: &mut Command, name: &str| -> Child {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"))
    };

    let meta_addr = format!("127.0.0.2:{}", free_port("127.0.0.2"));
    let meta = repo_file("deploy/meta.toml");
    let meta = set(
        &meta,
        "listen = \"0.0.0.0:7000\"",
        &format!("listen = \"{meta_addr}\""),
    );
    let meta = set(
        &meta,
        "data = \"/var/lib/dfs/meta\"",
        &format!("data = \"{}\"", dir.path().join("meta").display()),
    );
    let meta = set(
        &meta,
        "certs = \"/etc/dfs/certs\"",
        &format!("certs = \"{}\"", certs.display()),
    );
    // Chunk servers that stop are noticed sooner than the production default.
    let meta = set(
        &meta,
        "#server_timeout_secs = 30",
        "server_timeout_secs = 5",
    );
    std::fs::write(etc.join("meta.toml"), meta).unwrap();
    daemons
        .0
        .push(start(&mut exec_start("dfs-meta.service", "", &etc), "meta"));

    let mut chunk_addrs = Vec::new();
    for i in 0..6 {
        let ip = format!("127.0.0.{}", 3 + i);
        let addr = format!("{ip}:{}", free_port(&ip));
        let chunk = repo_file("deploy/chunk.toml");
        let chunk = set(
            &chunk,
            "listen = \"0.0.0.0:7100\"",
            &format!("listen = \"{addr}\""),
        );
        let chunk = set(
            &chunk,
            "advertise = \"chunk1.example.com:7100\"",
            &format!("advertise = \"{addr}\""),
        );
        let chunk = set(
            &chunk,
            "data = \"/srv/dfs/disk1\"",
            &format!(
                "data = \"{}\"",
                dir.path().join(format!("disk{i}")).display()
            ),
        );
        let chunk = set(
            &chunk,
            "meta = \"meta.example.com:7000\"",
            &format!("meta = \"{meta_addr}\""),
        );
        let chunk = set(
            &chunk,
            "certs = \"/etc/dfs/certs\"",
            &format!("certs = \"{}\"", certs.display()),
        );
        std::fs::write(etc.join(format!("chunk-disk{i}.toml")), chunk).unwrap();
        daemons.0.push(start(
            &mut exec_start("dfs-chunk@.service", &format!("disk{i}"), &etc),
            &format!("chunk{i}"),
        ));
        chunk_addrs.push(addr);
    }

    let dfs = |args: &[&str]| {
        Command::new(binary("dfs"))
            .env("DFS_META", &meta_addr)
            .env("DFS_CERTS", &certs)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let servers = loop {
        let out = dfs(&["node", "list", "--json"]);
        if out.status.success() {
            let servers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let servers = servers.as_array().unwrap().clone();
            if servers.iter().filter(|s| s["up"] == true).count() == 6 {
                break servers;
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster never came up\n{}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut seen: Vec<String> = servers
        .iter()
        .map(|s| s["addr"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    chunk_addrs.sort();
    assert_eq!(seen, chunk_addrs, "each chunk server on its own address");

    let out = dfs(&["volume", "create", "data", "--ec", "4+2"]);
    assert!(out.status.success(), "{out:?}\n{}", logs(dir.path()));
    // The mount, with the fstab example's options.
    let fstab = repo_file("deploy/fstab.example");
    let options = fstab
        .lines()
        .find(|l| l.contains(":/data"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .replace("/etc/dfs/certs", certs.to_str().unwrap());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(binary("dfs-mount"))
        .arg(format!("{meta_addr}:/data"))
        .arg(&mnt)
        .args(["-o", &options])
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {out:?}\n{}", logs(dir.path()));
    let m = Mount { dir: mnt };
    let data = random_bytes(10 << 20, 42);
    std::fs::write(m.path("file"), &data).unwrap();
    assert!(std::fs::read(m.path("file")).unwrap() == data);

    // The status page is on the metadata server's address, on TCP, by default.
    let mut page = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&meta_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET / HTTP/1.0\r\n\r\n").unwrap();
        s.read_to_string(&mut page).unwrap();
    }
    assert!(page.contains("<span id=\"servers-up\">6</span>"), "{page}");
}
