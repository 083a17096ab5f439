//! `dfs bench`: a quick benchmark of a volume through the client library, or of any mounted
//! directory (`--path`, which also runs against a local directory for comparison). Big files
//! are written and read in 1 MiB pieces; small files are written, read, stat-ed and deleted.
//! Everything it creates is removed at the end.

use crate::output;
use anyhow::Context;
use dfs_client::Client;
use dfs_common::config::parse_size;
use dfs_common::proto::meta::VolumeInfo;
use dfs_common::InodeId;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIECE: usize = 1 << 20;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The volume to run in (through the client library, no mount needed).
    #[arg(required_unless_present = "path")]
    pub volume: Option<String>,
    /// Run in this directory instead (a dfs mount, or a local directory to compare with).
    #[arg(long, conflicts_with = "volume")]
    pub path: Option<PathBuf>,
    /// Size of each big file.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub big_size: u64,
    /// Small files per thread.
    #[arg(long, default_value_t = 100)]
    pub small_files: usize,
    /// Size of each small file.
    #[arg(long, default_value = "128K", value_parser = parse_size)]
    pub small_size: u64,
    /// Concurrent workers; each writes one big file and its own small files.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

/// One measured phase, as printed and as `--json` gives it.
#[derive(serde::Serialize)]
struct Phase {
    name: &'static str,
    threads: u16,
    count: u64,
    bytes: u64,
    seconds: f64,
}

impl Phase {
    fn rate(&self) -> String {
        if self.bytes > 0 {
            format!(
                "{:.1} MiB/s",
                self.bytes as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
            )
        } else {
            format!("{:.0} files/s", self.count as f64 / self.seconds.max(1e-9))
        }
    }

    /// Time per file as each worker sees it.
    fn cost(&self) -> String {
        format!(
            "{:.2} ms/file",
            self.seconds * 1000.0 * self.threads as f64 / self.count.max(1) as f64
        )
    }
}

/// Where the benchmark runs: a directory of a volume, or of the local file system.
#[derive(Clone)]
enum Target {
    Volume(Client, Arc<VolumeInfo>, InodeId),
    Path(PathBuf),
}

impl Target {
    async fn write(&self, name: String, size: u64, fill: u8) -> anyhow::Result<()> {
        match self {
            Target::Volume(client, _, dir) => {
                let mut f = client.create(*dir, &name, 0o644, 0, 0).await?;
                let mut at = 0;
                while at < size {
                    let n = (size - at).min(PIECE as u64) as usize;
                    let mut buf = f.write_buffer();
                    buf.resize(n, fill);
                    f.write_owned(at, buf).await?;
                    at += n as u64;
                }
                f.close().await?;
            }
            Target::Path(dir) => {
                let path = dir.join(name);
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    use std::io::Write;
                    let mut f = std::fs::File::create(path)?;
                    let piece = vec![fill; PIECE];
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(PIECE as u64) as usize;
                        f.write_all(&piece[..n])?;
                        left -= n as u64;
                    }
                    f.sync_all()
                })
                .await??;
            }
        }
        Ok(())
    }

    async fn read(&self, name: String) -> anyhow::Result<u64> {
        match self {
            Target::Volume(client, _, dir) => {
                let attr = client.lookup(*dir, &name).await?;
                let mut f = client.open(attr.ino).await?;
                let mut at = 0;
                while at < attr.size {
                    let got = f.read(at, PIECE as u64).await?;
                    if got.is_empty() {
                        break;
                    }
                    at += got.len() as u64;
                }
                Ok(at)
            }
            Target::Path(dir) => {
                let path = dir.join(name);
                Ok(
                    tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                        use std::io::Read;
                        let mut f = std::fs::File::open(path)?;
                        let mut buf = vec![0u8; PIECE];
                        let mut total = 0;
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                return Ok(total);
                            }
                            total += n as u64;
                        }
                    })
                    .await??,
                )
            }
        }
    }

    async fn stat(&self, name: String) -> anyhow::Result<()> {
        match self {
            Target::Volume(client, _, dir) => {
                client.lookup(*dir, &name).await?;
            }
            Target::Path(dir) => {
                let path = dir.join(name);
                tokio::task::spawn_blocking(move || std::fs::metadata(path)).await??;
            }
        }
        Ok(())
    }

    async fn remove(&self, name: String) -> anyhow::Result<()> {
        match self {
            Target::Volume(client, _, dir) => client.unlink(*dir, &name).await?,
            Target::Path(dir) => {
                let path = dir.join(name);
                tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await??;
            }
        }
        Ok(())
    }
}

/// Runs `work(thread, i)` for `per_thread` items on each of `threads` workers; returns the
/// phase's wall time and the bytes the work reported.
async fn phase<F, Fut>(
    name: &'static str,
    threads: u16,
    per_thread: usize,
    bar: &Option<indicatif::ProgressBar>,
    work: F,
) -> anyhow::Result<Phase>
where
    F: Fn(u16, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    if let Some(bar) = bar {
        bar.set_message(name);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..threads {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0;
            for i in 0..per_thread {
                bytes += work(t, i).await?;
            }
            anyhow::Ok(bytes)
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.context("benchmark worker")??;
    }
    Ok(Phase {
        name,
        threads,
        count: threads as u64 * per_thread as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub async fn run(client: Option<&Client>, args: BenchArgs, json: bool) -> anyhow::Result<()> {
    let stamp = format!(".dfs-bench-{}", std::process::id());
    let target = match (&args.path, &args.volume, client) {
        (Some(path), _, _) => {
            let dir = path.join(&stamp);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Target::Path(dir)
        }
        (None, Some(volume), Some(client)) => {
            let info = client.volume(volume).await.map_err(|e| match e {
                dfs_common::FsError::NotFound => anyhow::anyhow!("no volume named {volume:?}"),
                other => other.into(),
            })?;
            let dir = client.mkdir(info.root, &stamp, 0o755, 0, 0).await?;
            Target::Volume(client.clone(), Arc::new(info), dir.ino)
        }
        _ => anyhow::bail!("give a volume, or --path DIR"),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let result = run_phases(&target, &args, &bar).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    // Clean up whatever the phases left, even after a failure.
    match &target {
        Target::Volume(client, info, dir) => {
            for e in client.readdir_all(*dir, false).await.unwrap_or_default() {
                let _ = client.unlink(*dir, &e.name).await;
            }
            let _ = client.rmdir(info.root, &stamp).await;
        }
        Target::Path(dir) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let phases = result?;
    if json {
        return output::json(&phases);
    }
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                p.name.to_string(),
                p.count.to_string(),
                p.rate(),
                p.cost(),
                format!("{:.2} s", p.seconds),
            ]
        })
        .collect();
    output::table(&["PHASE", "FILES", "RATE", "COST", "TIME"], &rows);
    Ok(())
}

async fn run_phases(
    target: &Target,
    args: &BenchArgs,
    bar: &Option<indicatif::ProgressBar>,
) -> anyhow::Result<Vec<Phase>> {
    let big = args.big_size;
    let small = args.small_size;
    let t = target.clone();
    let mut phases = vec![
        phase("write big files", args.threads, 1, bar, move |th, _| {
            let t = t.clone();
            async move {
                t.write(format!("big-{th}"), big, th as u8).await?;
                Ok(big)
            }
        })
        .await?,
    ];
    let t = target.clone();
    phases.push(
        phase("read big files", args.threads, 1, bar, move |th, _| {
            let t = t.clone();
            async move {
                let got = t.read(format!("big-{th}")).await?;
                anyhow::ensure!(got == big, "big-{th}: read {got} of {big} bytes");
                Ok(got)
            }
        })
        .await?,
    );
    let t = target.clone();
    phases.push(
        phase(
            "write small files",
            args.threads,
            args.small_files,
            bar,
            move |th, i| {
                let t = t.clone();
                async move {
                    t.write(format!("small-{th}-{i}"), small, i as u8).await?;
                    Ok(small)
                }
            },
        )
        .await?,
    );
    let t = target.clone();
    phases.push(
        phase(
            "read small files",
            args.threads,
            args.small_files,
            bar,
            move |th, i| {
                let t = t.clone();
                async move {
                    let got = t.read(format!("small-{th}-{i}")).await?;
                    anyhow::ensure!(got == small, "small-{th}-{i}: read {got} of {small} bytes");
                    Ok(got)
                }
            },
        )
        .await?,
    );
    let t = target.clone();
    phases.push(
        phase(
            "stat files",
            args.threads,
            args.small_files,
            bar,
            move |th, i| {
                let t = t.clone();
                async move {
                    t.stat(format!("small-{th}-{i}")).await?;
                    Ok(0)
                }
            },
        )
        .await?,
    );
    let t = target.clone();
    phases.push(
        phase(
            "delete files",
            args.threads,
            args.small_files,
            bar,
            move |th, i| {
                let t = t.clone();
                async move {
                    t.remove(format!("small-{th}-{i}")).await?;
                    Ok(0)
                }
            },
        )
        .await?,
    );
    Ok(phases)
}
