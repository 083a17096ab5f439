//! `fuser::Filesystem` for a dfs volume. Each callback hands its work to the tokio runtime and
//! replies from the spawned task, so fuser's request loop never waits on the network.

use super::attr::{errno, kind_from_mode, InodeMap};
use super::dir_names::{DirNames, Named};
use super::options::MountOptions;
use super::signals::signal_pending;
use crate::client::file::FileHandle as DfsHandle;
use crate::client::open_files::{OpenFile, OpenFiles};
use crate::client::reader::CacheUse;
use crate::Client;
use dfs_common::metrics::OpLabel;
use dfs_common::proto::meta::{
    Attr, DirEntry, FileKind, LockKind, LockRange, SetAttr, TimeSet, RENAME_EXCHANGE,
    RENAME_NOREPLACE,
};
use dfs_common::{FsError, FsResult, InodeId, Timestamp};
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

mod copy;

/// How often a blocked lock request (F_SETLKW, flock without LOCK_NB) tries again: starting
/// fast for short critical sections, backing off to spare the metadata server.
const LOCK_RETRY_MIN: Duration = Duration::from_millis(10);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(500);
/// Longest wait at start for the metadata server to note this mount (see
/// [`super::coherence::register`]).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a waiting lock request looks for a signal to its process.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Entries fetched per directory page.
const DIR_PAGE: u32 = 512;

struct DirListing {
    dir: InodeId,
    entries: Vec<DirEntry>,
    complete: bool,
    /// Taken when the first page was fetched (see [`DirNames::mark`]).
    mark: Option<u64>,
}

struct Shared {
    client: Client,
    rt: tokio::runtime::Handle,
    map: InodeMap,
    /// The fallback timeout of the kernel's names and attributes (`attr_timeout`).
    ttl: Duration,
    /// Their timeouts while the change feed is followed.
    leases: super::leases::Leases,
    read_only: bool,
    files: Arc<OpenFiles>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirListing>>>>,
    next_dir_fh: AtomicU64,
    /// Reaches the kernel's caches; set once the session runs.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    metrics: super::metrics::FuseMetrics,
    absent_xattrs: super::xattrs::AbsentXattrs,
    /// Directories whose whole contents this mount knows.
    dir_names: DirNames,
    /// The volume's usage as last asked, and when: answered again for the attribute timeout
    /// (`df`, and programs that check free space before they write, ask over and over).
    usage: Mutex<Option<(Instant, dfs_common::proto::meta::StatFs)>>,
}

pub struct DfsFs {
    shared: Arc<Shared>,
}

/// A name from the kernel as the metadata server carries it: any bytes, encoded (see
/// [`dfs_common::name`]).
fn name_str(name: &OsStr) -> Result<String, Errno> {
    Ok(dfs_common::name::encode(name.as_bytes()).into_owned())
}

/// A name from the metadata server as the kernel takes it.
fn kernel_name(name: &str) -> std::borrow::Cow<'_, OsStr> {
    match dfs_common::name::decode(name) {
        std::borrow::Cow::Borrowed(bytes) => std::borrow::Cow::Borrowed(OsStr::from_bytes(bytes)),
        std::borrow::Cow::Owned(bytes) => std::borrow::Cow::Owned(OsString::from_vec(bytes)),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from_system_time(t)),
    }
}

impl DfsFs {
    /// The file system of a mount, registered with the metadata server before it returns
    /// (waiting up to [`REGISTER_TIMEOUT`]; call it outside the runtime).
    pub fn new(
        client: Client,
        root: InodeId,
        options: &MountOptions,
        rt: tokio::runtime::Handle,
        notifier: Arc<OnceLock<fuser::Notifier>>,
        metrics: super::metrics::FuseMetrics,
    ) -> Self {
        let files = Arc::new(OpenFiles::new(client.clone()));
        rt.spawn(OpenFiles::write_back(
            Arc::downgrade(&files),
            options.writeback,
        ));
        let fs = DfsFs {
            shared: Arc::new(Shared {
                client,
                rt,
                map: InodeMap { root },
                ttl: options.attr_timeout,
                leases: super::leases::Leases::new(options.attr_timeout, options.lease),
                read_only: options.read_only,
                files,
                dirs: Mutex::new(HashMap::new()),
                next_dir_fh: AtomicU64::new(1),
                notifier,
                metrics,
                absent_xattrs: super::xattrs::AbsentXattrs::new(options.attr_timeout),
                dir_names: DirNames::new(options.lease),
                usage: Mutex::new(None),
            }),
        };
        let shared = &fs.shared;
        // Known to the metadata server before the kernel sends a request (a failure here is
        // retried by the feed's follower, the way a lost feed is).
        let registered = shared.rt.block_on(async {
            let register = super::coherence::register(&**shared, &shared.client, root);
            match tokio::time::timeout(REGISTER_TIMEOUT, register).await {
                Ok(registered) => registered.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        });
        let start = registered
            .inspect_err(|e| tracing::warn!("could not register with the metadata server yet: {e}"))
            .ok();
        let watcher =
            super::coherence::follow(Arc::downgrade(shared), shared.client.clone(), root, start);
        shared.rt.spawn(watcher);
        fs
    }

    /// Runs a callback's work on the runtime, timing it as operation `op`.
    fn spawn<F: Future<Output = ()> + Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(Arc<Shared>) -> F,
    ) {
        let fut = work(self.shared.clone());
        let shared = self.shared.clone();
        let in_flight = shared
            .metrics
            .in_flight
            .get_or_create(&OpLabel { op })
            .clone();
        in_flight.inc();
        self.shared.rt.spawn(async move {
            let started = std::time::Instant::now();
            fut.await;
            in_flight.dec();
            shared.metrics.ops.record_done(op, started.elapsed());
        });
    }

    /// Counts a request answered on fuser's thread as it arrived: it had nothing to wait for,
    /// so it was not handed to the runtime (a wake-up of another thread, on a small VM about
    /// as long as the answer itself; see docs/BENCHMARKS.md). Called before the reply is sent,
    /// so whoever has seen the answer also sees it counted.
    fn answered_on_arrival(&self, op: &'static str, started: Instant) {
        let metrics = &self.shared.metrics;
        metrics.ops.record_done(op, started.elapsed());
        metrics.on_arrival.get_or_create(&OpLabel { op }).inc();
    }

    /// Answers a listing call (`op`) of directory `ino` from offset `offset`: at once from a
    /// listing held whole, else on the runtime, fetching what it lacks.
    fn list(
        &self,
        op: &'static str,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: impl ListingReply,
    ) {
        let started = Instant::now();
        let s = &self.shared;
        let answered =
            s.list_dir_at_once(fh, offset, |item, next| reply.add_item(s, ino, item, next));
        if let Some(result) = answered {
            self.answered_on_arrival(op, started);
            return reply.finish(result);
        }
        self.spawn(op, |s| async move {
            let result = s
                .list_dir(fh, offset, |item, next| reply.add_item(&s, ino, item, next))
                .await;
            reply.finish(result)
        });
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.shared.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

impl Shared {
    fn ino(&self, ino: INodeNo) -> InodeId {
        self.map.to_dfs(ino)
    }

    /// Attributes from the metadata server as this mount shows them: with the size raised
    /// to cover unflushed writes of open files, and attribute changes waiting for a flush.
    fn fresh_attr(&self, attr: dfs_common::proto::meta::Attr) -> fuser::FileAttr {
        self.shown_attr(self.files.noted(attr))
    }

    /// Attributes as this mount shows them, with the size raised to cover unflushed writes.
    fn shown_attr(&self, mut attr: dfs_common::proto::meta::Attr) -> fuser::FileAttr {
        self.absent_xattrs
            .note_attributes(attr.ino, attr.has_xattrs);
        if let Some(size) = self.files.size_with_writes(attr.ino) {
            attr.size = attr.size.max(size);
        }
        self.map.file_attr(&attr)
    }

    /// Answers an entry for `name` in `parent`.
    fn reply_entry(
        &self,
        reply: ReplyEntry,
        parent: InodeId,
        name: &str,
        result: FsResult<dfs_common::proto::meta::Attr>,
    ) {
        match result {
            Ok(a) => {
                let ttl = self.leases.name(parent, name, Some(a.ino));
                reply.entry(&ttl, &self.fresh_attr(a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The volume's usage if it was asked within the attribute timeout.
    fn recent_usage(&self) -> Option<dfs_common::proto::meta::StatFs> {
        let recent = self.usage.lock().expect("usage lock").clone();
        recent
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, usage)| usage)
    }

    /// The volume's usage: asked of the metadata server at most once per attribute timeout.
    async fn usage(&self, ino: InodeId) -> FsResult<dfs_common::proto::meta::StatFs> {
        if let Some(usage) = self.recent_usage() {
            return Ok(usage);
        }
        let asked = Instant::now();
        let usage = self.client.statfs(ino).await?;
        *self.usage.lock().expect("usage lock") = Some((asked, usage.clone()));
        Ok(usage)
    }

    /// Notes in [`DirNames`] the outcome of this mount's attempt to add `name` to `parent`:
    /// a failure says the directory may not hold what was known.
    fn note_added(&self, parent: InodeId, name: &str, result: FsResult<Attr>) -> FsResult<Attr> {
        match &result {
            Ok(a) => self.dir_names.added(parent, name, named(a)),
            Err(_) => self.dir_names.forget(parent),
        }
        result
    }

    /// Notes in [`DirNames`] the outcome of this mount's attempt to remove `name` from
    /// `parent`.
    fn note_removed(&self, parent: InodeId, name: &str, result: FsResult<()>) -> FsResult<()> {
        match &result {
            Ok(()) => self.dir_names.removed(parent, name),
            Err(_) => self.dir_names.forget(parent),
        }
        result
    }

    /// Answers a lookup of a name that does not exist with an entry of inode 0: the kernel
    /// keeps that absence for the attribute timeout, so asking again (a search path, a
    /// build's probes for files) costs no round trip. Another client that creates the name
    /// drops it through the change feed.
    fn reply_absent(&self, reply: ReplyEntry, parent: InodeId, name: &str) {
        let absent = fuser::FileAttr {
            ino: INodeNo(0),
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: fuser::FileType::RegularFile,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let ttl = self.leases.name(parent, name, None);
        reply.entry(&ttl, &absent, Generation(0));
    }

    fn reply_attr(&self, reply: ReplyAttr, result: FsResult<dfs_common::proto::meta::Attr>) {
        match result {
            Ok(a) => reply.attr(&self.leases.attr(a.ino), &self.fresh_attr(a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files.get(fh.0).ok_or(Errno::EBADF)
    }

    /// Hands a call to the kernel's caches to a blocking thread: the kernel may hold it until
    /// a request of this mount in flight is answered.
    fn notify(&self, call: impl FnOnce(&fuser::Notifier) -> std::io::Result<()> + Send + 'static) {
        let notifier = self.notifier.clone();
        self.rt.spawn_blocking(move || {
            if let Some(notifier) = notifier.get() {
                if let Err(e) = call(notifier) {
                    // Mostly an inode or name the kernel does not cache.
                    tracing::trace!("invalidating a kernel cache: {e}");
                }
            }
        });
    }

    /// How the kernel may cache the listing of `dir` it opens: kept from earlier opens while
    /// the leases allow ([`keep_listing`](super::leases::Leases::keep_listing)), else listed
    /// from the mount again and kept for later opens. Without leases it keeps no listing.
    fn listing_flags(&self, dir: InodeId) -> FopenFlags {
        if !self.leases.enabled() {
            return FopenFlags::empty();
        }
        if self.leases.keep_listing(dir) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_CACHE_DIR
        }
    }

    /// Answers an open of `attr`'s file with a new descriptor for `file`.
    fn reply_opened(
        &self,
        reply: ReplyOpen,
        file: DfsHandle,
        flags: i32,
        cache: FopenFlags,
        attr: &Attr,
    ) {
        let (file, open_flags) = open_mode(file, flags);
        let fh = self.files.add(file);
        self.files.note_attr(attr);
        reply.opened(FileHandle(fh), open_flags | cache)
    }

    /// Close-to-open: `attr` was just fetched by an open. If the file changed since this mount
    /// last opened it, the kernel's cached attributes are dropped (so that it sees the new size
    /// at once) and so are its cached pages; otherwise the pages are kept.
    fn revalidate(&self, attr: &Attr) -> FopenFlags {
        if self.files.opened(attr) {
            return FopenFlags::FOPEN_KEEP_CACHE;
        }
        if let Some(notifier) = self.notifier.get() {
            if let Err(e) = notifier.inval_inode(self.map.to_fuse(attr.ino), -1, 0) {
                tracing::debug!(ino = %attr.ino, "invalidating cached attributes: {e}");
            }
        }
        FopenFlags::empty()
    }
}

/// One item of a directory listing as the kernel sees it.
enum DirItem<'a> {
    Dot,
    DotDot,
    Entry(&'a DirEntry),
}

impl Shared {
    /// Walks the open directory `fh` from the kernel's `offset`, fetching pages (with
    /// attributes, for readdirplus) as needed, and hands each item and the offset after it to
    /// `add` until `add` reports the reply full. Offsets: 1 is ".", 2 is "..", entry i is i + 3.
    async fn list_dir(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>, u64) -> bool,
    ) -> Result<(), Errno> {
        let Some(listing) = self.listing(fh) else {
            return Err(Errno::EBADF);
        };
        let mut listing = listing.lock().await;
        let mut walked = walk_listing(&listing, offset, &mut add);
        while let Walked::NeedsMore(index) = walked {
            let after = listing.entries.last().map(|e| e.name.clone());
            if after.is_none() {
                listing.mark = Some(self.dir_names.mark());
            }
            match self
                .client
                .readdir_page(listing.dir, after, DIR_PAGE, true)
                .await
            {
                Ok(page) => {
                    listing.complete = !page.more;
                    listing.entries.extend(page.entries);
                    if let (true, Some(mark)) = (listing.complete, listing.mark) {
                        let entries = listing.entries.iter().map(|e| {
                            let named = Named {
                                ino: e.ino,
                                kind: e.kind,
                            };
                            (e.name.as_str(), named)
                        });
                        self.dir_names.listed(listing.dir, entries, mark);
                    }
                }
                Err(e) => return Err(errno(&e)),
            }
            walked = walk_entries(&listing, index, &mut add);
        }
        Ok(())
    }

    /// [`Shared::list_dir`] without waiting, for a listing already held whole (the calls
    /// after the first of a directory's listing) or one this mount can fill from memory
    /// ([`Shared::list_from_memory`]): `None`, with nothing handed to `add`, when it has a
    /// page to fetch or another call holds it.
    fn list_dir_at_once(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>, u64) -> bool,
    ) -> Option<Result<(), Errno>> {
        let Some(listing) = self.listing(fh) else {
            return Some(Err(Errno::EBADF));
        };
        let mut listing = listing.try_lock().ok()?;
        if !listing.complete && !self.list_from_memory(&mut listing) {
            return None;
        }
        walk_listing(&listing, offset, &mut add);
        Some(Ok(()))
    }

    /// Fills a listing not begun yet from the contents of its directory this mount knows
    /// ([`DirNames`]), if it also holds every entry's attributes as `getattr` would answer
    /// them without a round trip. The kernel drops its kept listing of a directory at every
    /// change it makes there, so without this each listing after a change is a round trip.
    /// Not a directory of more entries than the attributes of files kept at most: its
    /// entries' attributes cannot all be held.
    fn list_from_memory(&self, listing: &mut DirListing) -> bool {
        if !listing.entries.is_empty() || !self.leases.confirmed() {
            return false;
        }
        let most = crate::client::file_attrs::MAX_ENTRIES;
        let Some(contents) = self.dir_names.contents(listing.dir, most) else {
            return false;
        };
        let kept_for = self.leases.kept_for();
        let mut entries = Vec::with_capacity(contents.len());
        for (name, named) in contents {
            match self.attr_at_once(named.ino, kept_for) {
                Some(attr) if attr.kind == named.kind => entries.push(DirEntry {
                    name,
                    ino: named.ino,
                    kind: named.kind,
                    attr: Some(attr),
                }),
                _ => return false,
            }
        }
        listing.entries = entries;
        listing.complete = true;
        self.metrics.listings_from_memory.inc();
        true
    }

    /// The attributes of `ino` that `getattr` would answer without a round trip, kept within
    /// `kept_for`: a directory's from this mount's last change in it or an answer since, a
    /// file's from its create, open, close or an answer. Not a file's whose attribute changes
    /// wait for its flush here (`getattr` shows those applied; a listing then asks the
    /// metadata server).
    fn attr_at_once(&self, ino: InodeId, kept_for: Duration) -> Option<Attr> {
        if let Some(attr) = self.client.dir_attrs().get(ino, kept_for) {
            return Some(attr);
        }
        if self.files.attr_with_waiting(ino, self.ttl).is_some() {
            return None;
        }
        self.client.file_attrs().get(ino, kept_for)
    }

    fn listing(&self, fh: FileHandle) -> Option<Arc<tokio::sync::Mutex<DirListing>>> {
        self.dirs.lock().expect("dir lock").get(&fh.0).cloned()
    }
}

/// A reply to a listing call: readdir's (names and types) or readdirplus's (with
/// attributes).
trait ListingReply: Send + 'static {
    /// Adds `item` of directory `dir`; `true` when the reply is full.
    fn add_item(&mut self, s: &Shared, dir: INodeNo, item: DirItem<'_>, next: u64) -> bool;
    fn finish(self, result: Result<(), Errno>);
}

impl ListingReply for ReplyDirectory {
    fn add_item(&mut self, s: &Shared, dir: INodeNo, item: DirItem<'_>, next: u64) -> bool {
        match item {
            DirItem::Dot => self.add(dir, next, fuser::FileType::Directory, "."),
            DirItem::DotDot => self.add(dir, next, fuser::FileType::Directory, ".."),
            DirItem::Entry(e) => {
                let kind = super::attr::file_type(e.kind);
                self.add(s.map.to_fuse(e.ino), next, kind, kernel_name(&e.name))
            }
        }
    }

    fn finish(self, result: Result<(), Errno>) {
        match result {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
    }
}

impl ListingReply for ReplyDirectoryPlus {
    fn add_item(&mut self, s: &Shared, dir: INodeNo, item: DirItem<'_>, next: u64) -> bool {
        let name = match item {
            DirItem::Dot => ".",
            DirItem::DotDot => "..",
            DirItem::Entry(e) => {
                return match &e.attr {
                    Some(attr) => {
                        let ttl = s.leases.name(s.ino(dir), &e.name, Some(attr.ino));
                        let attr = s.fresh_attr(attr.clone());
                        let name = kernel_name(&e.name);
                        self.add(attr.ino, next, name, &ttl, &attr, Generation(0))
                    }
                    // Listed without attributes: the kernel looks the entry up itself.
                    None => false,
                };
            }
        };
        // The kernel links no inode for "." and "..", so their attributes only carry the
        // inode number and type.
        let dot = super::attr::dir_stub(dir);
        self.add(dir, next, name, &Duration::ZERO, &dot, Generation(0))
    }

    fn finish(self, result: Result<(), Errno>) {
        match result {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
    }
}

/// Where a walk of a listing stopped.
enum Walked {
    /// The reply is full, or the listing ended.
    Done,
    /// The listing held no entry from this index on, and has more to fetch.
    NeedsMore(usize),
}

/// Hands `add` the items of `listing` from the kernel's `offset` (see [`Shared::list_dir`]).
fn walk_listing(
    listing: &DirListing,
    offset: u64,
    add: &mut impl FnMut(DirItem<'_>, u64) -> bool,
) -> Walked {
    if offset == 0 && add(DirItem::Dot, 1) {
        return Walked::Done;
    }
    if offset <= 1 && add(DirItem::DotDot, 2) {
        return Walked::Done;
    }
    walk_entries(listing, offset.saturating_sub(2) as usize, add)
}

fn walk_entries(
    listing: &DirListing,
    mut index: usize,
    add: &mut impl FnMut(DirItem<'_>, u64) -> bool,
) -> Walked {
    while index < listing.entries.len() {
        if add(DirItem::Entry(&listing.entries[index]), index as u64 + 3) {
            return Walked::Done;
        }
        index += 1;
    }
    if listing.complete {
        Walked::Done
    } else {
        Walked::NeedsMore(index)
    }
}

/// Applies the open flags that change how a handle writes. O_APPEND writes go to the end of
/// the file as the cluster knows it, not where this kernel believes the end is, so they bypass
/// the page cache (whose offsets would be wrong).
fn open_mode(mut file: DfsHandle, flags: i32) -> (DfsHandle, FopenFlags) {
    if flags & libc::O_APPEND != 0 {
        file.set_append();
        (file, FopenFlags::FOPEN_DIRECT_IO)
    } else {
        (file, FopenFlags::empty())
    }
}

/// The lock request a `struct flock` type stands for.
fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        libc::F_UNLCK => Some(LockKind::Unlock),
        _ => None,
    }
}

/// What `attr`'s inode is, as a directory's contents note it.
fn named(attr: &Attr) -> Named {
    Named {
        ino: attr.ino,
        kind: attr.kind,
    }
}

fn reply_empty(reply: ReplyEmpty, result: FsResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl super::coherence::Caches for Shared {
    fn drop_entry(&self, parent: InodeId, name: &str) {
        self.leases.listing_changed(parent);
        self.dir_names.forget(parent);
        let parent = self.map.to_fuse(parent);
        let name = kernel_name(name).into_owned();
        self.notify(move |n| n.inval_entry(parent, &name));
    }

    fn drop_inode(&self, ino: InodeId, data: bool, (feed, next): super::coherence::Position) {
        self.leases.listing_changed(ino);
        self.dir_names.forget(ino);
        self.absent_xattrs.forget(ino);
        self.client.dir_attrs().forget(ino);
        self.client.file_attrs().forget(ino);
        self.files.forget_attr(Some(ino));
        if data {
            self.files.forget_version(Some(ino));
            self.files.forget_layouts(Some(ino));
        }
        // The kernel's attributes, and with `data` its pages (offset -1: the attributes only).
        // Not if an open since showed the file after this change: that open dropped the
        // pages if the file had changed, and a drop now could cut into reads begun since
        // (see the client's `OpenedAt`). Checked as the drop is made, which may be later.
        let fuse_ino = self.map.to_fuse(ino);
        let offset = if data { 0 } else { -1 };
        let (client, skipped) = (
            self.client.clone(),
            self.metrics.kernel_drops_skipped.clone(),
        );
        self.notify(move |n| {
            if client.opened_after(ino, feed, next) {
                skipped.inc();
                return Ok(());
            }
            n.inval_inode(fuse_ino, offset, 0)
        });
    }

    fn drop_all(&self) {
        let granted = self.leases.take();
        let open = self.files.open_inodes();
        let (map, notifier) = (self.map, self.notifier.clone());
        self.rt.spawn_blocking(move || {
            let Some(notifier) = notifier.get() else {
                return;
            };
            // Mostly names and inodes the kernel no longer holds: errors are expected.
            for (parent, names) in granted.names {
                for name in names {
                    let _ = notifier.inval_entry(map.to_fuse(parent), &kernel_name(&name));
                }
            }
            // Pages too: the kernel does not drop a file's pages when it finds a new mtime
            // (no FUSE_AUTO_INVAL_DATA), so a file open here would keep serving old bytes.
            // Other files get fresh pages at their next open (no version is known).
            for ino in granted.inodes.into_iter().chain(open) {
                let _ = notifier.inval_inode(map.to_fuse(ino), 0, 0);
            }
        });
        self.files.forget_version(None);
        self.dir_names.clear();
        self.client.dir_attrs().clear();
        self.client.file_attrs().clear();
        self.files.forget_attr(None);
        self.absent_xattrs.clear();
        self.files.forget_layouts(None);
    }

    fn feed_whole(&self, sent: std::time::Instant) {
        self.leases.confirm(sent);
    }

    fn feed_lost(&self) {
        self.leases.lapse();
    }

    fn open_report(&self, all: bool) -> dfs_common::proto::meta::req::OpenReport {
        self.files.report(all)
    }
}

impl Filesystem for DfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(super::options::MAX_READAHEAD_KIB << 10);
        // Listings carry attributes, so `ls -l` costs one round trip per page, not per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // fcntl and flock locks come here, to be held at the metadata server for all clients.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        // Not FUSE_AUTO_INVAL_DATA: with it the kernel drops a file's pages whenever fresh
        // attributes bring an mtime it did not know, which this mount's own writes do (the
        // kernel sends writes through, and the commit sets the mtime), so a file just written
        // here was read back from the cluster. Pages go instead when another client changed
        // the file: at the next open (close-to-open, `revalidate`), when the change feed
        // tells, and when the feed missed changes. A size another mount shrank needs no
        // refresh before reads: the short read at the new end of file sets it.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let started = Instant::now();
        let dir = self.shared.ino(parent);
        // A name not in a directory whose contents are known: no round trip.
        let s = &self.shared;
        if s.leases.confirmed() {
            if s.dir_names.absent(dir, &name) {
                self.answered_on_arrival("lookup", started);
                return s.reply_absent(reply, dir, &name);
            }
            // A directory this mount made there, with the attributes of its making or its
            // last change here: the kernel looks it up again before every mkdir of it (which
            // fails with EEXIST), as fs_mark does.
            let made = s.dir_names.made_here(dir, &name);
            if let Some(attr) = made.and_then(|ino| s.client.dir_attrs().get(ino, s.ttl)) {
                self.answered_on_arrival("lookup", started);
                return s.reply_entry(reply, dir, &name, Ok(attr));
            }
        }
        self.spawn("lookup", |s| async move {
            let buffered = s.files.buffered_sizes();
            let parent = s.ino(parent);
            match s.client.lookup(parent, &name).await {
                Err(FsError::NotFound) => s.reply_absent(reply, parent, &name),
                result => {
                    let result = result.map(|a| s.files.cover(&buffered, a));
                    s.reply_entry(reply, parent, &name, result)
                }
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let started = Instant::now();
        let s = &self.shared;
        let kept_for = s.leases.kept_for();
        // A directory whose attributes this mount keeps: from its last change here, or the
        // answer to a question since which nothing changed it.
        if let Some(attr) = s.client.dir_attrs().get(s.ino(ino), kept_for) {
            self.answered_on_arrival("getattr", started);
            return s.reply_attr(reply, Ok(attr));
        }
        // A file whose attribute changes wait for its flush: this mount is their keeper.
        if let Some(attr) = s.files.attr_with_waiting(s.ino(ino), s.ttl) {
            self.answered_on_arrival("getattr", started);
            return reply.attr(&s.leases.attr(attr.ino), &s.shown_attr(attr));
        }
        // A file whose attributes came with this mount's open, close or last question, and
        // that nothing changed since (the kernel asks again after every write through it).
        if let Some(attr) = s.client.file_attrs().get(s.ino(ino), kept_for) {
            self.answered_on_arrival("getattr", started);
            return s.reply_attr(reply, Ok(attr));
        }
        self.spawn("getattr", |s| async move {
            let ino = s.ino(ino);
            let buffered = s.files.buffered_sizes();
            let result = s.client.getattr(ino).await;
            // Between the server's answer and the reply (a flush may commit meanwhile).
            let result = s
                .client
                .faults()
                .hit("mount.getattr_answered")
                .await
                .and(result);
            s.reply_attr(reply, result.map(|a| s.files.cover(&buffered, a)));
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let started = Instant::now();
        let mut set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        // A change that may wait for the flush of the file's writes (see `pending_attrs`),
        // of a file without extended attributes (no ACL to keep in step with its mode).
        let s = &self.shared;
        let id = s.ino(ino);
        if s.absent_xattrs.is_bare(id) {
            if let Some(attr) = s.files.defer_setattr(id, &set, s.ttl) {
                self.answered_on_arrival("setattr", started);
                return reply.attr(&s.leases.attr(attr.ino), &s.shown_attr(attr));
            }
        }
        self.spawn("setattr", |s| async move {
            let ino = s.ino(ino);
            // Changes waiting for a flush land before this one.
            if let Err(e) = s.files.settle(ino).await {
                return reply.error(errno(&e));
            }
            // A truncate through an open file goes through its handle, after its own writes.
            let through = fh.and_then(|fh| s.files.get(fh.0));
            if let (Some(new_size), Some(file)) = (size, through) {
                if let Err(e) = s.files.truncate(&file, new_size).await {
                    return reply.error(errno(&e));
                }
                set.size = None;
            } else if size.is_some() {
                // Writes buffered by descriptors land before the truncate, as on a local disk.
                if let Err(e) = s.files.flush_others(ino, None).await {
                    return reply.error(errno(&e));
                }
            } else if atime.is_some() || mtime.is_some() {
                // A new mtime alone, after writes (as `tar` sets it): it lands with them.
                if let SetAttr {
                    mtime: Some(TimeSet::At(at)),
                    atime: None,
                    mode: None,
                    uid: None,
                    gid: None,
                    size: None,
                } = set
                {
                    match s.files.flush_stamped(ino, at).await {
                        Ok(Some(mut attr)) => {
                            // A commit of data changes no extended attribute.
                            if s.absent_xattrs.is_bare(ino) {
                                attr.has_xattrs = false;
                            }
                            return s.reply_attr(reply, Ok(attr));
                        }
                        Ok(_) => {}
                        Err(e) => return reply.error(errno(&e)),
                    }
                }
                if let Err(e) = s.files.flush_before_times(ino).await {
                    return reply.error(errno(&e));
                }
            }
            let by_path = set.size;
            let result = s.client.setattr(ino, set).await;
            match (&result, by_path) {
                // A truncate by path (or `open(O_TRUNC)`, which names no descriptor): the
                // descriptors open here take the new size.
                (Ok(attr), Some(_)) => s.files.resized(ino, attr.size, attr.ctime).await,
                (Err(_), Some(_)) => s.files.forget_layouts(Some(ino)),
                _ => {}
            }
            s.reply_attr(reply, result);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn("readlink", |s| async move {
            match s.client.readlink(s.ino(ino)).await {
                Ok(target) => reply.data(&dfs_common::name::decode(&target)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let Some(kind) = kind_from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return reply.error(Errno::EINVAL);
        }
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mknod", |s| async move {
            let perm = mode & !umask & 0o7777;
            let parent = s.ino(parent);
            let result = s
                .client
                .make_node(parent, &name, kind, perm, uid, gid, rdev)
                .await;
            let result = s.note_added(parent, &name, result);
            s.reply_entry(reply, parent, &name, result);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mkdir", |s| async move {
            let parent = s.ino(parent);
            let result = s
                .client
                .mkdir(parent, &name, mode & !umask & 0o7777, uid, gid)
                .await;
            if let Ok(made) = &result {
                s.dir_names.made(made.ino);
            }
            let result = s.note_added(parent, &name, result);
            if let Ok(made) = &result {
                s.dir_names.made_in(parent, &name, made.ino);
            }
            s.reply_entry(reply, parent, &name, result);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn("unlink", |s| async move {
            let parent = s.ino(parent);
            let result = s.files.unlink(parent, &name).await;
            reply_empty(reply, s.note_removed(parent, &name, result))
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn("rmdir", |s| async move {
            let parent = s.ino(parent);
            let result = s.client.rmdir(parent, &name).await;
            reply_empty(reply, s.note_removed(parent, &name, result))
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = match self.writable().and_then(|_| name_str(link_name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let target = dfs_common::name::encode(target.as_os_str().as_bytes()).into_owned();
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("symlink", |s| async move {
            let parent = s.ino(parent);
            let result = s.client.symlink(parent, &name, &target, uid, gid).await;
            let result = s.note_added(parent, &name, result);
            s.reply_entry(reply, parent, &name, result);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let names = self
            .writable()
            .and_then(|_| Ok((name_str(name)?, name_str(newname)?)));
        let (name, newname) = match names {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut dfs_flags = 0;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            dfs_flags |= RENAME_NOREPLACE;
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            dfs_flags |= RENAME_EXCHANGE;
        }
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        self.spawn("rename", |s| async move {
            let (parent, newparent) = (s.ino(parent), s.ino(newparent));
            let result = s
                .client
                .rename(parent, &name, newparent, &newname, dfs_flags)
                .await;
            match &result {
                Ok(()) if dfs_flags & RENAME_EXCHANGE != 0 => {
                    s.dir_names.exchanged(parent, &name, newparent, &newname)
                }
                Ok(()) => s.dir_names.renamed(parent, &name, newparent, &newname),
                Err(_) => {
                    s.dir_names.forget(parent);
                    s.dir_names.forget(newparent);
                }
            }
            reply_empty(reply, result)
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = match self.writable().and_then(|_| name_str(newname)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn("link", |s| async move {
            let newparent = s.ino(newparent);
            let result = s.client.link(s.ino(ino), newparent, &name).await;
            let result = s.note_added(newparent, &name, result);
            s.reply_entry(reply, newparent, &name, result);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if writes && self.shared.read_only {
            return reply.error(Errno::EROFS);
        }
        // A reopen under an open delegation, of the version whose pages the kernel holds:
        // nothing to ask, nothing to drop.
        let started = Instant::now();
        let s = &self.shared;
        let kept = s
            .client
            .delegated_attr(s.ino(ino), s.leases.delegations_hold())
            .filter(|attr| s.files.is_current(attr));
        if let Some(attr) = kept {
            if let Some(Ok(file)) = s.client.handle_now(attr.clone()) {
                self.answered_on_arrival("open", started);
                let cache = FopenFlags::FOPEN_KEEP_CACHE;
                return s.reply_opened(reply, file, flags.0, cache, &attr);
            }
        }
        self.spawn("open", |s| async move {
            // Opening revalidates with the metadata server (close-to-open consistency), or
            // takes the attributes kept with an open delegation, which no other client's
            // change has been answered since.
            let id = s.ino(ino);
            let attr = match s.client.open_attr(id, s.leases.delegations_hold()).await {
                // Unlinked elsewhere while open here (a reopen through /proc/self/fd): the
                // metadata server keeps it as an orphan for this mount's open, but opens it
                // again only for mounts that have reported it open, which this one may not
                // have done yet. The open it holds keeps the file; its attributes will do.
                Err(FsError::NotFound) if s.files.holds(id) => s.client.getattr(id).await,
                attr => attr,
            };
            let opened = match attr {
                Ok(attr) => s
                    .client
                    .handle_for(attr.clone())
                    .await
                    .map(|file| (file, s.revalidate(&attr), attr)),
                Err(e) => Err(e),
            };
            match opened {
                Ok((file, cache, attr)) => s.reply_opened(reply, file, flags.0, cache, &attr),
                // The kernel opens by inode, through a name it still holds: the file went
                // (unlinked or replaced elsewhere) before this mount heard of it. As NFS does
                // for a stale handle: ESTALE, and the kernel looks the path up again (at the
                // metadata server) and retries once, finding the name's new file or none.
                Err(FsError::NotFound) => reply.error(Errno::ESTALE),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("create", |s| async move {
            let perm = mode & !umask & 0o7777;
            let parent = s.ino(parent);
            let made = s
                .client
                .make_node(parent, &name, FileKind::File, perm, uid, gid, 0)
                .await;
            let attr = match s.note_added(parent, &name, made) {
                Ok(a) => a,
                Err(e) => return reply.error(errno(&e)),
            };
            match s.client.handle_for(attr.clone()).await {
                Ok(file) => {
                    // A file this mount created: its pages are its own writes.
                    s.files.remember_version(&attr);
                    let (file, open_flags) = open_mode(file, flags);
                    let fh = FileHandle(s.files.add(file));
                    reply.created(
                        &s.leases.name(parent, &name, Some(attr.ino)),
                        &s.fresh_attr(attr.clone()),
                        Generation(0),
                        fh,
                        open_flags,
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // O_DIRECT asks to minimize cache effects: such reads use what is cached, keep nothing.
        let cache_use = if flags.0 & libc::O_DIRECT != 0 {
            CacheUse::Peek
        } else {
            CacheUse::Fill
        };
        let started = Instant::now();
        if let Some(data) = self.shared.files.read_if_at_hand(fh.0, offset, size as u64) {
            self.shared.metrics.bytes_read.inc_by(data.len() as u64);
            self.answered_on_arrival("read", started);
            return reply.data(&data);
        }
        self.spawn("read", move |s| async move {
            let file = match s.file(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            // Reads see what other descriptors of this mount wrote.
            if let Err(e) = s.files.flush_others(file.ino(), Some(fh.0)).await {
                return reply.error(errno(&e));
            }
            // The handle is held only to plan each read: reads of one file overlap.
            let result =
                DfsHandle::read_shared(file.handle(), offset, size as u64, cache_use).await;
            match result {
                Ok(data) => {
                    s.metrics.bytes_read.inc_by(data.len() as u64);
                    reply.data(&data)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        // Opened O_SYNC or O_DSYNC: the write is sent and durable before it is answered. (The
        // kernel follows such a write with an fsync of its own on a file whose pages it
        // caches, but not on an O_APPEND descriptor, whose writes bypass them.)
        let sync = flags.0 & libc::O_DSYNC != 0;
        let started = Instant::now();
        if !sync {
            if let Some(len) = self.shared.files.write_if_buffered(fh.0, offset, data) {
                self.shared.metrics.bytes_written.inc_by(len as u64);
                self.answered_on_arrival("write", started);
                return reply.written(len as u32);
            }
        }
        let data = data.to_vec();
        self.spawn("write", |s| async move {
            let file = match s.file(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let mut handle = file.lock().await;
            let len = data.len();
            if let Err(e) = handle.write_owned(offset, data).await {
                return reply.error(errno(&e));
            }
            s.files.wrote(&file, handle.size());
            s.metrics.bytes_written.inc_by(len as u64);
            drop(handle);
            if sync {
                if let Err(e) = s.files.sync(&file).await {
                    return reply.error(errno(&e));
                }
            }
            reply.written(len as u32)
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to write and no lock to drop (a file only read, or fsynced): no hand-off.
        let started = Instant::now();
        let s = &self.shared;
        if let Ok(file) = s.file(fh) {
            if s.files.flush_if_clean(&file) && s.client.release_no_locks(s.ino(ino), lock_owner.0)
            {
                self.answered_on_arrival("flush", started);
                return reply.ok();
            }
        }
        self.spawn("flush", |s| async move {
            // The close may come from a process that shares the descriptor (a child that
            // inherited it): the one that syncs it next hears of a failure too.
            let result = match s.file(fh) {
                Ok(file) => s.files.flush_keeping_error(&file).await,
                Err(e) => return reply.error(e),
            };
            // A close drops the closing process's fcntl locks on the file, as POSIX says.
            let released = s.client.release_locks(s.ino(ino), lock_owner.0).await;
            reply_empty(reply, result.and(released))
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing to write, no lock to drop and nothing to remove: no hand-off.
        let started = Instant::now();
        let s = &self.shared;
        let no_locks =
            lock_owner.is_none_or(|owner| s.client.release_no_locks(s.ino(ino), owner.0));
        if no_locks && s.files.close_if_clean(fh.0) {
            self.answered_on_arrival("release", started);
            return reply.ok();
        }
        self.spawn("release", |s| async move {
            let mut result = s.files.close(fh.0).await.map(drop);
            // The last close of an open file drops its flock lock.
            if let Some(owner) = lock_owner {
                let released = s.client.release_locks(s.ino(ino), owner.0).await;
                result = result.and(released);
            }
            reply_empty(reply, result)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every flush is durable: chunk servers fsync shards, the metadata server its commits.
        // Nothing buffered, uploading or waiting for the file in this mount: nothing to send.
        let started = Instant::now();
        if let Ok(file) = self.shared.file(fh) {
            if self.shared.files.sync_if_clean(&file) {
                self.answered_on_arrival("fsync", started);
                return reply.ok();
            }
        }
        self.spawn("fsync", |s| async move {
            let result = match s.file(fh) {
                Ok(file) => s.files.sync(&file).await,
                Err(e) => return reply.error(e),
            };
            reply_empty(reply, result)
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(kind) = lock_kind(typ) else {
            return reply.error(Errno::EINVAL);
        };
        self.spawn("getlk", |s| async move {
            let range = LockRange { start, end };
            match s
                .client
                .test_lock(s.ino(ino), lock_owner.0, pid, range, kind)
                .await
            {
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Ok(Some(c)) => {
                    let typ = match c.kind {
                        LockKind::Write => libc::F_WRLCK,
                        _ => libc::F_RDLCK,
                    };
                    reply.locked(c.range.start, c.range.end, typ, c.pid)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(kind) = lock_kind(typ) else {
            return reply.error(Errno::EINVAL);
        };
        self.spawn("setlk", |s| async move {
            let ino = s.ino(ino);
            let range = LockRange { start, end };
            let mut backoff = LOCK_RETRY_MIN;
            loop {
                let result = s
                    .client
                    .set_lock(ino, lock_owner.0, pid, range, kind, sleep)
                    .await;
                match result {
                    Err(FsError::Locked) if sleep => {}
                    other => return reply_empty(reply, other),
                }
                // Until the next try, watch for the end of the wait: the file closed (its
                // process died) or a signal for the waiting process (the kernel would not let
                // even SIGKILL end it before this reply).
                let next_try = std::time::Instant::now() + backoff;
                let gave_up = loop {
                    if s.file(fh).is_err() || signal_pending(pid) {
                        break true;
                    }
                    let left = next_try.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    tokio::time::sleep(left.min(SIGNAL_POLL)).await;
                };
                if gave_up {
                    if let Err(e) = s.client.cancel_lock_wait(lock_owner.0).await {
                        tracing::warn!("withdrawing a lock wait: {e}");
                    }
                    return reply.error(Errno::EINTR);
                }
                backoff = (backoff * 2).min(LOCK_RETRY_MAX);
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        // Blocks are written whole when data arrives, so there is nothing to reserve: plain
        // allocation only extends the size. Punching or zeroing ranges is not supported.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        self.spawn("fallocate", |s| async move {
            let file = match s.file(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let result = if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                Ok(())
            } else {
                s.files.allocate(&file, end).await
            };
            reply_empty(reply, result)
        });
    }

    /// A copy within the mount (`cp` uses it) is made of references to the source's blocks
    /// when it can be (see [`crate::client::clone`]); otherwise EOPNOTSUPP, and the kernel
    /// copies the bytes through reads and writes.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        self.spawn("copy_file_range", |s| async move {
            match s
                .copy_by_reference(fh_in, offset_in, fh_out, offset_out, len)
                .await
            {
                Ok(copied) => reply.written(copied),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dir = self.shared.ino(ino);
        let fh = self.shared.next_dir_fh.fetch_add(1, Ordering::Relaxed);
        let listing = DirListing {
            dir,
            entries: Vec::new(),
            complete: false,
            mark: None,
        };
        self.shared
            .dirs
            .lock()
            .expect("dir lock")
            .insert(fh, Arc::new(tokio::sync::Mutex::new(listing)));
        reply.opened(FileHandle(fh), self.shared.listing_flags(dir));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.list("readdir", ino, fh, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.list("readdirplus", ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.dirs.lock().expect("dir lock").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let started = Instant::now();
        if let Some(usage) = self.shared.recent_usage() {
            self.answered_on_arrival("statfs", started);
            return reply_statfs(reply, &usage);
        }
        self.spawn("statfs", |s| async move {
            match s.usage(s.ino(ino)).await {
                Ok(usage) => reply_statfs(reply, &usage),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let value = value.to_vec();
        self.spawn("setxattr", |s| async move {
            let id = s.ino(ino);
            // Attribute changes waiting for a flush land before this one.
            let result = match s.files.settle(id).await {
                Ok(()) => s.client.setxattr(id, &name, &value, flags as u32).await,
                Err(e) => Err(e),
            };
            // After the change: a lookup that raced with it may have noted the old absence.
            s.absent_xattrs.forget(id);
            reply_empty(reply, result)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let id = self.shared.ino(ino);
        if self.shared.absent_xattrs.is_absent(id, &name) {
            return reply.error(errno(&FsError::NoAttribute));
        }
        self.spawn("getxattr", |s| async move {
            match s.client.getxattr(id, &name).await {
                Ok(value) if size == 0 => reply.size(value.len() as u32),
                Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
                Ok(value) => reply.data(&value),
                Err(e) => {
                    if e == FsError::NoAttribute {
                        s.absent_xattrs.note_absent(id, &name);
                    }
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.shared.absent_xattrs.is_bare(self.shared.ino(ino)) {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        self.spawn("listxattr", |s| async move {
            match s.client.listxattr(s.ino(ino)).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&dfs_common::name::decode(&n));
                        buf.push(0);
                    }
                    if size == 0 {
                        reply.size(buf.len() as u32)
                    } else if buf.len() > size as usize {
                        reply.error(Errno::ERANGE)
                    } else {
                        reply.data(&buf)
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.writable().and_then(|_| name_str(name)) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn("removexattr", |s| async move {
            let id = s.ino(ino);
            let result = match s.files.settle(id).await {
                Ok(()) => s.client.removexattr(id, &name).await,
                Err(e) => Err(e),
            };
            s.absent_xattrs.forget(id);
            reply_empty(reply, result)
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks permissions from the attributes.
        reply.ok();
    }
}

/// Answers `statfs` with the volume's usage, in 4 KiB blocks.
fn reply_statfs(reply: ReplyStatfs, usage: &dfs_common::proto::meta::StatFs) {
    let bsize = 4096u64;
    let free = usage.free_bytes / bsize;
    reply.statfs(
        usage.total_bytes / bsize,
        free,
        free,
        usage.total_inodes,
        usage.free_inodes,
        bsize as u32,
        255,
        bsize as u32,
    )
}
