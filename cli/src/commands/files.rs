//! File tools that work without a mount, like `hdfs dfs`: put, get, ls, stat, rm, mkdir.
//! Remote paths are written `VOLUME:/path`.

use crate::output;
use anyhow::{bail, Context};
use clap::Args;
use dfs_client::Client;
use dfs_common::proto::meta::{Attr, FileKind, VolumeInfo, RENAME_NOREPLACE};
use dfs_common::FsError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Bytes one read request of `get` asks for; several are in flight.
const GET_CHUNK: u64 = 16 * 1024 * 1024;
const GET_IN_FLIGHT: usize = 3;

#[derive(Args, Debug)]
pub struct PutArgs {
    pub local: PathBuf,
    pub remote: String,
    /// Replace the remote file if it exists: the new file, with the old one's mode and owner,
    /// takes its name once all its bytes are committed.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub remote: String,
    pub local: PathBuf,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    pub remote: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub remote: String,
}

#[derive(Args, Debug)]
pub struct MkdirArgs {
    pub remote: String,
    /// Create missing parents; no error if the directory exists.
    #[arg(short, long)]
    pub parents: bool,
}

/// Splits `VOLUME:/path` and looks the volume up.
async fn remote(client: &Client, spec: &str) -> anyhow::Result<(VolumeInfo, String)> {
    let (volume, path) = spec
        .split_once(':')
        .with_context(|| format!("{spec:?} is not a remote path: write VOLUME:/path"))?;
    let info = client.volume(volume).await.map_err(|e| match e {
        FsError::NotFound => anyhow::anyhow!("no volume named {volume:?}"),
        other => other.into(),
    })?;
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    Ok((info, path))
}

fn not_found(spec: &str) -> impl Fn(FsError) -> anyhow::Error + '_ {
    move |e| match e {
        FsError::NotFound => anyhow::anyhow!("{spec}: no such file or directory"),
        other => anyhow::anyhow!("{spec}: {other}"),
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
    }
    bar
}

#[derive(Serialize)]
struct Transfer {
    bytes: u64,
    seconds: f64,
    mib_per_sec: f64,
}

fn report(json: bool, verb: &str, bytes: u64, started: Instant) -> anyhow::Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    let rate = bytes as f64 / (1024.0 * 1024.0) / seconds.max(1e-9);
    if json {
        output::json(&Transfer {
            bytes,
            seconds,
            mib_per_sec: rate,
        })
    } else {
        eprintln!(
            "{verb} {} in {seconds:.2} s ({rate:.1} MiB/s)",
            output::size(bytes)
        );
        Ok(())
    }
}

pub async fn put(client: &Client, args: PutArgs, json: bool) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    let local = std::fs::File::open(&args.local)
        .with_context(|| format!("cannot open {}", args.local.display()))?;
    let len = local.metadata()?.len();
    let local = Arc::new(local);
    let (parent, name) = client
        .resolve_parent(&volume, &path)
        .await
        .map_err(not_found(&args.remote))?;
    let name = &*name;
    let taken = || anyhow::anyhow!("{} exists (use --force to replace it)", args.remote);
    let a_directory = || anyhow::anyhow!("{} is a directory", args.remote);
    // Refused before any byte is sent when the name is taken (the rename at the end checks
    // again: the name may be taken meanwhile). A file replaced keeps its mode and owner.
    let (mode, uid, gid) = match client.lookup(parent.ino, name).await {
        Ok(_) if !args.force => return Err(taken()),
        Ok(old) if old.kind == FileKind::Dir => return Err(a_directory()),
        Ok(old) if old.kind == FileKind::File => (old.mode & 0o7777, old.uid, old.gid),
        // A symlink or special file is replaced by a plain new file.
        Ok(_) | Err(FsError::NotFound) => (0o644, 0, 0),
        Err(e) => return Err(not_found(&args.remote)(e)),
    };
    // The bytes go to a new file under a hidden name, which takes the real name only once they
    // are all committed: a put that fails leaves no partial file behind, and `--force` leaves
    // the old file whole until the new one replaces it.
    let temp = upload_name(name);
    let mut file = client
        .create(parent.ino, &temp, mode, uid, gid)
        .await
        .map_err(not_found(&args.remote))?;
    let started = Instant::now();
    let bar = progress(len, "put");
    let uploaded = async {
        let mut offset = 0u64;
        loop {
            // Each block is read into its own buffer, which then travels to the encoder
            // uncopied.
            let buf = read_block(&local, file.write_buffer(), file.block_size())
                .await
                .context("the local read stopped")??;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            file.write_owned(offset, buf).await?;
            offset += n as u64;
            bar.set_position(offset);
        }
        file.close().await.context("committing the file")?;
        let flags = if args.force { 0 } else { RENAME_NOREPLACE };
        client
            .rename(parent.ino, &temp, parent.ino, name, flags)
            .await
            .map_err(|e| match e {
                FsError::Exists => taken(),
                FsError::IsDir => a_directory(),
                other => anyhow::Error::from(other),
            })?;
        anyhow::Ok(offset)
    }
    .await;
    bar.finish_and_clear();
    match uploaded {
        Ok(bytes) => report(json, "put", bytes, started),
        Err(e) => {
            if let Err(left) = client.unlink(parent.ino, &temp).await {
                eprintln!("dfs: could not remove the partial upload {temp}: {left}");
            }
            Err(e)
        }
    }
}

/// The hidden name a put uploads under before the file takes its real name: the name (cut to
/// keep within the 255-byte limit), and a part unique to this put.
fn upload_name(name: &str) -> String {
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        ".{}.dfs-put-{}-{nonce:08x}",
        &name[..cut],
        std::process::id()
    )
}

/// Reads the next `len` bytes of `file` (fewer only at its end) on a blocking thread, straight
/// into `buf`'s spare capacity: no intermediate buffer and no copy (tokio's file reads through
/// a 2 MiB buffer of its own and copies from there).
fn read_block(
    file: &Arc<std::fs::File>,
    mut buf: Vec<u8>,
    len: usize,
) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        (&*file).take(len as u64).read_to_end(&mut buf).map(|_| buf)
    })
}

/// Writes `data` to the end of what `file` holds so far, on a blocking thread, from the buffer
/// as it is (tokio's file writes copy it into a buffer of their own first).
fn write_block(
    file: &Arc<std::fs::File>,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        (&*file).write_all(&data)
    })
}

pub async fn get(client: &Client, args: GetArgs, json: bool) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    let attr = client
        .resolve(&volume, &path)
        .await
        .map_err(not_found(&args.remote))?;
    if attr.kind != FileKind::File {
        bail!("{} is not a regular file", args.remote);
    }
    let local = std::fs::File::create(&args.local)
        .with_context(|| format!("cannot create {}", args.local.display()))?;
    let local = Arc::new(local);
    let started = Instant::now();
    let bar = progress(attr.size, "get");
    let mut reads = VecDeque::new();
    let mut next = 0u64;
    let mut written = 0u64;
    loop {
        while reads.len() < GET_IN_FLIGHT && next < attr.size {
            let (client, ino, at) = (client.clone(), attr.ino, next);
            reads.push_back(tokio::spawn(async move {
                client.read_range(ino, at, GET_CHUNK).await
            }));
            next += GET_CHUNK;
        }
        let Some(read) = reads.pop_front() else { break };
        let data = read.await??;
        if data.is_empty() {
            break;
        }
        let n = data.len() as u64;
        write_block(&local, data)
            .await
            .context("the local write stopped")??;
        written += n;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    report(json, "got", written, started)
}

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    #[serde(flatten)]
    attr: &'a Attr,
}

fn kind_char(kind: FileKind) -> char {
    match kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    }
}

fn mode_string(attr: &Attr) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind_char(attr.kind));
    for shift in [6, 3, 0] {
        let bits = (attr.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub async fn ls(client: &Client, args: PathArgs, json: bool) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    let attr = client
        .resolve(&volume, &path)
        .await
        .map_err(not_found(&args.remote))?;
    let entries: Vec<(String, Attr)> = if attr.kind == FileKind::Dir {
        client
            .readdir_all(attr.ino, true)
            .await?
            .into_iter()
            // Shown as text: bytes that are not UTF-8 as U+FFFD, as `ls` shows them.
            .filter_map(|e| {
                let name = String::from_utf8_lossy(&dfs_common::name::decode(&e.name)).into();
                e.attr.map(|a| (name, a))
            })
            .collect()
    } else {
        vec![(
            path.rsplit('/').next().unwrap_or_default().to_string(),
            attr,
        )]
    };
    if json {
        let list: Vec<Entry> = entries
            .iter()
            .map(|(n, a)| Entry { name: n, attr: a })
            .collect();
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|(name, a)| {
            vec![
                mode_string(a),
                a.nlink.to_string(),
                a.uid.to_string(),
                a.gid.to_string(),
                a.size.to_string(),
                name.clone(),
            ]
        })
        .collect();
    output::table(&["MODE", "LINKS", "UID", "GID", "SIZE", "NAME"], &rows);
    Ok(())
}

pub async fn stat(client: &Client, args: PathArgs, json: bool) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    let attr = client
        .resolve(&volume, &path)
        .await
        .map_err(not_found(&args.remote))?;
    if json {
        return output::json(&attr);
    }
    println!("  path: {}", args.remote);
    println!(
        " inode: {}  kind: {:?}  mode: {} ({:o})",
        attr.ino,
        attr.kind,
        mode_string(&attr),
        attr.mode
    );
    println!(
        "  size: {} ({})  links: {}  uid: {}  gid: {}",
        attr.size,
        output::size(attr.size),
        attr.nlink,
        attr.uid,
        attr.gid
    );
    println!(
        " mtime: {}.{:09}  ctime: {}.{:09}",
        attr.mtime.secs, attr.mtime.nanos, attr.ctime.secs, attr.ctime.nanos
    );
    Ok(())
}

pub async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    let (parent, name) = client
        .resolve_parent(&volume, &path)
        .await
        .map_err(not_found(&args.remote))?;
    let name = &*name;
    let attr = client
        .lookup(parent.ino, name)
        .await
        .map_err(not_found(&args.remote))?;
    let result = if attr.kind == FileKind::Dir {
        client.rmdir(parent.ino, name).await
    } else {
        client.unlink(parent.ino, name).await
    };
    result.map_err(|e| match e {
        FsError::NotEmpty => anyhow::anyhow!("{}: directory not empty", args.remote),
        other => not_found(&args.remote)(other),
    })
}

pub async fn mkdir(client: &Client, args: MkdirArgs) -> anyhow::Result<()> {
    let (volume, path) = remote(client, &args.remote).await?;
    if !args.parents {
        let (parent, name) = client
            .resolve_parent(&volume, &path)
            .await
            .map_err(not_found(&args.remote))?;
        let name = &*name;
        client
            .mkdir(parent.ino, name, 0o755, 0, 0)
            .await
            .map_err(|e| match e {
                FsError::Exists => anyhow::anyhow!("{}: already exists", args.remote),
                other => not_found(&args.remote)(other),
            })?;
        return Ok(());
    }
    let mut dir = client.getattr(volume.root).await?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let part = &*dfs_common::name::encode(part.as_bytes());
        dir = match client.lookup(dir.ino, part).await {
            Ok(a) if a.kind == FileKind::Dir => a,
            Ok(_) => bail!("{}: {part} exists and is not a directory", args.remote),
            Err(FsError::NotFound) => match client.mkdir(dir.ino, part, 0o755, 0, 0).await {
                Ok(a) => a,
                Err(FsError::Exists) => client.lookup(dir.ino, part).await?,
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
    }
    Ok(())
}
