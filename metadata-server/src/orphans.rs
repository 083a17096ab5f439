//! Files unlinked while a mount has them open.
//!
//! POSIX keeps a file whose last name goes until its last descriptor closes, and here the
//! descriptors may be on other mounts: a reader on one host goes on reading a log or a config
//! file that another host removes or replaces with a rename. So every unlink and rename a
//! client sends is applied as a `KeepOrphans` command: a regular file that loses its last
//! name becomes an orphan ([`keep`]): no name, its usage given back to the volume at once, its
//! inode and data kept in the `orphans` table, readable and writable through the descriptors
//! already open.
//!
//! The leader's [`Reaper`] frees an orphan (`ReapOrphans`, [`reap`]) once no mount can still
//! have it open: every mount that reports its open files (with its calls for changes, see
//! [`crate::changes::ChangeFeed::may_reap`]) has called again since the orphaning change was
//! published, so its report covers every open it made before it learnt of the change, and none
//! reports the file open (a file it opened or created through a call counts as reported until
//! its reports can name it, and so does one whose open delegation lapsed with the change: it
//! may have reopened it without a call). A mount that has not called for the delegation lapse (crashed, cut
//! off, paused) is not waited for, but the files its last report named open are kept for the
//! orphan hold ([`DEFAULT_HOLD`], `--orphan-hold-secs`) after its last call: a mount back from
//! a network cut or a paused VM goes on using the temporary files it unlinked. Past the hold
//! they are freed and its descriptors of them fail, as NFS's do after a lease is lost; a crashed
//! mount's orphans hold their disk space (not their quota) that long. A new leader, or a
//! restarted server, knows no mount's open files, nor which mounts there are: the orphans it
//! finds wait the hold too (at least [`STARTUP_GRACE`]), so that a mount cut off across the
//! restart keeps them as it would have without one. So do the orphans it makes during that
//! time, when the store holds a volume (else no mount can exist yet): a mount it has not heard
//! from may have them open (its first call, which reports every file it has open, may come
//! seconds later, or after a network cut).

use crate::changes::ChangeFeed;
use crate::command::Outcome;
use crate::layout::RefDelta;
use crate::state_machine::purge_inode;
use crate::store::schema::InodeRecord;
use crate::store::tables::{get_inode, ReadTables, WriteTables};
use crate::store::DbResult;
use crate::volumes;
use dfs_common::{FsError, FsResult, InodeId};
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Orphans one `ReapOrphans` command frees at most: bounds the command and its transaction.
pub const MAX_REAP: usize = 256;
/// How long the orphans a new leader finds wait at least for the mounts to report their open
/// files.
pub const STARTUP_GRACE: Duration = Duration::from_secs(20);
/// How long after its last call a mount keeps the orphans it reported open, by default.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);

/// Keeps `ino`, a regular file whose last name just went (`rec`, with no links left), as an
/// orphan: its usage goes back to the volume now, its inode and data stay.
pub fn keep(t: &mut WriteTables, ino: InodeId, rec: &InodeRecord) -> FsResult<()> {
    t.put_inode(ino, rec)?;
    volumes::charge(t, rec.volume, volumes::size_delta(rec.size, 0), -1)?;
    t.orphans.table()?.insert(ino.0, rec.size).db()?;
    t.orphaned.push(ino);
    Ok(())
}

/// Frees the orphans among `inos`; others (freed already, or never orphans) are left alone.
pub fn reap(t: &mut WriteTables, inos: &[InodeId]) -> FsResult<Outcome> {
    if inos.len() > MAX_REAP {
        return Err(FsError::invalid(format!(
            "{} orphans to free in one command, at most {MAX_REAP}",
            inos.len()
        )));
    }
    let mut refs = RefDelta::default();
    for &ino in inos {
        let given_back = t.orphans.table()?.remove(ino.0).db()?.map(|v| v.value());
        let Some(given_back) = given_back else {
            continue;
        };
        // Gone with its volume (a deleted volume takes its inodes, orphans included).
        let rec = match get_inode(t.inodes.table()?, ino) {
            Ok(rec) => rec,
            Err(FsError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        if rec.nlink > 0 {
            continue;
        }
        // Writes through open descriptors since it became an orphan were charged: given back.
        volumes::charge(t, rec.volume, volumes::size_delta(rec.size, given_back), 0)?;
        purge_inode(t, ino, &mut refs)?;
    }
    refs.apply(t)?;
    Ok(Outcome::Done)
}

/// Every orphan in the store.
pub fn all(t: &ReadTables) -> FsResult<Vec<InodeId>> {
    let mut found = Vec::new();
    for item in t.orphans.table()?.iter().db()? {
        found.push(InodeId(item.db()?.0.value()));
    }
    Ok(found)
}

/// The orphans a leader waits to free, with what each waits for.
pub struct Reaper {
    pending: Mutex<HashMap<InodeId, Since>>,
    /// How long after its last call a mount keeps the orphans it reported open.
    hold: Duration,
    /// Told when orphans arrive, so an idle reaper sleeps instead of polling.
    arrived: tokio::sync::Notify,
    /// Until then, orphans made wait as those found at the take-over do: mounts this leader
    /// has not heard from yet may have them open.
    unknown_mounts_until: Mutex<Option<Instant>>,
}

/// When an orphan was made, in the change feed's terms.
#[derive(Clone, Copy, Debug)]
struct Since {
    feed: u64,
    /// The position after the change that orphaned it.
    position: u64,
    /// Not freed before then (orphans a new leader found).
    not_before: Option<Instant>,
}

impl Reaper {
    pub fn new(hold: Duration) -> Self {
        Reaper {
            pending: Mutex::default(),
            hold,
            arrived: tokio::sync::Notify::new(),
            unknown_mounts_until: Mutex::new(None),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, Since>> {
        self.pending.lock().expect("orphans")
    }

    /// Notes orphans made by a change published before `position` of feed `feed`.
    pub fn track(&self, inos: &[InodeId], feed: u64, position: u64) {
        let not_before = self
            .unknown_mounts_until
            .lock()
            .expect("orphans")
            .filter(|&until| Instant::now() < until);
        let mut pending = self.pending();
        for &ino in inos {
            let since = Since {
                feed,
                position,
                not_before,
            };
            let entry = pending.entry(ino).or_insert(since);
            // Tracked twice (a retried call): the later position is the safe one.
            if entry.feed != feed || entry.position < position {
                *entry = Since {
                    not_before: entry.not_before.max(not_before),
                    ..since
                };
            }
        }
        drop(pending);
        self.arrived.notify_one();
    }

    /// Starts afresh from the orphans in the store, for a new leader on feed `feed`: they
    /// wait the hold (at least [`STARTUP_GRACE`]) for the mounts to report their open files,
    /// and so do those made meanwhile if `mounts_may_exist` (the store holds a volume).
    pub fn reload(&self, orphans: Vec<InodeId>, feed: u64, mounts_may_exist: bool) {
        let not_before = Some(Instant::now() + self.hold.max(STARTUP_GRACE));
        *self.unknown_mounts_until.lock().expect("orphans") =
            not_before.filter(|_| mounts_may_exist);
        let mut pending = self.pending();
        pending.clear();
        for ino in orphans {
            let since = Since {
                feed,
                position: 0,
                not_before,
            };
            pending.insert(ino, since);
        }
        drop(pending);
        self.arrived.notify_one();
    }

    /// Returns once there are orphans to wait for: at once if some are waiting, else when
    /// the next is tracked or reloaded.
    pub async fn work(&self) {
        loop {
            let arrived = self.arrived.notified();
            if !self.pending().is_empty() {
                return;
            }
            arrived.await;
        }
    }

    /// Up to [`MAX_REAP`] orphans that no mount can have open any more.
    pub fn ready(&self, changes: &ChangeFeed) -> Vec<InodeId> {
        let now = Instant::now();
        let pending = self.pending();
        pending
            .iter()
            .filter(|(_, s)| s.not_before.is_none_or(|t| now >= t))
            .filter(|(&ino, s)| changes.may_reap(ino, s.feed, s.position, self.hold))
            .map(|(&ino, _)| ino)
            .take(MAX_REAP)
            .collect()
    }

    /// Forgets every orphan: this member no longer leads.
    pub fn clear(&self) {
        self.pending().clear();
    }

    /// Forgets orphans that were freed.
    pub fn freed(&self, inos: &[InodeId]) {
        let mut pending = self.pending();
        for ino in inos {
            pending.remove(ino);
        }
    }

    /// Orphans waiting to be freed.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.pending().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
    use crate::store::tables::get_volume_state;
    use crate::testing::{make_node, run, store_with_volume};
    use dfs_common::model::FileKind;
    use dfs_common::Timestamp;
    use redb::{Database, ReadableDatabase};

    /// A file `name` in `dir` holding `len` bytes kept inline.
    fn file(db: &Database, dir: InodeId, name: &str, len: u64) -> InodeId {
        let Ok(Outcome::Node { ino, .. }) = run(db, make_node(dir, name, FileKind::File)) else {
            panic!("{name} not made")
        };
        append(db, ino, len).unwrap();
        ino
    }

    fn append(db: &Database, ino: InodeId, len: u64) -> FsResult<Outcome> {
        let write = Op::KeepInline {
            ino,
            pieces: vec![(0, len)],
            data: vec![7; len as usize],
            mtime: Timestamp { secs: 1, nanos: 0 },
            append: true,
        };
        run(db, write)
    }

    fn keeping(op: Op) -> Op {
        Op::KeepOrphans(Box::new(op))
    }

    fn unlink(parent: InodeId, name: &str) -> Op {
        Op::Unlink {
            parent,
            name: name.into(),
        }
    }

    /// (inode's links if it exists, whether it is an orphan, its extents, the volume's bytes
    /// and inodes).
    fn state(db: &Database, ino: InodeId) -> (Option<u32>, bool, usize, u64, u64) {
        let tx = db.begin_read().unwrap();
        let t = ReadTables::open(&tx);
        let links = get_inode(t.inodes.table().unwrap(), ino)
            .ok()
            .map(|r| r.nlink);
        let orphan = t.orphans.table().unwrap().get(ino.0).unwrap().is_some();
        let extents = t
            .extents
            .table()
            .unwrap()
            .range((ino.0, 0)..(ino.0 + 1, 0))
            .unwrap()
            .count();
        let volume =
            get_volume_state(t.volume_state.table().unwrap(), dfs_common::VolumeId(1)).unwrap();
        (links, orphan, extents, volume.bytes, volume.inodes)
    }

    #[test]
    fn a_file_losing_its_last_name_is_kept_until_reaped_and_gives_its_usage_back_at_once() {
        let (_dir, db, root) = store_with_volume();
        let f = file(&db, root, "f", 100);
        let g = file(&db, root, "g", 10);
        let h = file(&db, root, "h", 1000);
        assert_eq!(state(&db, f), (Some(1), false, 1, 1110, 3));

        // Unlinked: no name, no usage, but the inode and its data stay.
        assert_eq!(
            run(&db, keeping(unlink(root, "f"))),
            Ok(Outcome::KeptOrphans {
                outcome: Box::new(Outcome::Done),
                orphans: vec![f],
            })
        );
        assert_eq!(state(&db, f), (Some(0), true, 1, 1010, 2));
        // Written through a descriptor still open: charged; no new name can be made for it.
        append(&db, f, 50).unwrap();
        assert_eq!(state(&db, f), (Some(0), true, 2, 1060, 2));
        let link = Op::Link {
            ino: f,
            new_parent: root,
            new_name: "back".into(),
        };
        assert_eq!(run(&db, link), Err(FsError::NotFound));

        // Replaced by a rename: the same.
        let over = Op::Rename {
            parent: root,
            name: "g".into(),
            new_parent: root,
            new_name: "h".into(),
            flags: 0,
        };
        assert_eq!(
            run(&db, keeping(over)),
            Ok(Outcome::KeptOrphans {
                outcome: Box::new(Outcome::Renamed {
                    touched: vec![g, h]
                }),
                orphans: vec![h],
            })
        );
        assert_eq!(state(&db, h), (Some(0), true, 1, 60, 1));

        // Freed: the orphans only (the root is not one), with what was charged since.
        let reap = Op::ReapOrphans {
            inos: vec![f, h, root, f],
        };
        assert_eq!(run(&db, reap), Ok(Outcome::Done));
        assert_eq!(state(&db, f), (None, false, 0, 10, 1));
        assert_eq!(state(&db, h), (None, false, 0, 10, 1));
        assert_eq!(state(&db, g).0, Some(1));
        assert_eq!(state(&db, root).0, Some(2));
    }

    #[test]
    fn only_regular_files_unlinked_by_a_keeping_command_become_orphans() {
        let (_dir, db, root) = store_with_volume();
        // Without the wrapper (an older leader's command), a file goes at once.
        let f = file(&db, root, "f", 100);
        run(&db, unlink(root, "f")).unwrap();
        assert_eq!(state(&db, f), (None, false, 0, 0, 0));
        // Nothing but a file is kept: a symlink or a device has no data to read.
        let Ok(Outcome::Node { ino: dev, .. }) = run(&db, make_node(root, "d", FileKind::Fifo))
        else {
            panic!("fifo not made")
        };
        let kept = run(&db, keeping(unlink(root, "d")));
        assert!(matches!(kept, Ok(Outcome::KeptOrphans { orphans, .. }) if orphans.is_empty()));
        assert_eq!(state(&db, dev), (None, false, 0, 0, 0));
        // A file with another name keeps living by it.
        let g = file(&db, root, "g", 5);
        let link = Op::Link {
            ino: g,
            new_parent: root,
            new_name: "g2".into(),
        };
        run(&db, link).unwrap();
        run(&db, keeping(unlink(root, "g"))).unwrap();
        assert_eq!(state(&db, g), (Some(1), false, 1, 5, 1));

        // Only unlinks and renames are wrapped, and a reap is bounded.
        let mkdir = keeping(make_node(root, "x", FileKind::Dir));
        assert!(matches!(run(&db, mkdir), Err(FsError::Invalid(_))));
        let wrapped_twice = keeping(keeping(unlink(root, "g2")));
        assert!(matches!(run(&db, wrapped_twice), Err(FsError::Invalid(_))));
        let many = Op::ReapOrphans {
            inos: vec![g; MAX_REAP + 1],
        };
        assert!(matches!(run(&db, many), Err(FsError::Invalid(_))));
        assert_eq!(state(&db, g).0, Some(1));
    }

    /// fsck: an orphan is a file with no name that is listed as one; a file with no name that
    /// is not would never be freed, and is reported.
    #[test]
    fn fsck_reports_a_file_with_no_name_that_is_not_kept_as_an_orphan() {
        use crate::store::tables::ReadTables;
        use std::collections::HashSet;
        let (_dir, db, root) = store_with_volume();
        let f = file(&db, root, "f", 100);
        run(&db, keeping(unlink(root, "f"))).unwrap();
        let fsck = || {
            let read = db.begin_read().unwrap();
            crate::fsck::check_page(&ReadTables::open(&read), "v", None, &HashSet::new()).unwrap()
        };
        assert_eq!(fsck().problems, Vec::new(), "an orphan is no problem");

        let tx = db.begin_write().unwrap();
        tx.open_table(crate::store::schema::ORPHANS)
            .unwrap()
            .remove(f.0)
            .unwrap();
        tx.commit().unwrap();
        let problems = fsck().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].ino, f);
    }

    #[test]
    fn a_new_leader_waits_out_the_grace_for_the_orphans_it_finds() {
        let reaper = Reaper::new(DEFAULT_HOLD);
        let feed = ChangeFeed::new();
        let (id, end) = feed.position();
        reaper.reload(vec![InodeId(7)], id, false);
        assert!(reaper.ready(&feed).is_empty(), "within the grace");
        reaper.track(&[InodeId(8)], id, end);
        reaper.track(&[InodeId(8)], id, end);
        assert_eq!(reaper.ready(&feed), vec![InodeId(8)], "no mount reports");
        reaper.freed(&[InodeId(8)]);
        assert_eq!(reaper.waiting(), 1);
    }

    /// A leader of a store that holds volumes may not have heard yet from every mount: what
    /// they have open is not known, so the orphans made in the grace wait it out too.
    #[test]
    fn orphans_made_before_every_mount_can_have_reported_wait_the_grace() {
        let reaper = Reaper::new(Duration::from_millis(300));
        let feed = ChangeFeed::new();
        let (id, end) = feed.position();
        reaper.reload(Vec::new(), id, true);
        reaper.track(&[InodeId(8)], id, end);
        assert!(reaper.ready(&feed).is_empty(), "made within the grace");
        assert!(
            STARTUP_GRACE > Duration::from_millis(300),
            "the grace is the longer"
        );
        reaper.reload(Vec::new(), id, false);
        reaper.track(&[InodeId(9)], id, end);
        assert_eq!(reaper.ready(&feed), vec![InodeId(9)], "no volume, no mount");
    }

    /// An idle reaper sleeps until an orphan is tracked; one that lost the lead forgets its
    /// orphans and sleeps again.
    #[tokio::test(start_paused = true)]
    async fn an_idle_reaper_sleeps_until_an_orphan_arrives() {
        let reaper = std::sync::Arc::new(Reaper::new(DEFAULT_HOLD));
        let feed = ChangeFeed::new();
        let (id, end) = feed.position();
        let idle = tokio::time::timeout(Duration::from_secs(3600), reaper.work()).await;
        assert!(idle.is_err(), "work with no orphans");

        let waiter = tokio::spawn({
            let reaper = reaper.clone();
            async move { reaper.work().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        reaper.track(&[InodeId(8)], id, end);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken by the orphan")
            .unwrap();
        reaper.work().await;

        reaper.clear();
        let idle = tokio::time::timeout(Duration::from_secs(3600), reaper.work()).await;
        assert!(idle.is_err(), "work after the orphans were forgotten");
        reaper.reload(vec![InodeId(7)], id, false);
        reaper.work().await;
    }
}
