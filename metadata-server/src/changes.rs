//! The change feed: what each namespace mutation makes stale in the mounts' caches, kept in a
//! bounded ring that mounts read with a long poll (`WatchChanges`), so a rename, unlink or
//! write on one mount is dropped from another's kernel caches at once instead of when their
//! timeout runs out.
//!
//! The feed lives in the leader's memory. A mount that falls behind the ring, or asks a new
//! leader (whose feed has another id), is told it missed changes and drops everything it
//! caches; the caches' timeout stays the fallback for a change that is never told.

use dfs_common::proto::meta::{req, ChangePage, Invalidation, MetaRequest};
use dfs_common::{InodeId, VolumeId};
use std::collections::{HashMap, VecDeque};
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
/// Inodes whose volume is remembered at most (past this, the memory starts afresh).
const MAX_REMEMBERED_VOLUMES: usize = 65_536;
/// Watchers remembered at most (past this, those not seen lately are forgotten).
const MAX_WATCHERS: usize = 4096;

pub struct ChangeFeed {
    ring: Mutex<Ring>,
    /// The volume of inodes changes were recorded for (an inode never changes volume, and its
    /// number is never reused), so most changes need no store read to find it.
    volumes: Mutex<HashMap<InodeId, VolumeId>>,
    /// The position after the newest change: callers wait for it to pass theirs.
    head: tokio::sync::watch::Sender<u64>,
}

struct Ring {
    /// Random, and new whenever the feed restarts: positions of another feed mean nothing.
    id: u64,
    /// Position of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry>,
    /// Each watching client, and when it last asked.
    watchers: HashMap<u64, Instant>,
}

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
            }),
            volumes: Mutex::new(HashMap::new()),
            head: tokio::sync::watch::channel(0).0,
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
    }

    /// Whether a client other than `origin` asked for changes lately: otherwise the changes
    /// `origin` makes are not worth recording.
    pub fn is_watched_by_others(&self, origin: Option<u64>) -> bool {
        let ring = self.ring.lock().expect("change feed");
        ring.watchers
            .iter()
            .any(|(&w, at)| Some(w) != origin && at.elapsed() < WATCHED_FOR)
    }

    /// Records the changes of one mutation of `volume`, made by client `origin`.
    pub fn publish(&self, volume: VolumeId, origin: Option<u64>, what: Vec<Invalidation>) {
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
    ) -> ChangePage {
        let mut head = self.head.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
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
            tokio::time::sleep(GATHER).await;
        }
    }

    fn read(&self, volume: VolumeId, origin: u64, feed: u64, after: u64) -> ChangePage {
        let mut ring = self.ring.lock().expect("change feed");
        if ring.watchers.len() >= MAX_WATCHERS {
            ring.watchers.retain(|_, at| at.elapsed() < WATCHED_FOR);
        }
        if ring.watchers.len() < MAX_WATCHERS {
            ring.watchers.insert(origin, Instant::now());
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

    #[tokio::test]
    async fn a_watcher_gets_the_changes_of_its_volume_after_its_position() {
        let feed = ChangeFeed::new();
        let first = feed.watch(VolumeId(1), ME, 0, 0, Duration::ZERO).await;
        assert!(!first.missed && first.changes.is_empty());
        feed.publish(VolumeId(2), None, vec![attrs(7)]);
        feed.publish(VolumeId(1), Some(ME), vec![attrs(6)]);
        feed.publish(VolumeId(1), Some(9), vec![attrs(8)]);
        let page = feed
            .watch(VolumeId(1), ME, first.feed, first.next, Duration::ZERO)
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
            .watch(VolumeId(1), ME, page.feed, page.next, Duration::ZERO)
            .await;
        assert!(empty.changes.is_empty() && !empty.missed);
    }

    #[tokio::test]
    async fn a_waiting_watcher_wakes_when_a_change_comes() {
        let feed = std::sync::Arc::new(ChangeFeed::new());
        let start = feed.watch(VolumeId(1), ME, 0, 0, Duration::ZERO).await;
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move {
                feed.watch(
                    VolumeId(1),
                    ME,
                    start.feed,
                    start.next,
                    Duration::from_secs(30),
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
    async fn a_watcher_left_behind_or_on_another_feed_is_told_it_missed_changes() {
        let feed = ChangeFeed::new();
        let start = feed.watch(VolumeId(1), ME, 0, 0, Duration::ZERO).await;
        for i in 0..CAPACITY as u64 + 1 {
            feed.publish(VolumeId(1), None, vec![attrs(i)]);
        }
        let behind = feed
            .watch(VolumeId(1), ME, start.feed, start.next, Duration::ZERO)
            .await;
        assert!(behind.missed);
        feed.restart();
        let other = feed
            .watch(VolumeId(1), ME, behind.feed, behind.next, Duration::ZERO)
            .await;
        assert!(other.missed && other.feed != behind.feed);
    }
}
