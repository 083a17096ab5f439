//! The change feed: what each namespace mutation makes stale in the mounts' caches, kept in a
//! bounded ring that mounts read with a long poll (`WatchChanges`), so a rename, unlink or
//! write on one mount is dropped from another's kernel caches at once instead of when their
//! timeout runs out.
//!
//! The feed lives in the leader's memory. A mount that falls behind the ring, or asks a new
//! leader (whose feed has another id), is told it missed changes and drops everything it
//! caches; the caches' timeout stays the fallback for a change that is never told.
//!
//! Each call for changes also tells how far its mount has taken the feed (the position it
//! asks from): a change to a file another mount holds an open delegation of is answered only
//! once that mount has taken it ([`ChangeFeed::wait_taken`]), or its delegation has lapsed.

use dfs_common::proto::meta::req::{self, OpenReport};
use dfs_common::proto::meta::{ChangePage, Invalidation, MetaRequest};
use dfs_common::{InodeId, VolumeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Changes the ring holds; a mount further behind is told it missed some.
const CAPACITY: usize = 16_384;
/// Most changes in one answer.
const MAX_PAGE: usize = 1024;
/// Longest wait of one call (well inside every call timeout).
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Changes are recorded only while another mount asked for them this recently.
const WATCHED_FOR: Duration = Duration::from_secs(60);
/// Once a waiting watcher is woken, how long more changes may gather before it is answered
/// (so a busy volume costs a call per batch of changes, not per change).
const GATHER: Duration = Duration::from_millis(5);
/// How long after a watcher's last call arrived its open delegations hold: longer than the
/// mount's own reckoning (a lease from when it sent the last call that was answered).
pub const DELEGATION_HELD: Duration = Duration::from_millis(
    dfs_common::proto::meta::req::OPEN_DELEGATION_LEASE.as_millis() as u64 + 500,
);
/// Inodes whose volume is remembered at most (past this, the memory starts afresh).
const MAX_REMEMBERED_VOLUMES: usize = 65_536;
/// Watchers remembered at most (past this, those not seen lately are forgotten).
const MAX_WATCHERS: usize = 4096;
/// Clients that said they stopped watching, remembered at most (the oldest go first).
const MAX_LEFT: usize = 4096;

pub struct ChangeFeed {
    ring: Mutex<Ring>,
    /// The volume of inodes changes were recorded for (an inode never changes volume, and its
    /// number is never reused), so most changes need no store read to find it.
    volumes: Mutex<HashMap<InodeId, VolumeId>>,
    /// The position after the newest change: callers wait for it to pass theirs.
    head: tokio::sync::watch::Sender<u64>,
    /// Raised at every call for changes: what waits for a watcher to take a change looks again.
    calls: tokio::sync::watch::Sender<u64>,
}

struct Ring {
    /// Random, and new whenever the feed restarts: positions of another feed mean nothing.
    id: u64,
    /// Position of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry>,
    /// Each watching client.
    watchers: HashMap<u64, Watcher>,
    /// Watchers a change waits for (how many changes each): their calls are answered at once.
    awaited: HashMap<u64, usize>,
    /// Clients that stopped watching (unmounted): a call of theirs still on its way does not
    /// make them watchers again. Looked up at every call, so a set; `left_order` (newest
    /// last) says which to forget first.
    left: HashSet<u64>,
    left_order: VecDeque<u64>,
}

struct Watcher {
    /// When it last asked (a call arriving, or read again while it waits).
    asked: Instant,
    /// When its last call arrived.
    arrived: Instant,
    /// The position its last call asked from, in feed `feed`: it has taken every change before.
    taken: u64,
    feed: u64,
    /// The files it has open, for a watcher that reports them (`WatchOpen`): orphans it holds
    /// are kept (see [`crate::orphans`]).
    open: Option<HashSet<InodeId>>,
    /// Files it opened (or created) through calls lately: its reports may not name them yet
    /// (the report that goes with a call is made before the answer to an open sent meanwhile
    /// arrives), nor ever, if it falls silent first. Held as if reported.
    opened: Recent,
    /// Files its open delegations covered when they lapsed: it may have reopened them without
    /// a call just before it fell silent. Held as if reported, but not reopened for it
    /// through a call: it has them open only if its next report says so.
    covered: Recent,
}

impl Watcher {
    /// Whether it may have `ino` open, as far as its reports and calls tell.
    fn holds(&self, ino: InodeId) -> bool {
        self.reports(ino) || self.covered.contains(ino)
    }

    /// Whether it said it has `ino` open, or opened it through a call lately.
    fn reports(&self, ino: InodeId) -> bool {
        self.open.as_ref().is_some_and(|open| open.contains(&ino)) || self.opened.contains(ino)
    }
}

/// Files noted since a watcher's last call for changes arrived, and between its last two:
/// kept until its second call after them, by when its reports name what it still has open.
#[derive(Default)]
struct Recent {
    since: HashSet<InodeId>,
    before: HashSet<InodeId>,
}

impl Recent {
    fn insert(&mut self, ino: InodeId) {
        if self.since.len() < MAX_OPEN_PER_WATCHER {
            self.since.insert(ino);
        }
    }

    fn contains(&self, ino: InodeId) -> bool {
        self.since.contains(&ino) || self.before.contains(&ino)
    }

    /// At a call for changes: those noted since the last one are kept through the next.
    fn next_call(self) -> Recent {
        Recent {
            since: HashSet::new(),
            before: self.since,
        }
    }
}

/// Files one watcher is known to have open at most; more are not recorded.
const MAX_OPEN_PER_WATCHER: usize = 2 * req::MAX_OPEN_REPORTED;

struct Entry {
    volume: VolumeId,
    /// The client whose call made the change.
    origin: Option<u64>,
    what: Invalidation,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

/// The invalidations a mutation causes, and an inode whose volume they belong to.
pub struct Stale {
    pub what: Vec<Invalidation>,
    pub anchor: InodeId,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeFeed {
    pub fn new() -> Self {
        ChangeFeed {
            ring: Mutex::new(Ring {
                id: new_id(),
                first: 0,
                entries: VecDeque::new(),
                watchers: HashMap::new(),
                awaited: HashMap::new(),
                left: HashSet::new(),
                left_order: VecDeque::new(),
            }),
            volumes: Mutex::new(HashMap::new()),
            head: tokio::sync::watch::channel(0).0,
            calls: tokio::sync::watch::channel(0).0,
        }
    }

    /// The volume of `ino`, if a change of it was recorded lately.
    pub fn volume_of(&self, ino: InodeId) -> Option<VolumeId> {
        self.volumes.lock().expect("volumes").get(&ino).copied()
    }

    pub fn remember_volume(&self, ino: InodeId, volume: VolumeId) {
        let mut volumes = self.volumes.lock().expect("volumes");
        if volumes.len() >= MAX_REMEMBERED_VOLUMES {
            volumes.clear();
        }
        volumes.insert(ino, volume);
    }

    /// Starts a new feed (a member that becomes leader): every watcher is told it missed
    /// changes, since this member did not see what the old leader told.
    pub fn restart(&self) {
        let mut ring = self.ring.lock().expect("change feed");
        ring.id = new_id();
        ring.first = ring.end();
        ring.entries.clear();
        // Mounts report their open files again, whole, once told they missed changes; until
        // each has called on this feed, its orphans wait (see `may_reap`).
        for w in ring.watchers.values_mut() {
            if let Some(open) = w.open.as_mut() {
                open.clear();
            }
            w.opened = Recent::default();
            w.covered = Recent::default();
        }
    }

    /// The feed's identity and the position after its newest change.
    pub fn position(&self) -> (u64, u64) {
        let ring = self.ring.lock().expect("change feed");
        (ring.id, ring.end())
    }

    /// Whether `client` said, in its calls for changes, that it has `ino` open, or opened it
    /// through a call since its last two calls.
    pub fn reports_open(&self, client: u64, ino: InodeId) -> bool {
        let ring = self.ring.lock().expect("change feed");
        ring.watchers.get(&client).is_some_and(|w| w.reports(ino))
    }

    /// Notes that `client` opened or created file `ino` through a call: held for it (see
    /// [`ChangeFeed::may_reap`]) until its reports can name it. Only for a watcher that
    /// reports its open files.
    pub fn opened_by(&self, client: u64, ino: InodeId) {
        self.note(client, |w| w.opened.insert(ino));
    }

    /// Notes that the lapsed open delegation of `client` covered file `ino`: held for it as
    /// [`ChangeFeed::opened_by`] holds a file, though not reopened for it through a call
    /// (see [`ChangeFeed::reports_open`]): it may have reopened it without a call before it
    /// fell silent, or not.
    pub fn delegation_lapsed(&self, client: u64, ino: InodeId) {
        self.note(client, |w| w.covered.insert(ino));
    }

    /// Applies `note` to the watcher `client`, if it reports its open files.
    fn note(&self, client: u64, note: impl FnOnce(&mut Watcher)) {
        let mut ring = self.ring.lock().expect("change feed");
        if let Some(w) = ring.watchers.get_mut(&client).filter(|w| w.open.is_some()) {
            note(w);
        }
    }

    /// Whether orphan `ino`, orphaned by a change published before `position` of feed `feed`,
    /// may be freed: every watcher that reports its open files and has not lapsed (called
    /// within [`DELEGATION_HELD`]) has since called on this feed from `position` or later (so
    /// it reported every open made before it learnt of the change), and none has it open. A
    /// lapsed watcher (crashed, cut off or paused) still keeps what its last report named open,
    /// and what it opened through calls after that report, until `hold` after its last call,
    /// for when it comes back.
    pub fn may_reap(&self, ino: InodeId, feed: u64, position: u64, hold: Duration) -> bool {
        let ring = self.ring.lock().expect("change feed");
        if feed != ring.id {
            return false;
        }
        ring.watchers.values().all(|w| match &w.open {
            None => true,
            Some(_) if w.arrived.elapsed() >= DELEGATION_HELD => {
                w.arrived.elapsed() >= hold || !w.holds(ino)
            }
            Some(_) => w.feed == ring.id && w.taken >= position && !w.holds(ino),
        })
    }

    /// Whether a client other than `origin` asked for changes lately: otherwise the changes
    /// `origin` makes are not worth recording.
    pub fn is_watched_by_others(&self, origin: Option<u64>) -> bool {
        let ring = self.ring.lock().expect("change feed");
        ring.watchers
            .iter()
            .any(|(&w, at)| Some(w) != origin && at.asked.elapsed() < WATCHED_FOR)
    }

    /// The clients other than `origin` that may hold open delegations: every watcher. Those
    /// whose delegations lapsed (no call of theirs arrived within [`DELEGATION_HELD`]) are not
    /// waited for (see [`ChangeFeed::wait_taken`]), but what they held is still recalled: a
    /// file reopened under a delegation just before its mount fell silent may be open there.
    pub fn delegation_holders(&self, origin: Option<u64>) -> Vec<u64> {
        let ring = self.ring.lock().expect("change feed");
        ring.watchers
            .keys()
            .filter(|&&w| Some(w) != origin)
            .copied()
            .collect()
    }

    /// Whether `client` follows this feed now (its last call was on it and arrived lately):
    /// only such a client is told of changes soon enough to hold a delegation.
    pub fn follows(&self, client: u64) -> bool {
        let ring = self.ring.lock().expect("change feed");
        ring.watchers
            .get(&client)
            .is_some_and(|w| w.feed == ring.id && w.arrived.elapsed() < DELEGATION_HELD)
    }

    /// Waits until `client` has taken the feed up to position `end` (a call of its on this
    /// feed asks from there or later), stopped watching, or let its delegations lapse (no
    /// call of its arrived for [`DELEGATION_HELD`]). Returns whether they lapsed.
    pub async fn wait_taken(&self, client: u64, end: u64) -> bool {
        let mut calls = self.calls.subscribe();
        *self
            .ring
            .lock()
            .expect("change feed")
            .awaited
            .entry(client)
            .or_default() += 1;
        // (The mount's call waiting now is woken by the change itself: see `watch`.)
        let lapsed = loop {
            let lapses = {
                let ring = self.ring.lock().expect("change feed");
                match ring.watchers.get(&client) {
                    Some(w) if w.feed == ring.id && w.taken >= end => break false,
                    Some(w) => w.arrived + DELEGATION_HELD,
                    None => break false,
                }
            };
            if Instant::now() >= lapses {
                break true;
            }
            let lapses = tokio::time::Instant::from_std(lapses);
            if tokio::time::timeout_at(lapses, calls.changed())
                .await
                .is_err()
            {
                break true;
            }
        };
        let mut ring = self.ring.lock().expect("change feed");
        if let Some(n) = ring.awaited.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                ring.awaited.remove(&client);
            }
        }
        lapsed
    }

    /// Forgets `client`, which stopped watching (its mount ends): changes no longer wait for
    /// it to take them, and its open delegations end now rather than when they lapse.
    pub fn forget(&self, client: u64) {
        let mut ring = self.ring.lock().expect("change feed");
        ring.watchers.remove(&client);
        if ring.left.insert(client) {
            ring.left_order.push_back(client);
            if ring.left_order.len() > MAX_LEFT {
                if let Some(oldest) = ring.left_order.pop_front() {
                    ring.left.remove(&oldest);
                }
            }
        }
        drop(ring);
        // What waits for it to take a change looks again, and finds it gone.
        self.calls.send_modify(|n| *n += 1);
    }

    /// Whether `client` said it stopped watching.
    pub fn has_left(&self, client: u64) -> bool {
        self.ring
            .lock()
            .expect("change feed")
            .left
            .contains(&client)
    }

    /// Notes a call for changes from `client` asking from `after` in feed `feed`, with what it
    /// reports of its open files.
    fn arrived(&self, client: u64, feed: u64, after: u64, report: Option<OpenReport>) {
        let mut ring = self.ring.lock().expect("change feed");
        if ring.left.contains(&client) {
            return;
        }
        let now = Instant::now();
        if ring.watchers.len() >= MAX_WATCHERS {
            ring.watchers.retain(|_, w| w.asked.elapsed() < WATCHED_FOR);
        }
        // A new watcher (feed 0) starts at the newest position of this feed.
        let (feed, after) = match feed {
            0 => (ring.id, ring.end()),
            _ => (feed, after),
        };
        if ring.watchers.len() < MAX_WATCHERS || ring.watchers.contains_key(&client) {
            let known = ring.watchers.remove(&client);
            let (mut open, opened, covered) = match known {
                Some(w) => (w.open, w.opened.next_call(), w.covered.next_call()),
                None => (None, Recent::default(), Recent::default()),
            };
            if let Some(report) = report {
                let open = open.get_or_insert_with(HashSet::new);
                if report.all {
                    open.clear();
                }
                for ino in &report.released {
                    open.remove(ino);
                }
                for ino in report.opened {
                    if open.len() < MAX_OPEN_PER_WATCHER {
                        open.insert(ino);
                    }
                }
            }
            ring.watchers.insert(
                client,
                Watcher {
                    asked: now,
                    arrived: now,
                    taken: after,
                    feed,
                    open,
                    opened,
                    covered,
                },
            );
        }
        drop(ring);
        self.calls.send_modify(|n| *n += 1);
    }

    fn awaited(&self, client: u64) -> bool {
        self.ring
            .lock()
            .expect("change feed")
            .awaited
            .contains_key(&client)
    }

    /// Records the changes of one mutation of `volume`, made by client `origin`. Returns the
    /// position after them.
    pub fn publish(&self, volume: VolumeId, origin: Option<u64>, what: Vec<Invalidation>) -> u64 {
        let mut ring = self.ring.lock().expect("change feed");
        for what in what {
            if ring.entries.len() == CAPACITY {
                ring.entries.pop_front();
                ring.first += 1;
            }
            ring.entries.push_back(Entry {
                volume,
                origin,
                what,
            });
        }
        let end = ring.end();
        drop(ring);
        self.head.send_replace(end);
        end
    }

    /// The changes of `volume` after position `after` of feed `feed` made by clients other
    /// than `origin`, waiting up to `wait` for one. Feed 0 is a new watcher's: it starts at
    /// the newest position, having missed nothing.
    pub async fn watch(
        &self,
        volume: VolumeId,
        origin: u64,
        feed: u64,
        after: u64,
        wait: Duration,
        report: Option<OpenReport>,
    ) -> ChangePage {
        let mut head = self.head.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        self.arrived(origin, feed, after, report);
        let mut after = after;
        loop {
            let page = self.read(volume, origin, feed, after);
            if !page.changes.is_empty() || page.missed || page.feed != feed {
                return page;
            }
            after = page.next;
            let woken = tokio::time::timeout_at(deadline, head.wait_for(|&end| end > after))
                .await
                .is_ok_and(|r| r.is_ok());
            if !woken {
                return self.read(volume, origin, feed, after);
            }
            // A change waiting for this watcher to take it is told at once.
            if !self.awaited(origin) {
                tokio::time::sleep(GATHER).await;
            }
        }
    }

    fn read(&self, volume: VolumeId, origin: u64, feed: u64, after: u64) -> ChangePage {
        let mut ring = self.ring.lock().expect("change feed");
        if let Some(w) = ring.watchers.get_mut(&origin) {
            w.asked = Instant::now();
        }
        if feed != ring.id || after < ring.first || after > ring.end() {
            return ChangePage {
                feed: ring.id,
                next: ring.end(),
                changes: Vec::new(),
                missed: feed != 0,
            };
        }
        let mut changes = Vec::new();
        let mut next = after;
        let skip = (after - ring.first) as usize;
        for entry in ring.entries.range(skip..) {
            if changes.len() == MAX_PAGE {
                break;
            }
            next += 1;
            if entry.volume == volume && entry.origin != Some(origin) {
                changes.push(entry.what.clone());
            }
        }
        ChangePage {
            feed: ring.id,
            next,
            changes,
            missed: false,
        }
    }
}

fn new_id() -> u64 {
    rand::random::<u64>().max(1)
}

impl Stale {
    /// The inodes whose attributes (or contents) it changes.
    pub fn inodes(&self) -> Vec<InodeId> {
        self.what
            .iter()
            .filter_map(|w| match w {
                Invalidation::Inode { ino, .. } => Some(*ino),
                Invalidation::Entry { .. } => None,
            })
            .collect()
    }
}

/// Whether `request` may change an existing file's attributes or contents: such a change
/// recalls the file's open delegations before it is answered.
pub fn changes_files(request: &MetaRequest) -> bool {
    use MetaRequest as R;
    matches!(
        request,
        R::SetAttr(_)
            | R::Link(_)
            | R::Unlink(_)
            | R::UnlinkOrHide(_)
            | R::Rename(_)
            | R::Move(_)
            | R::SetXattr(_)
            | R::RemoveXattr(_)
            | R::CommitWrite(_)
            | R::WriteInline(_)
            | R::CommitIfUnchanged(_)
    )
}

/// What `request` makes stale in other mounts' caches, if it changes the namespace.
pub fn stale(request: &MetaRequest) -> Option<Stale> {
    use Invalidation::{Entry, Inode};
    use MetaRequest as R;
    let entry = |parent: InodeId, name: &str| Entry {
        parent,
        name: name.to_string(),
    };
    let attrs = |ino| Inode { ino, data: false };
    let (what, anchor) = match request {
        R::MakeNode(req::MakeNode { parent, name, .. })
        | R::Symlink(req::Symlink { parent, name, .. })
        | R::Unlink(req::Unlink { parent, name })
        | R::UnlinkOrHide(req::UnlinkOrHide { parent, name, .. })
        | R::Rmdir(req::Rmdir { parent, name }) => {
            (vec![entry(*parent, name), attrs(*parent)], *parent)
        }
        R::Link(q) => (
            vec![
                entry(q.new_parent, &q.new_name),
                attrs(q.new_parent),
                attrs(q.ino),
            ],
            q.ino,
        ),
        R::Rename(q) | R::Move(req::Move { rename: q }) => {
            let mut what = vec![
                entry(q.parent, &q.name),
                attrs(q.parent),
                entry(q.new_parent, &q.new_name),
            ];
            if q.new_parent != q.parent {
                what.push(attrs(q.new_parent));
            }
            (what, q.parent)
        }
        R::SetAttr(q) => (
            vec![Inode {
                ino: q.ino,
                data: q.set.size.is_some(),
            }],
            q.ino,
        ),
        R::SetXattr(req::SetXattr { ino, .. }) | R::RemoveXattr(req::RemoveXattr { ino, .. }) => {
            (vec![attrs(*ino)], *ino)
        }
        R::CommitWrite(req::CommitWrite { ino, .. })
        | R::WriteInline(req::WriteInline { ino, .. })
        | R::CommitIfUnchanged(req::CommitIfUnchanged { ino, .. }) => (
            vec![Inode {
                ino: *ino,
                data: true,
            }],
            *ino,
        ),
        // Volumes, clients, servers and blocks: nothing a mount caches by name or inode.
        _ => return None,
    };
    Some(Stale { what, anchor })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watching client.
    const ME: u64 = 5;

    fn attrs(ino: u64) -> Invalidation {
        Invalidation::Inode {
            ino: InodeId(ino),
            data: false,
        }
    }

    fn report(all: bool, opened: &[u64], released: &[u64]) -> Option<OpenReport> {
        let inos = |l: &[u64]| l.iter().map(|&i| InodeId(i)).collect();
        Some(OpenReport {
            all,
            opened: inos(opened),
            released: inos(released),
        })
    }

    /// A hold of a lapsed mount's open files longer than any of these tests (and short: an
    /// `Instant` cannot go back past the host's boot).
    const HOLD: Duration = Duration::from_secs(30);

    /// Makes `client`'s last call `ago` older than it was, as if it had been silent since.
    fn silent_for(feed: &ChangeFeed, client: u64, ago: Duration) {
        let mut ring = feed.ring.lock().unwrap();
        let w = ring.watchers.get_mut(&client).unwrap();
        w.arrived = w.arrived.checked_sub(ago).unwrap();
        w.asked = w.asked.checked_sub(ago).unwrap();
    }

    /// A call of `client` for changes of volume 1 from `after` of feed `id`, answered at once.
    async fn call(
        feed: &ChangeFeed,
        client: u64,
        (id, after): (u64, u64),
        report: Option<OpenReport>,
    ) -> ChangePage {
        feed.watch(VolumeId(1), client, id, after, Duration::ZERO, report)
            .await
    }

    /// A mount that stops calling (crashed, cut off, paused) is not waited for, but the files
    /// its last report named open are kept for the hold after its last call.
    #[tokio::test]
    async fn a_silent_mount_keeps_only_what_it_reported_open_and_only_for_the_hold() {
        let feed = ChangeFeed::new();
        let other = 6;
        call(&feed, ME, (0, 0), report(true, &[3], &[])).await;
        call(&feed, other, (0, 0), report(true, &[], &[])).await;
        let end = feed.publish(VolumeId(1), Some(other), vec![attrs(3), attrs(4)]);
        let (id, _) = feed.position();
        call(&feed, other, (id, end), report(false, &[], &[])).await;
        assert!(!feed.may_reap(InodeId(4), id, end, HOLD), "not lapsed yet");
        silent_for(&feed, ME, DELEGATION_HELD);
        assert!(
            feed.may_reap(InodeId(4), id, end, HOLD),
            "lapsed: not waited for"
        );
        assert!(!feed.may_reap(InodeId(3), id, end, HOLD), "reported open");
        silent_for(&feed, ME, HOLD);
        assert!(feed.may_reap(InodeId(3), id, end, HOLD), "past the hold");
        // Back before the hold ran out, it holds what it reports as before.
        call(&feed, ME, (id, end), report(false, &[], &[])).await;
        assert!(!feed.may_reap(InodeId(3), id, end, HOLD), "back, and open");
        call(&feed, ME, (id, end), report(false, &[], &[3])).await;
        assert!(feed.may_reap(InodeId(3), id, end, HOLD), "closed");
    }

    /// A file a mount opened through a call after its last report is held as if reported
    /// (the mount may fall silent before it can report it), until its second call after.
    #[tokio::test]
    async fn a_file_opened_after_the_last_report_is_held_until_reports_can_name_it() {
        let feed = ChangeFeed::new();
        let other = 6;
        call(&feed, ME, (0, 0), report(true, &[], &[])).await;
        call(&feed, other, (0, 0), report(true, &[], &[])).await;
        feed.opened_by(ME, InodeId(5));
        // A client that does not watch, or does not report, holds nothing so.
        feed.opened_by(7, InodeId(4));
        let end = feed.publish(VolumeId(1), Some(other), vec![attrs(4), attrs(5)]);
        let (id, _) = feed.position();
        call(&feed, other, (id, end), report(false, &[], &[])).await;
        silent_for(&feed, ME, DELEGATION_HELD);
        assert!(feed.may_reap(InodeId(4), id, end, HOLD));
        assert!(
            !feed.may_reap(InodeId(5), id, end, HOLD),
            "opened after its last report: held by the silent mount"
        );
        assert!(feed.reports_open(ME, InodeId(5)));
        silent_for(&feed, ME, HOLD);
        assert!(feed.may_reap(InodeId(5), id, end, HOLD), "past the hold");

        // Back, and still calling: the open is held through the call whose report may have
        // been made before the open's answer arrived, then it is up to the reports.
        call(&feed, ME, (id, end), report(false, &[], &[])).await;
        assert!(!feed.may_reap(InodeId(5), id, end, HOLD), "one call after");
        call(&feed, ME, (id, end), report(false, &[], &[])).await;
        assert!(feed.may_reap(InodeId(5), id, end, HOLD), "two calls after");
        assert!(!feed.reports_open(ME, InodeId(5)));
        // What a lapsed delegation covered is held too, but not opened again through a call.
        feed.delegation_lapsed(ME, InodeId(8));
        assert!(!feed.may_reap(InodeId(8), id, end, HOLD));
        assert!(!feed.reports_open(ME, InodeId(8)));
        // A new feed forgets them with the reports.
        feed.opened_by(ME, InodeId(9));
        feed.restart();
        assert!(!feed.reports_open(ME, InodeId(9)));
    }

    /// An orphan is freed once every mount that reports its open files has called after the
    /// change that made it, and none of them has it open.
    #[tokio::test]
    async fn an_orphan_waits_for_each_reporting_mount_to_call_again_without_it_open() {
        let feed = ChangeFeed::new();
        let (other, old) = (6, 7);
        let start = call(&feed, ME, (0, 0), report(true, &[3], &[])).await;
        // A mount that does not report (an older one) is not waited for.
        call(&feed, old, (0, 0), None).await;
        call(&feed, other, (0, 0), report(true, &[], &[])).await;
        let end = feed.publish(VolumeId(1), Some(other), vec![attrs(3), attrs(4)]);
        let (id, _) = feed.position();
        assert!(
            !feed.may_reap(InodeId(4), id, end, HOLD),
            "the mounts called before"
        );
        let page = call(
            &feed,
            ME,
            (start.feed, start.next),
            report(false, &[4], &[]),
        )
        .await;
        assert_eq!(page.next, end);
        assert!(
            !feed.may_reap(InodeId(4), id, end, HOLD),
            "the other has not called since"
        );
        call(&feed, other, (id, end), report(false, &[], &[])).await;
        assert!(
            !feed.may_reap(InodeId(4), id, end, HOLD),
            "opened before this mount learnt of it"
        );
        assert!(
            !feed.may_reap(InodeId(3), id, end, HOLD),
            "open since before"
        );
        call(&feed, ME, (id, end), report(false, &[], &[4, 3])).await;
        assert!(feed.may_reap(InodeId(4), id, end, HOLD));
        assert!(feed.may_reap(InodeId(3), id, end, HOLD));
        // A whole report replaces what was known.
        call(&feed, ME, (id, end), report(false, &[9], &[])).await;
        assert!(!feed.may_reap(InodeId(9), id, end, HOLD));
        call(&feed, ME, (id, end), report(true, &[8], &[])).await;
        assert!(feed.may_reap(InodeId(9), id, end, HOLD));
        assert!(!feed.may_reap(InodeId(8), id, end, HOLD));
        // A client that stopped watching holds nothing.
        feed.forget(ME);
        assert!(feed.may_reap(InodeId(8), id, end, HOLD));
        // Another feed's positions mean nothing, and a new feed knows no mount's open files
        // until each calls on it.
        call(&feed, ME + 10, (0, 0), report(true, &[], &[])).await;
        feed.restart();
        let (new_id, new_end) = feed.position();
        assert!(!feed.may_reap(InodeId(8), id, end, HOLD));
        assert!(!feed.may_reap(InodeId(8), new_id, new_end, HOLD));
        call(&feed, ME + 10, (id, end), report(false, &[], &[])).await;
        assert!(
            !feed.may_reap(InodeId(8), new_id, new_end, HOLD),
            "still on the old feed"
        );
        call(&feed, other, (new_id, new_end), report(true, &[], &[])).await;
        call(&feed, ME + 10, (new_id, new_end), report(true, &[], &[])).await;
        assert!(feed.may_reap(InodeId(8), new_id, new_end, HOLD));
    }

    #[tokio::test]
    async fn a_watcher_gets_the_changes_of_its_volume_after_its_position() {
        let feed = ChangeFeed::new();
        let first = feed
            .watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        assert!(!first.missed && first.changes.is_empty());
        feed.publish(VolumeId(2), None, vec![attrs(7)]);
        feed.publish(VolumeId(1), Some(ME), vec![attrs(6)]);
        feed.publish(VolumeId(1), Some(9), vec![attrs(8)]);
        let page = feed
            .watch(
                VolumeId(1),
                ME,
                first.feed,
                first.next,
                Duration::ZERO,
                None,
            )
            .await;
        assert_eq!(
            page.changes,
            vec![attrs(8)],
            "only its volume's changes, made by others"
        );
        assert_eq!(page.next, first.next + 3, "past the others too");
        assert!(feed.is_watched_by_others(Some(9)));
        assert!(!feed.is_watched_by_others(Some(ME)), "only ME watches");
        let empty = feed
            .watch(VolumeId(1), ME, page.feed, page.next, Duration::ZERO, None)
            .await;
        assert!(empty.changes.is_empty() && !empty.missed);
    }

    #[tokio::test]
    async fn a_waiting_watcher_wakes_when_a_change_comes() {
        let feed = std::sync::Arc::new(ChangeFeed::new());
        let start = feed
            .watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move {
                feed.watch(
                    VolumeId(1),
                    ME,
                    start.feed,
                    start.next,
                    Duration::from_secs(30),
                    None,
                )
                .await
            })
        };
        // The watcher may or may not be waiting yet: either way it must see the change.
        feed.publish(VolumeId(1), None, vec![attrs(3)]);
        let page = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("woken well before its wait ends")
            .unwrap();
        assert_eq!(page.changes.len(), 1);
    }

    #[tokio::test]
    async fn a_change_waits_until_a_holder_asks_from_past_it() {
        let feed = std::sync::Arc::new(ChangeFeed::new());
        let start = feed
            .watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        assert!(feed.follows(ME));
        assert_eq!(feed.delegation_holders(Some(9)), vec![ME]);
        assert!(feed.delegation_holders(Some(ME)).is_empty(), "not its own");
        let end = feed.publish(VolumeId(1), Some(9), vec![attrs(3)]);
        let mut waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.wait_taken(ME, end).await })
        };
        // A call from before the change does not take it.
        let page = feed
            .watch(
                VolumeId(1),
                ME,
                start.feed,
                start.next,
                Duration::ZERO,
                None,
            )
            .await;
        assert_eq!(page.changes, vec![attrs(3)]);
        let early = tokio::time::timeout(Duration::from_millis(200), &mut waiting).await;
        assert!(early.is_err(), "answered before the holder took the change");
        // The next call, from past it, does.
        feed.watch(VolumeId(1), ME, page.feed, page.next, Duration::ZERO, None)
            .await;
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered once taken")
            .unwrap();
        // A client that never watched holds nothing to wait for.
        tokio::time::timeout(Duration::from_secs(20), feed.wait_taken(77, end))
            .await
            .expect("nothing to wait for");
    }

    #[tokio::test]
    async fn a_holder_that_stops_watching_is_waited_for_no_longer() {
        let feed = std::sync::Arc::new(ChangeFeed::new());
        feed.watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        let end = feed.publish(VolumeId(1), Some(9), vec![attrs(3)]);
        let mut waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.wait_taken(ME, end).await })
        };
        let early = tokio::time::timeout(Duration::from_millis(200), &mut waiting).await;
        assert!(early.is_err(), "answered before the holder took the change");
        feed.forget(ME);
        let lapsed = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered once the holder left")
            .unwrap();
        assert!(!lapsed, "ended by the holder leaving, not by its lease");
        assert!(!feed.follows(ME));
        assert!(feed.delegation_holders(Some(9)).is_empty());
        // A call of its still on the way does not make it a holder again.
        assert!(feed.has_left(ME));
        feed.watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        assert!(!feed.follows(ME));
        assert!(feed.delegation_holders(Some(9)).is_empty());
    }

    #[tokio::test]
    async fn a_watcher_left_behind_or_on_another_feed_is_told_it_missed_changes() {
        let feed = ChangeFeed::new();
        let start = feed
            .watch(VolumeId(1), ME, 0, 0, Duration::ZERO, None)
            .await;
        for i in 0..CAPACITY as u64 + 1 {
            feed.publish(VolumeId(1), None, vec![attrs(i)]);
        }
        let behind = feed
            .watch(
                VolumeId(1),
                ME,
                start.feed,
                start.next,
                Duration::ZERO,
                None,
            )
            .await;
        assert!(behind.missed);
        feed.restart();
        let other = feed
            .watch(
                VolumeId(1),
                ME,
                behind.feed,
                behind.next,
                Duration::ZERO,
                None,
            )
            .await;
        assert!(other.missed && other.feed != behind.feed);
    }
}
