//! How long the kernel may keep the names and attributes the mount hands it.
//!
//! While the mount follows the metadata server's change feed, another client's change is
//! dropped from the kernel at once, so names and attributes can be kept far longer than the
//! fallback timeout (`attr_timeout`), and a `stat`, `ls -l` or path walk over files already
//! seen costs no round trip. Two rules keep that safe:
//!
//! - A long timeout never reaches past the feed's last confirmation by more than the lease:
//!   a poll of the feed that returned whole at time T vouches for every change before T, so a
//!   grant made at time t lasts at most until T + lease. If the feed stops answering (the
//!   metadata server is unreachable from here, or the mount stalls), whatever the kernel keeps
//!   runs out within the lease of the last time the feed was known whole, and later grants
//!   fall back to `attr_timeout`.
//! - Every name and inode granted a long timeout is remembered, so that a feed that reports
//!   missed changes can drop all of them from the kernel (with an `attr_timeout` longer than
//!   the lease, every grant is). Past [`MAX_REMEMBERED`] names, long grants pause for one
//!   lease (those already made run out meanwhile) and the memory starts afresh.
//!
//! Directory listings follow the same rules, enforced where the kernel asks to open the
//! directory: the kernel may list it from the listing it keeps ([`Leases::keep_listing`])
//! only while the feed is confirmed, at most one lease after it last listed from the mount,
//! and only if the feed reported no change in it since ([`Leases::listing_changed`]). The
//! mount's own changes go through the kernel, which drops its listing itself.

use dfs_common::proto::meta::req::OPEN_DELEGATION_LEASE;
use dfs_common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names (and inodes) remembered at most: about 100 bytes each.
pub const MAX_REMEMBERED: usize = 262_144;

pub struct Leases {
    /// The timeout without a confirmed feed.
    fallback: Duration,
    /// The longest timeout with one (not longer than `fallback`: no long grants).
    lease: Duration,
    origin: Instant,
    /// Milliseconds after `origin` at which the feed was last known whole, plus one (0: not
    /// known whole now).
    confirmed: AtomicU64,
    granted: Mutex<Granted>,
}

/// What the kernel may hold with a long timeout.
#[derive(Default, Debug, PartialEq)]
pub struct Granted {
    /// Names by their directory (absent names too).
    pub names: HashMap<InodeId, HashSet<String>>,
    pub inodes: HashSet<InodeId>,
    /// Directories the kernel may list from its own copy, and when it last listed each from
    /// the mount.
    listings: HashMap<InodeId, Instant>,
    count: usize,
    /// Long grants wait until then (the memory filled up).
    paused_until: Option<Instant>,
}

impl Granted {
    fn remember(
        &mut self,
        now: Instant,
        lease: Duration,
        item: impl FnOnce(&mut Self) -> bool,
    ) -> bool {
        if let Some(until) = self.paused_until {
            if now < until {
                return false;
            }
            // Every grant remembered was made before the pause and has run out.
            *self = Granted::default();
        }
        if self.count >= MAX_REMEMBERED {
            self.paused_until = Some(now + lease);
            return false;
        }
        if item(self) {
            self.count += 1;
        }
        true
    }
}

impl Leases {
    pub fn new(fallback: Duration, lease: Duration) -> Self {
        Leases {
            fallback,
            lease,
            origin: Instant::now(),
            confirmed: AtomicU64::new(0),
            granted: Mutex::new(Granted::default()),
        }
    }

    /// The feed answered a poll sent at `sent` with every change since the previous one.
    pub fn confirm(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.confirmed.fetch_max(at, Ordering::Relaxed);
    }

    /// Whether open delegations hold now: the feed's last whole answer was to a call sent
    /// within [`OPEN_DELEGATION_LEASE`] (the lease option does not matter).
    pub fn delegations_hold(&self) -> bool {
        let Some(confirmed) = self.confirmed.load(Ordering::Relaxed).checked_sub(1) else {
            return false;
        };
        let end = self.origin + Duration::from_millis(confirmed) + OPEN_DELEGATION_LEASE;
        Instant::now() < end
    }

    /// The feed failed to answer: grants fall back until it answers again.
    pub fn lapse(&self) {
        self.confirmed.store(0, Ordering::Relaxed);
    }

    /// The timeout for the name `name` in `parent` (and the inode it names, if any).
    pub fn name(&self, parent: InodeId, name: &str, ino: Option<InodeId>) -> Duration {
        self.grant(|g| {
            let new_name = match g.names.get_mut(&parent) {
                Some(names) if names.contains(name) => false,
                Some(names) => names.insert(name.to_string()),
                None => g
                    .names
                    .insert(parent, HashSet::from([name.to_string()]))
                    .is_none(),
            };
            let new_inode = ino.is_some_and(|ino| g.inodes.insert(ino));
            new_name || new_inode
        })
    }

    /// The timeout for the attributes of `ino`.
    pub fn attr(&self, ino: InodeId) -> Duration {
        self.grant(|g| g.inodes.insert(ino))
    }

    /// Whether the kernel may list `dir` from the listing it keeps (an open with
    /// `FOPEN_KEEP_CACHE`). If not, the kernel drops that listing and lists from the mount
    /// again, and may keep the new one for one lease, until the feed reports a change in `dir`.
    pub fn keep_listing(&self, dir: InodeId) -> bool {
        let now = Instant::now();
        if self.left(now).is_none() {
            return false;
        }
        let mut granted = self.granted.lock().expect("leases lock");
        if let Some(&listed) = granted.listings.get(&dir) {
            if now < listed + self.lease && granted.paused_until.is_none() {
                return true;
            }
        }
        granted.remember(now, self.lease, |g| g.listings.insert(dir, now).is_none());
        false
    }

    /// The feed reported a change in `dir`: the kernel's listing goes at its next open.
    pub fn listing_changed(&self, dir: InodeId) {
        self.granted
            .lock()
            .expect("leases lock")
            .listings
            .remove(&dir);
    }

    /// Whether a grant made now would be long: the feed is confirmed within the lease.
    pub fn confirmed(&self) -> bool {
        self.left(Instant::now()).is_some()
    }

    /// How old an answer the mount kept (attributes a change or question of its own returned)
    /// may be when it answers the kernel: while the feed is confirmed, another client's change
    /// drops it from the mount as from the kernel, so it may serve for a lease, as a grant
    /// does; otherwise for the fallback timeout.
    pub fn kept_for(&self) -> Duration {
        match self.left(Instant::now()) {
            Some(_) => self.lease,
            None => self.fallback,
        }
    }

    /// Whether long grants are on at all (the lease is longer than the fallback).
    pub fn enabled(&self) -> bool {
        self.lease > self.fallback
    }

    /// Forgets every long grant, for the caller to drop from the kernel.
    pub fn take(&self) -> Granted {
        let mut granted = self.granted.lock().expect("leases lock");
        let paused_until = granted.paused_until.take();
        let taken = std::mem::take(&mut *granted);
        // A pause stays: grants made before it may still be alive and are forgotten.
        granted.paused_until = paused_until;
        taken
    }

    fn grant(&self, item: impl FnOnce(&mut Granted) -> bool) -> Duration {
        let now = Instant::now();
        let (ttl, pause) = match self.left(now) {
            Some(left) => (left, self.lease),
            // Long grants are off because the fallback is the longer (a mount with a long
            // `attr_timeout`): its grants are remembered all the same, so that a feed that
            // reports missed changes (a new leader) drops them from the kernel too.
            None if !self.enabled() => (self.fallback, self.fallback),
            None => return self.fallback,
        };
        let remembered = self
            .granted
            .lock()
            .expect("leases lock")
            .remember(now, pause, item);
        if remembered {
            ttl
        } else {
            self.fallback
        }
    }

    /// How long a grant made now may last, if longer than the fallback.
    fn left(&self, now: Instant) -> Option<Duration> {
        if self.lease <= self.fallback {
            return None;
        }
        let confirmed = self.confirmed.load(Ordering::Relaxed).checked_sub(1)?;
        let end = self.origin + Duration::from_millis(confirmed) + self.lease;
        let left = end.saturating_duration_since(now).min(self.lease);
        (left > self.fallback).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(1);
    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn without_a_confirmed_feed_every_grant_is_the_fallback_and_nothing_is_remembered() {
        let leases = Leases::new(SHORT, LONG);
        assert_eq!(leases.name(InodeId(1), "a", Some(InodeId(2))), SHORT);
        assert_eq!(leases.attr(InodeId(2)), SHORT);
        assert_eq!(leases.take(), Granted::default());
    }

    #[test]
    fn a_confirmed_feed_grants_until_the_lease_after_the_confirmation() {
        let leases = Leases::new(SHORT, LONG);
        leases.confirm(Instant::now());
        let ttl = leases.name(InodeId(1), "a", Some(InodeId(2)));
        assert!(
            ttl > LONG - Duration::from_secs(2) && ttl <= LONG,
            "{ttl:?}"
        );
        // A confirmation long ago leaves only what remains of its lease.
        let old = Leases::new(SHORT, LONG);
        let origin = old.origin;
        old.confirm(origin);
        let left = old.left(origin + Duration::from_secs(20)).unwrap();
        assert!(left <= Duration::from_secs(10), "{left:?}");
        assert_eq!(old.left(origin + Duration::from_secs(29) + SHORT), None);
        // A lapse ends long grants at once, and the mount's own long keeping.
        assert_eq!(leases.kept_for(), LONG);
        leases.lapse();
        assert_eq!(leases.attr(InodeId(3)), SHORT);
        assert_eq!(leases.kept_for(), SHORT);
    }

    #[test]
    fn with_a_fallback_longer_than_the_lease_every_grant_is_remembered_for_missed_changes() {
        let leases = Leases::new(LONG, SHORT);
        assert!(!leases.enabled());
        assert_eq!(leases.name(InodeId(1), "a", Some(InodeId(2))), LONG);
        assert_eq!(leases.attr(InodeId(7)), LONG);
        let taken = leases.take();
        assert_eq!(taken.names[&InodeId(1)], HashSet::from(["a".to_string()]));
        assert_eq!(taken.inodes, HashSet::from([InodeId(2), InodeId(7)]));
        // Still no listing kept by the kernel: that needs the feed's lease.
        leases.confirm(Instant::now());
        assert!(!leases.keep_listing(InodeId(5)) && !leases.keep_listing(InodeId(5)));
    }

    #[test]
    fn what_was_granted_long_is_handed_back_once() {
        let leases = Leases::new(SHORT, LONG);
        leases.confirm(Instant::now());
        leases.name(InodeId(1), "a", Some(InodeId(2)));
        leases.name(InodeId(1), "gone", None);
        leases.attr(InodeId(7));
        let taken = leases.take();
        assert_eq!(
            taken.names[&InodeId(1)],
            HashSet::from(["a".to_string(), "gone".to_string()])
        );
        assert_eq!(taken.inodes, HashSet::from([InodeId(2), InodeId(7)]));
        assert_eq!(leases.take(), Granted::default());
    }

    #[test]
    fn a_listing_is_kept_from_the_open_after_it_was_listed_until_a_change_or_a_lapse() {
        let leases = Leases::new(SHORT, LONG);
        let dir = InodeId(5);
        // No confirmed feed: never kept, and nothing remembered.
        assert!(!leases.keep_listing(dir));
        assert!(!leases.keep_listing(dir));
        leases.confirm(Instant::now());
        // The first open lists from the mount; the next ones keep that listing.
        assert!(!leases.keep_listing(dir));
        assert!(leases.keep_listing(dir));
        assert!(leases.keep_listing(dir));
        // A change reported in the directory: listed afresh once, then kept again.
        leases.listing_changed(dir);
        assert!(!leases.keep_listing(dir));
        assert!(leases.keep_listing(dir));
        // Missed changes: every listing goes.
        leases.take();
        assert!(!leases.keep_listing(dir));
        assert!(leases.keep_listing(dir));
        // A lapse of the feed: not kept while it lasts.
        leases.lapse();
        assert!(!leases.keep_listing(dir));
        // A listing is kept for one lease after it was listed, no longer.
        leases.confirm(Instant::now());
        let listed = Instant::now() - LONG;
        leases.granted.lock().unwrap().listings.insert(dir, listed);
        assert!(!leases.keep_listing(dir));
        assert!(leases.keep_listing(dir));
        // Without long grants there is nothing to keep.
        let off = Leases::new(SHORT, SHORT);
        off.confirm(Instant::now());
        assert!(!off.enabled());
        assert!(!off.keep_listing(dir) && !off.keep_listing(dir));
    }

    #[test]
    fn a_full_memory_pauses_long_grants_for_one_lease_then_starts_afresh() {
        let leases = Leases::new(SHORT, LONG);
        leases.confirm(Instant::now());
        for i in 0..MAX_REMEMBERED as u64 {
            assert!(leases.attr(InodeId(i + 10)) > SHORT);
        }
        assert_eq!(leases.attr(InodeId(1)), SHORT);
        let now = Instant::now();
        let mut granted = leases.granted.lock().unwrap();
        let until = granted.paused_until.expect("paused");
        assert!(until > now + LONG - Duration::from_secs(2));
        // Still paused just before the end; afresh after it.
        assert!(!granted.remember(until - SHORT, LONG, |g| g.inodes.insert(InodeId(1))));
        assert!(granted.remember(until, LONG, |g| g.inodes.insert(InodeId(1))));
        assert_eq!(granted.count, 1);
        assert_eq!(granted.inodes, HashSet::from([InodeId(1)]));
    }
}
