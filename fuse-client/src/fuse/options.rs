//! Mount specs (`HOST:PORT:/VOLUME`) and the `-o` options of `dfs-mount` / `mount.dfs`.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct MountSpec {
    pub meta: String,
    pub volume: String,
}

impl MountSpec {
    /// Parses `HOST:PORT:/VOLUME` (the leading slash of the volume is optional).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("bad mount spec {spec:?}: expected HOST:PORT:/VOLUME");
        let (meta, volume) = spec.rsplit_once(':').ok_or_else(bad)?;
        let volume = volume.trim_start_matches('/');
        if volume.is_empty() || volume.contains('/') || !meta.contains(':') {
            return Err(bad());
        }
        Ok(MountSpec {
            meta: meta.to_string(),
            volume: volume.to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    pub read_only: bool,
    /// Let every local user in, permissions checked (`allow_other`, or `noallow_other` to keep
    /// the mount to its owner); `None` is the default: on when root mounts, as an NFS share is
    /// open to every user of the host.
    pub allow_other: Option<bool>,
    /// Certificate directory (ca.pem, client.pem, client.key).
    pub certs: Option<PathBuf>,
    /// Which certificate of the directory to use (`identity=NAME`: NAME.pem, NAME.key).
    pub identity: Option<String>,
    /// Serve Prometheus metrics on this TCP address (`metrics=HOST:PORT`).
    pub metrics: Option<std::net::SocketAddr>,
    /// How long the kernel may cache attributes and names when the change feed is not known
    /// to be whole (`attr_timeout=SECS`).
    pub attr_timeout: Duration,
    /// How long past the change feed's last answer the kernel may cache them while the mount
    /// follows the feed (`lease=SECS`; at most `attr_timeout` turns long grants off).
    pub lease: Duration,
    /// How long an operation waits for an unreachable metadata server before failing with EIO
    /// (`retry=SECS`, `soft` for 0); `None` waits as long as it takes (`hard`).
    pub meta_retry: Option<Duration>,
    /// Where a background mount writes its log (`log=FILE`, appended); else it is discarded.
    pub log: Option<PathBuf>,
    /// Unflushed writes of open files older than this are written back (`writeback=SECS`),
    /// as an NFS client does, so a file held open for long has its data in the cluster.
    pub writeback: Duration,
    /// `noexec`: programs on the mount cannot be executed.
    pub no_exec: bool,
    /// `nosuid`: setuid and setgid bits are ignored when executing.
    pub no_suid: bool,
    /// `nodev`: device nodes on the mount cannot be opened as devices.
    pub no_dev: bool,
    /// The kernel's read-ahead window for sequential reads, in KiB (`readahead=KIB`, at most
    /// [`MAX_READAHEAD_KIB`]); the kernel's own default is 128 KiB.
    pub readahead_kib: u32,
    /// Flushes of at most this many bytes are kept in the metadata store (`inline=BYTES`, at
    /// most [`MAX_INLINE_END`]; `noinline` for 0).
    pub inline_max: u64,
    /// Bytes of recently read shard units (64 KiB) the mount keeps for small reads
    /// (`read_cache=MIB`, at most [`MAX_READ_CACHE_MIB`]; 0 keeps none).
    pub read_cache_bytes: usize,
    /// Block placements kept ready per volume while uploads follow each other
    /// (`spare_blocks=N`, at most [`MAX_SPARE_BLOCKS`]; 0 asks for each when needed).
    pub spare_blocks: usize,
    /// Threads of the mount's runtime (`workers=N`, 1 to [`MAX_WORKERS`]); `None` takes
    /// [`dfs_common::runtime::default_workers`].
    pub workers: Option<usize>,
}

use crate::client::spare_blocks::DEFAULT_SPARE_BLOCKS;
use dfs_common::proto::MAX_INLINE_END;

/// The most block placements the mount keeps ready per volume.
pub const MAX_SPARE_BLOCKS: usize = 64;

/// The most runtime threads a mount takes.
pub const MAX_WORKERS: usize = 1024;

/// The largest read cache the mount accepts, in MiB.
pub const MAX_READ_CACHE_MIB: usize = 64 * 1024;

/// The largest read-ahead window the mount offers the kernel: one 4 MiB block.
pub const MAX_READAHEAD_KIB: u32 = 4096;

/// Default wait for a metadata server that restarts: long enough for a restart, short enough
/// that a lost cluster shows up as errors rather than a hang.
pub const DEFAULT_META_RETRY: Duration = Duration::from_secs(60);

/// Default lease: the feed answers at least every 10 s, so a grant usually lasts 20-30 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: None,
            certs: None,
            identity: None,
            metrics: None,
            attr_timeout: Duration::from_secs(1),
            lease: DEFAULT_LEASE,
            meta_retry: Some(DEFAULT_META_RETRY),
            log: None,
            writeback: Duration::from_secs(30),
            no_exec: false,
            no_suid: false,
            no_dev: false,
            readahead_kib: MAX_READAHEAD_KIB,
            inline_max: MAX_INLINE_END,
            read_cache_bytes: crate::client::DEFAULT_READ_CACHE_BYTES,
            spare_blocks: DEFAULT_SPARE_BLOCKS,
            workers: None,
        }
    }
}

impl MountOptions {
    /// Parses a comma-separated `-o` list. Options that only matter to mount(8) or fstab
    /// (`_netdev`, `noauto`, `auto`, `defaults`, `nofail`, `user`, ...) are accepted and ignored.
    pub fn parse(list: &str, into: &mut MountOptions) -> Result<(), String> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("ro", None) => into.read_only = true,
                ("rw", None) => into.read_only = false,
                ("allow_other", None) => into.allow_other = Some(true),
                ("noallow_other", None) => into.allow_other = Some(false),
                ("certs", Some(dir)) => into.certs = Some(PathBuf::from(dir)),
                ("identity", Some(name)) => {
                    if name.is_empty() || name.contains('/') {
                        return Err(format!("bad identity {name:?}: a certificate name"));
                    }
                    into.identity = Some(name.to_string());
                }
                ("log", Some(file)) => into.log = Some(PathBuf::from(file)),
                ("metrics", Some(addr)) => {
                    into.metrics =
                        Some(addr.parse().map_err(|_| {
                            format!("bad metrics address {addr:?}: expected HOST:PORT")
                        })?)
                }
                ("writeback", Some(secs)) => into.writeback = seconds(key, secs, 0.1)?,
                ("readahead", Some(kib)) => {
                    let kib: u32 = kib
                        .parse()
                        .map_err(|_| format!("bad readahead value {kib:?}: KiB"))?;
                    if kib > MAX_READAHEAD_KIB {
                        return Err(format!("readahead must be at most {MAX_READAHEAD_KIB} KiB"));
                    }
                    into.readahead_kib = kib;
                }
                ("inline", Some(bytes)) => {
                    let bytes: u64 = bytes
                        .parse()
                        .map_err(|_| format!("bad inline value {bytes:?}: bytes"))?;
                    if bytes > MAX_INLINE_END {
                        return Err(format!("inline must be at most {MAX_INLINE_END} bytes"));
                    }
                    into.inline_max = bytes;
                }
                ("noinline", None) => into.inline_max = 0,
                ("read_cache", Some(mib)) => {
                    let mib: usize = mib
                        .parse()
                        .map_err(|_| format!("bad read_cache value {mib:?}: MiB"))?;
                    if mib > MAX_READ_CACHE_MIB {
                        return Err(format!(
                            "read_cache must be at most {MAX_READ_CACHE_MIB} MiB"
                        ));
                    }
                    into.read_cache_bytes = mib << 20;
                }
                ("spare_blocks", Some(n)) => {
                    into.spare_blocks = n
                        .parse()
                        .ok()
                        .filter(|&n| n <= MAX_SPARE_BLOCKS)
                        .ok_or_else(|| {
                            format!("bad spare_blocks value {n:?}: 0 to {MAX_SPARE_BLOCKS}")
                        })?;
                }
                ("workers", Some(n)) => {
                    let n = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_WORKERS).contains(n))
                        .ok_or_else(|| format!("bad workers value {n:?}: 1 to {MAX_WORKERS}"))?;
                    into.workers = Some(n);
                }
                ("exec", None) => into.no_exec = false,
                ("noexec", None) => into.no_exec = true,
                ("suid", None) => into.no_suid = false,
                ("nosuid", None) => into.no_suid = true,
                ("dev", None) => into.no_dev = false,
                ("nodev", None) => into.no_dev = true,
                ("hard", None) => into.meta_retry = None,
                ("soft", None) => into.meta_retry = Some(Duration::ZERO),
                ("retry", Some(secs)) => {
                    let secs: u64 = secs
                        .parse()
                        .map_err(|_| format!("bad retry value {secs:?}: whole seconds"))?;
                    into.meta_retry = Some(Duration::from_secs(secs));
                }
                ("attr_timeout" | "actimeo", Some(secs)) => {
                    into.attr_timeout = seconds(key, secs, 0.0)?
                }
                ("lease", Some(secs)) => into.lease = seconds(key, secs, 0.0)?,
                (
                    "_netdev"
                    | "noauto"
                    | "auto"
                    | "defaults"
                    | "nofail"
                    | "user"
                    | "nouser"
                    | "users"
                    | "atime"
                    | "noatime"
                    | "relatime"
                    | "x-systemd.automount",
                    None,
                ) => {}
                _ if key.starts_with("x-") || key.starts_with("comment") => {}
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

/// A duration option given in seconds (fractions allowed), from `min` to an hour.
fn seconds(key: &str, value: &str, min: f64) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("bad {key} value {value:?}: seconds"))?;
    if !(min..=3600.0).contains(&secs) {
        return Err(format!("{key} must be between {min} and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_options() {
        let s = MountSpec::parse("127.0.0.1:7000:/default").unwrap();
        assert_eq!(
            (s.meta.as_str(), s.volume.as_str()),
            ("127.0.0.1:7000", "default")
        );
        assert_eq!(
            MountSpec::parse("meta.example:7000:vol").unwrap().volume,
            "vol"
        );
        assert!(MountSpec::parse("127.0.0.1:/x").is_err());
        assert!(MountSpec::parse("127.0.0.1:7000:/").is_err());
        let mut o = MountOptions::default();
        MountOptions::parse(
            "ro,_netdev,noauto,allow_other,certs=/etc/dfs,attr_timeout=2.5",
            &mut o,
        )
        .unwrap();
        assert!(o.read_only && o.allow_other == Some(true));
        assert_eq!(o.certs, Some(PathBuf::from("/etc/dfs")));
        assert_eq!(o.attr_timeout, Duration::from_millis(2500));
        assert_eq!(o.meta_retry, Some(DEFAULT_META_RETRY));
        MountOptions::parse("hard", &mut o).unwrap();
        assert_eq!(o.meta_retry, None);
        MountOptions::parse("retry=5", &mut o).unwrap();
        assert_eq!(o.meta_retry, Some(Duration::from_secs(5)));
        MountOptions::parse("soft", &mut o).unwrap();
        assert_eq!(o.meta_retry, Some(Duration::ZERO));
        assert!(MountOptions::parse("retry=-1", &mut o).is_err());
        MountOptions::parse("readahead=512", &mut o).unwrap();
        assert_eq!(o.readahead_kib, 512);
        assert!(MountOptions::parse("readahead=8192", &mut o).is_err());
        MountOptions::parse("writeback=2", &mut o).unwrap();
        assert_eq!(o.writeback, Duration::from_secs(2));
        assert!(MountOptions::parse("writeback=0", &mut o).is_err());
        assert_eq!(o.inline_max, MAX_INLINE_END);
        MountOptions::parse("inline=4096", &mut o).unwrap();
        assert_eq!(o.inline_max, 4096);
        MountOptions::parse("noinline", &mut o).unwrap();
        assert_eq!(o.inline_max, 0);
        assert!(MountOptions::parse("inline=65537", &mut o).is_err());
        assert_eq!(o.read_cache_bytes, 256 << 20);
        MountOptions::parse("read_cache=0", &mut o).unwrap();
        assert_eq!(o.read_cache_bytes, 0);
        MountOptions::parse("read_cache=64", &mut o).unwrap();
        assert_eq!(o.read_cache_bytes, 64 << 20);
        assert!(MountOptions::parse("read_cache=lots", &mut o).is_err());
        assert!(MountOptions::parse("read_cache=65537", &mut o).is_err());
        assert_eq!(o.spare_blocks, DEFAULT_SPARE_BLOCKS);
        MountOptions::parse("spare_blocks=0", &mut o).unwrap();
        assert_eq!(o.spare_blocks, 0);
        MountOptions::parse("spare_blocks=16", &mut o).unwrap();
        assert_eq!(o.spare_blocks, 16);
        assert!(MountOptions::parse("spare_blocks=65", &mut o).is_err());
        assert!(MountOptions::parse("spare_blocks=-1", &mut o).is_err());
        assert_eq!(o.workers, None);
        MountOptions::parse("workers=3", &mut o).unwrap();
        assert_eq!(o.workers, Some(3));
        assert!(MountOptions::parse("workers=0", &mut o).is_err());
        assert!(MountOptions::parse("workers=many", &mut o).is_err());
        assert_eq!(o.lease, DEFAULT_LEASE);
        MountOptions::parse("lease=0", &mut o).unwrap();
        assert_eq!(o.lease, Duration::ZERO);
        assert!(MountOptions::parse("lease=-3", &mut o).is_err());
        assert!(MountOptions::parse("bogus", &mut o).is_err());
        MountOptions::parse("noexec,nosuid,nodev", &mut o).unwrap();
        assert!(o.no_exec && o.no_suid && o.no_dev);
        MountOptions::parse("exec,suid,dev", &mut o).unwrap();
        assert!(!o.no_exec && !o.no_suid && !o.no_dev);
        assert!(MountOptions::parse("attr_timeout=x", &mut o).is_err());
    }
}
