//! The real binaries as child processes: for tests that kill servers with SIGKILL, restart
//! them, and drive the `dfs` CLI. Logs go to files in the cluster's temp directory.

use crate::Certs;
use dfs_common::net::tls::write_pair;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Path of one of the workspace's binaries, next to the test executable's directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// Ports this test process has handed out: never twice.
static HANDED_OUT: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
    std::sync::Mutex::new(None);

/// Lowest port handed out.
const FIRST_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (what `bind(0)` and outgoing connections
/// use).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u16| low > FIRST_PORT + 1000)
        .unwrap_or(32_768)
}

/// A port that `free` finds free now, below the ephemeral range and never handed out before
/// by this process. A handed-out port is bound by its server only later; a port of the
/// ephemeral range could meanwhile go to any `bind(0)` or outgoing connection of a concurrent
/// test, and its server would then fail to start. Below that range only an explicit bind
/// takes a port.
fn unique_port(free: impl Fn(u16) -> bool) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(ephemeral_start() - FIRST_PORT);
    // Test processes running side by side start at different places.
    let start = std::process::id().wrapping_mul(7919);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(Default::default);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST_PORT + (start.wrapping_add(n) % span) as u16;
        if !handed.contains(&port) && free(port) {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// Sends SIGSTOP (`frozen`) or SIGCONT to `child`, without starting a process (see
/// [`ProcessCluster::freeze_chunk`]).
fn signal(child: &Child, frozen: bool) {
    let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers; the pid is our own running child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// A free TCP port on 127.0.0.1, never handed out before by this process.
pub fn free_tcp_port() -> u16 {
    unique_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A free UDP port on 127.0.0.1, never handed out before by this process.
pub fn free_udp_port() -> u16 {
    unique_port(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    pub certs_dir: PathBuf,
    pub meta_addr: SocketAddr,
    /// The metadata server's status page and metrics (HTTP).
    pub meta_http: SocketAddr,
    /// Each running chunk server's metrics address (HTTP), by index.
    pub chunk_http: std::collections::HashMap<usize, SocketAddr>,
    meta: Option<Child>,
    chunks: Vec<Option<Child>>,
    starts: usize,
    /// Extra flags for the metadata server, and per chunk server (by index).
    pub meta_args: Vec<String>,
    pub chunk_args: std::collections::HashMap<usize, Vec<String>>,
    /// Where the metadata server listens, if not on `meta_addr` (e.g. 0.0.0.0, to be reached
    /// from a network namespace).
    pub meta_listen: Option<String>,
    /// Chunk servers run inside a network namespace: (namespace, listen IP, metadata address).
    pub chunk_netns: std::collections::HashMap<usize, (String, String, String)>,
    /// Further members of the metadata group (started with `--join`), by index from 1: their
    /// addresses are reserved up front, so chunk servers, mounts and the CLI know them all.
    pub members: Vec<(SocketAddr, Option<Child>)>,
    /// Extra flags of every metadata server (the first and the members).
    pub group_args: Vec<String>,
    /// `DFS_FAULTS` of metadata server `i` (0 is the first), for its next start.
    pub member_faults: std::collections::HashMap<usize, String>,
    /// The network namespace the first metadata server runs in, if any.
    pub meta_netns: Option<String>,
    /// The address chunk servers outside namespaces listen on.
    pub chunk_ip: String,
}

impl ProcessCluster {
    pub fn start(chunk_servers: usize) -> ProcessCluster {
        Self::start_with(chunk_servers, |_| {})
    }

    /// Starts a cluster after `configure` has set extra flags.
    pub fn start_with(
        chunk_servers: usize,
        configure: impl FnOnce(&mut ProcessCluster),
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs::generate();
        let certs_dir = dir.path().join("certs");
        write_pair(&certs_dir, "ca", &certs.ca).unwrap();
        write_pair(&certs_dir, "meta", &certs.meta).unwrap();
        write_pair(&certs_dir, "server", &certs.server).unwrap();
        write_pair(&certs_dir, "admin", &certs.client).unwrap();
        let meta_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let mut cluster = ProcessCluster {
            dir,
            certs,
            certs_dir,
            meta_addr,
            meta_http: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            chunk_http: Default::default(),
            meta: None,
            chunks: (0..chunk_servers).map(|_| None).collect(),
            starts: 0,
            meta_args: Vec::new(),
            chunk_args: Default::default(),
            meta_listen: None,
            chunk_netns: Default::default(),
            members: Vec::new(),
            group_args: Vec::new(),
            member_faults: Default::default(),
            meta_netns: None,
            chunk_ip: "127.0.0.1".into(),
        };
        configure(&mut cluster);
        cluster.start_meta();
        for i in 0..chunk_servers {
            cluster.start_chunk(i);
        }
        cluster
    }

    fn log(&mut self, name: &str) -> (Stdio, Stdio) {
        self.starts += 1;
        let path = self.dir.path().join(format!("{name}.{}.log", self.starts));
        let f = File::create(path).unwrap();
        (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
    }

    /// A `dfs-meta` command for member `i` (0 is the first server) with the test timings, its
    /// faults and the extra flags; its log goes to a file of its own.
    fn meta_command(
        &mut self,
        i: usize,
        mut cmd: Command,
        listen: String,
        data: PathBuf,
    ) -> Command {
        let name = if i == 0 {
            "meta".to_string()
        } else {
            format!("meta{i}")
        };
        let (out, err) = self.log(&name);
        if let Some(faults) = self.member_faults.get(&i) {
            cmd.env("DFS_FAULTS", faults);
        }
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data")
            .arg(data)
            .arg("--certs")
            .arg(&self.certs_dir)
            .arg("--server-timeout-secs")
            .arg(crate::TEST_SERVER_TIMEOUT.as_secs_f64().to_string())
            .arg("--repair-interval-secs")
            .arg(crate::TEST_REPAIR_INTERVAL.as_secs_f64().to_string())
            .arg("--gc-grace-secs")
            .arg(crate::TEST_GC_GRACE.as_secs_f64().to_string())
            .args(&self.group_args)
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(err);
        cmd
    }

    pub fn start_meta(&mut self) {
        assert!(self.meta.is_none(), "metadata server already running");
        let listen = self
            .meta_listen
            .clone()
            .unwrap_or_else(|| self.meta_addr.to_string());
        let cmd = match &self.meta_netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(binary("dfs-meta"));
                cmd
            }
            None => Command::new(binary("dfs-meta")),
        };
        let data = self.dir.path().join("meta");
        let child = self
            .meta_command(0, cmd, listen, data)
            .arg("--http")
            .arg(self.meta_http.to_string())
            .args(&self.meta_args)
            .spawn()
            .expect("start dfs-meta");
        self.meta = Some(child);
    }

    /// Reserves addresses for `n` more members of the metadata group (see
    /// [`Self::start_member`]); call it before chunk servers start.
    pub fn reserve_members(&mut self, n: usize) {
        self.reserve_members_on("127.0.0.1", n);
    }

    /// [`Self::reserve_members`] on the host address `ip`.
    pub fn reserve_members_on(&mut self, ip: &str, n: usize) {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        for _ in 0..n {
            let addr = SocketAddr::new(ip, free_udp_port());
            self.members.push((addr, None));
        }
    }

    /// Every metadata address, comma-separated: the first server, then the reserved members.
    pub fn meta_spec(&self) -> String {
        std::iter::once(self.meta_addr)
            .chain(self.members.iter().map(|(a, _)| *a))
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address of member `i` (0 is the first server).
    pub fn member_addr(&self, i: usize) -> SocketAddr {
        match i {
            0 => self.meta_addr,
            i => self.members[i - 1].0,
        }
    }

    /// Starts reserved member `i` (from 1), which waits to be added with `dfs meta add`
    /// (and rejoins its group when restarted).
    pub fn start_member(&mut self, i: usize) {
        assert!(
            self.members[i - 1].1.is_none(),
            "member {i} already running"
        );
        let listen = self.members[i - 1].0.to_string();
        let data = self.dir.path().join(format!("meta{i}"));
        let child = self
            .meta_command(i, Command::new(binary("dfs-meta")), listen, data)
            .arg("--http")
            .arg("off")
            .arg("--join")
            .spawn()
            .expect("start dfs-meta");
        self.members[i - 1].1 = Some(child);
    }

    /// Starts member `i` again (0 is the first server) after it stopped.
    pub fn restart_member(&mut self, i: usize) {
        match i {
            0 => {
                Self::kill(&mut self.meta);
                self.start_meta();
            }
            i => {
                Self::kill(&mut self.members[i - 1].1);
                self.start_member(i);
            }
        }
    }

    /// Whether member `i` has exited (it died at a fault point, say); reaps it if so.
    pub fn member_exited(&mut self, i: usize) -> bool {
        self.member_process(i).is_none() || self.member_exit_status(i).is_some()
    }

    /// How member `i` exited, if it has since it was started (then it is reaped).
    pub fn member_exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let child = self.member_process(i);
        let status = child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            *child = None;
        }
        status
    }

    /// Member `i`'s process (0 is the first server), if it runs.
    fn member_process(&mut self, i: usize) -> &mut Option<Child> {
        match i {
            0 => &mut self.meta,
            i => &mut self.members[i - 1].1,
        }
    }

    /// A `dfs` CLI command pointed at member `i` alone.
    pub fn member_cli(&self, i: usize) -> Command {
        let mut cmd = self.cli();
        cmd.env("DFS_META", self.member_addr(i).to_string());
        cmd
    }

    /// SIGKILLs member `i` of the metadata group (0 is the first server).
    pub fn kill_member(&mut self, i: usize) {
        match i {
            0 => Self::kill(&mut self.meta),
            i => Self::kill(&mut self.members[i - 1].1),
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) member `i` of the metadata group (0 is the first
    /// server): silent to everyone while frozen, its connections open, as a paused VM is.
    pub fn freeze_member(&mut self, i: usize, frozen: bool) {
        let child = self.member_process(i).as_ref().expect("member running");
        signal(child, frozen);
    }

    pub fn chunk_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("chunk{i}"))
    }

    pub fn start_chunk(&mut self, i: usize) {
        assert!(self.chunks[i].is_none(), "chunk server {i} already running");
        let (out, err) = self.log(&format!("chunk{i}"));
        // In a network namespace, `ip netns exec` becomes the server (it execs it).
        let (mut cmd, listen, meta) = match self.chunk_netns.get(&i) {
            Some((ns, ip, meta)) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(binary("dfs-chunk"));
                (cmd, format!("{ip}:0"), meta.clone())
            }
            None => (
                Command::new(binary("dfs-chunk")),
                format!("{}:0", self.chunk_ip),
                self.meta_spec(),
            ),
        };
        let http = if self.chunk_netns.contains_key(&i) {
            self.chunk_http.remove(&i);
            "off".to_string()
        } else {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
            self.chunk_http.insert(i, addr);
            addr.to_string()
        };
        let child = cmd
            .arg("--listen")
            .arg(listen)
            .arg("--http")
            .arg(http)
            .arg("--data")
            .arg(self.chunk_dir(i))
            .arg("--meta")
            .arg(meta)
            .arg("--certs")
            .arg(&self.certs_dir)
            .arg("--heartbeat-ms")
            .arg(crate::TEST_HEARTBEAT.as_millis().to_string())
            .arg("--reconcile-secs")
            .arg(crate::TEST_RECONCILE_INTERVAL.as_secs_f64().to_string())
            .arg("--orphan-grace-secs")
            .arg(crate::TEST_ORPHAN_GRACE.as_secs_f64().to_string())
            .args(self.chunk_args.get(&i).into_iter().flatten())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start dfs-chunk");
        self.chunks[i] = Some(child);
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGKILLs the metadata server.
    pub fn kill_meta(&mut self) {
        Self::kill(&mut self.meta);
    }

    /// SIGKILLs chunk server `i`.
    pub fn kill_chunk(&mut self, i: usize) {
        Self::kill(&mut self.chunks[i]);
    }

    /// Starts one more chunk server; returns its index.
    pub fn add_chunk(&mut self) -> usize {
        self.chunks.push(None);
        let i = self.chunks.len() - 1;
        self.start_chunk(i);
        i
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) chunk server `i`: silent to everyone while
    /// frozen, as if cut off from the network, then back with everything it had.
    ///
    /// The signal is sent without starting a process: a child started while this process holds
    /// a file of a mount open would close its copy of the descriptor at exec, and that close
    /// (a FUSE flush) waits for whatever the descriptor is doing, such as an fsync waiting for
    /// the frozen servers.
    pub fn freeze_chunk(&mut self, i: usize, frozen: bool) {
        let child = self.chunks[i].as_ref().expect("chunk server running");
        signal(child, frozen);
    }

    /// The server id chunk server `i` chose (from its data directory).
    pub fn chunk_id(&self, i: usize) -> u64 {
        let text = std::fs::read_to_string(self.chunk_dir(i).join("identity"))
            .expect("chunk server identity");
        text.lines()
            .find_map(|l| l.strip_prefix("id = "))
            .and_then(|v| v.trim().parse().ok())
            .expect("id line")
    }

    /// A `dfs` CLI command already pointed at this cluster.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(binary("dfs"));
        cmd.env("DFS_META", self.meta_spec())
            .env("DFS_CERTS", &self.certs_dir)
            .env_remove("RUST_LOG");
        cmd
    }

    /// Every log line the servers wrote, for failure messages.
    /// The logs of the metadata server (of its every start), without the other processes'.
    pub fn meta_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("meta.") && name.ends_with(".log") {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out += &format!("--- {}\n", e.path().display());
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        Self::kill(&mut self.meta);
        for (_, c) in &mut self.members {
            Self::kill(c);
        }
        for c in &mut self.chunks {
            Self::kill(c);
        }
    }
}

/// A FUSE mount made by the real `dfs-mount`, unmounted when dropped (also when a test fails).
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// Mounts `volume` of `cluster` at a new directory under the cluster's temp dir, with extra
    /// `-o` options. Returns the mount, or the command's stderr if it failed.
    pub fn new(
        cluster: &ProcessCluster,
        volume: &str,
        name: &str,
        options: &str,
    ) -> Result<Mount, String> {
        Mount::with_env(cluster, volume, name, options, &[])
    }

    /// Like [`Mount::new`], with extra environment variables for `dfs-mount` (such as
    /// `DFS_FAULTS`).
    pub fn with_env(
        cluster: &ProcessCluster,
        volume: &str,
        name: &str,
        options: &str,
        env: &[(&str, &str)],
    ) -> Result<Mount, String> {
        let dir = cluster.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(binary("dfs-mount"));
        cmd.arg(format!("{}:/{volume}", cluster.meta_spec()))
            .arg(&dir)
            .env("DFS_CERTS", &cluster.certs_dir)
            .envs(env.iter().copied());
        // The mount's log lands beside the servers' logs, in `ProcessCluster::logs`.
        let log = cluster.dir.path().join(format!("mount-{name}.log"));
        cmd.arg("-o").arg(format!("log={}", log.display()));
        if !options.is_empty() {
            cmd.arg("-o").arg(options);
        }
        let out = cmd.output().expect("run dfs-mount");
        if out.status.success() {
            Ok(Mount { dir })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|t| t.lines().any(|l| l.split(' ').nth(1) == self.dir.to_str()));
        if !mounted {
            return;
        }
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let lazy = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            // Without fuse3's tools installed (a test run before `scripts/test.sh` set the
            // machine up), umount(8) still takes the mount down.
            if !lazy {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}
