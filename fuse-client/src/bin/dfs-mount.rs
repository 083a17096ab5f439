//! `dfs-mount` (also installed as `mount.dfs`): mounts a dfs volume with FUSE.
//!
//! `dfs-mount HOST:PORT:/VOLUME MOUNTPOINT [-o OPTIONS] [-f]`. Without `-f` it returns once the
//! mount is ready and keeps serving it in the background; any failure before that (unreachable
//! cluster, unknown volume, bad certificate, bad mount point) is one line on stderr and exit 1.
//! `umount`, SIGTERM and SIGINT flush open files and end it cleanly.

use anyhow::{bail, Context};
use clap::Parser;
use dfs_client::client::ClientOptions;
use dfs_client::fuse::fs::DfsFs;
use dfs_client::fuse::metrics::FuseMetrics;
use dfs_client::fuse::options::{MountOptions, MountSpec};
use dfs_client::Client;
use dfs_common::config::{pick_identity, tls_paths};
use dfs_common::net::tls::Identity;
use dfs_common::FsError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Mount a dfs volume.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// What to mount: HOST:PORT:/VOLUME.
    spec: String,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    /// Mount options, comma separated: ro, rw, allow_other (the default for root), noallow_other, certs=DIR, identity=NAME (use
    /// DIR/NAME.pem and NAME.key; default client, else admin), metrics=HOST:PORT (serve
    /// Prometheus metrics there), attr_timeout=SECONDS
    /// (default 1), retry=SECONDS (how long operations wait for an unreachable metadata
    /// server before failing with EIO; default 60), hard (wait without limit), soft (fail at
    /// once), log=FILE (the background mount's log; RUST_LOG sets the level, default warn),
    /// writeback=SECONDS (unflushed writes of open files are committed within about twice
    /// this; default 30), readahead=KIB (the kernel's read-ahead window for sequential reads;
    /// default and most 4096, set when mounted by root).
    /// fstab options such as _netdev and noauto are accepted.
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Certificate directory (ca.pem and client.pem/client.key, or admin.pem/admin.key)
    /// [default: /etc/dfs/certs].
    #[arg(long, env = "DFS_CERTS")]
    certs: Option<PathBuf>,
    /// Accepted for mount(8) compatibility: sloppy, no mtab, verbose.
    #[arg(short = 's', hide = true)]
    sloppy: bool,
    #[arg(short = 'n', hide = true)]
    no_mtab: bool,
    #[arg(short = 'v', hide = true)]
    verbose: bool,
}

/// How long an ending mount waits for the metadata server to hear that it stops watching.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Set in the background child: it reports readiness on stdout.
const NOTIFY_ENV: &str = "DFS_MOUNT_NOTIFY";

fn main() -> ExitCode {
    dfs_common::memory::keep_freed_memory();
    let args = Args::parse();
    let result = if args.foreground || std::env::var_os(NOTIFY_ENV).is_some() {
        dfs_common::telemetry::init_logging("warn");
        run(args)
    } else {
        daemonize(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-mount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a detached copy of this command and waits for it to report the mount ready.
fn daemonize(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating dfs-mount")?;
    let mut options = MountOptions::default();
    for list in &args.options {
        MountOptions::parse(list, &mut options).map_err(anyhow::Error::msg)?;
    }
    let log = match &options.log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    match line.trim_end() {
        "ready" => Ok(()),
        "" => {
            let status = child.wait()?;
            bail!("mount process exited ({status}) before the mount was ready")
        }
        message => {
            let _ = child.wait();
            bail!("{}", message.trim_start_matches("error: "))
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    let result = mount_and_serve(args, notify);
    if let (Err(e), true) = (&result, notify) {
        // The waiting parent prints this line; nobody else would see it.
        println!("error: {e:#}");
        return Ok(());
    }
    result
}

fn mount_and_serve(args: Args, notify: bool) -> anyhow::Result<()> {
    let spec = MountSpec::parse(&args.spec).map_err(anyhow::Error::msg)?;
    let mut options = MountOptions::default();
    for list in &args.options {
        MountOptions::parse(list, &mut options).map_err(anyhow::Error::msg)?;
    }
    let certs = options
        .certs
        .clone()
        .or(args.certs.clone())
        .unwrap_or_else(|| PathBuf::from("/etc/dfs/certs"));
    if !args.mountpoint.is_dir() {
        bail!(
            "mount point {} is not a directory",
            args.mountpoint.display()
        );
    }
    let name = match &options.identity {
        Some(name) => name.as_str(),
        None => pick_identity(&certs, &["client", "admin"]),
    };
    let identity = Identity::load(&tls_paths(Some(certs), name, None, None, None)?)?;
    let runtime = dfs_common::runtime::build(options.workers)?;
    let faults = dfs_common::fault::Faults::from_env()?;
    let (client, volume) = runtime.block_on(async {
        let members = dfs_common::net::meta::resolve_list(&spec.meta)?;
        let connect = Client::connect_group(
            &members,
            &identity,
            ClientOptions {
                meta_retry: options.meta_retry,
                inline_max: options.inline_max,
                read_cache_bytes: options.read_cache_bytes,
                spare_blocks: options.spare_blocks,
                faults: faults.clone(),
                ..ClientOptions::default()
            },
        );
        let client = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot reach the metadata server at {}: timed out",
                    spec.meta
                )
            })?
            .with_context(|| format!("cannot reach the metadata server at {}", spec.meta))?;
        let volume = client.volume(&spec.volume).await.map_err(|e| match e {
            FsError::NotFound => anyhow::anyhow!("no volume named {:?}", spec.volume),
            other => other.into(),
        })?;
        anyhow::Ok((client, volume))
    })?;

    let (metrics, metrics_page) = FuseMetrics::new(client.clone());
    if let Some(addr) = options.metrics {
        // Under test (DFS_FAULTS set), the same address also arms and releases fault points.
        let page: dfs_common::http::Handler = match faults.http_handler() {
            Some(control) => {
                Arc::new(move |path: &str| control(path).or_else(|| metrics_page(path)))
            }
            None => metrics_page,
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        runtime.block_on(dfs_common::http::serve(addr, page, shutdown))?;
    }
    let notifier = Arc::new(OnceLock::new());
    let leaving = client.clone();
    let fs = DfsFs::new(
        client,
        volume.root,
        &options,
        runtime.handle().clone(),
        notifier.clone(),
        metrics,
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("{}:/{}", spec.meta, spec.volume)),
        fuser::MountOption::Subtype("dfs".into()),
        fuser::MountOption::DefaultPermissions,
        if options.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    for (set, flag) in [
        (options.no_exec, fuser::MountOption::NoExec),
        (options.no_suid, fuser::MountOption::NoSuid),
        (options.no_dev, fuser::MountOption::NoDev),
    ] {
        if set {
            config.mount_options.push(flag);
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if options.allow_other.unwrap_or(root) {
        config.acl = fuser::SessionACL::All;
    }
    let session = fuser::spawn_mount(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting on {}", args.mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    // Only root may widen the window; others keep the kernel's default.
    if let Err(e) = dfs_client::fuse::readahead::set(&args.mountpoint, options.readahead_kib) {
        tracing::info!(
            "could not set the read-ahead window to {} KiB: {e}",
            options.readahead_kib
        );
    }
    if notify {
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    let mountpoint = args.mountpoint.clone();
    runtime.block_on(async move {
        let mut session_done = tokio::task::spawn_blocking(move || session.join());
        tokio::select! {
            _ = dfs_common::shutdown::wait_for_signal() => {
                unmount(&mountpoint);
                let _ = (&mut session_done).await;
            }
            _ = &mut session_done => {}
        }
        // Other clients' changes to files this mount opened stop waiting for it now, rather
        // than when its delegations lapse.
        match tokio::time::timeout(LEAVE_TIMEOUT, leaving.stop_watching()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::info!("could not tell the metadata server this mount ends: {e}"),
            Err(_) => tracing::info!("the metadata server did not answer this mount's goodbye"),
        }
    });
    Ok(())
}

/// Unmounts through the same path as `umount` does, so the kernel releases (and we flush) every
/// open file first.
fn unmount(mountpoint: &std::path::Path) {
    for tool in ["fusermount3", "fusermount", "umount"] {
        let arg = if tool == "umount" { None } else { Some("-u") };
        let mut cmd = Command::new(tool);
        if let Some(a) = arg {
            cmd.arg(a);
        }
        if cmd
            .arg(mountpoint)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
    }
}
