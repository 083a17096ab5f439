//! Coherence with other mounts: a task follows the metadata server's change feed for the
//! mounted volume and drops from this mount's caches (the kernel's entries, attributes and
//! pages, and the mount's own) whatever another client changed, so a rename, unlink, chmod
//! or write elsewhere shows here at once rather than when the attribute timeout runs out.
//!
//! The timeout stays the fallback: for changes the feed missed (this mount fell behind, or a
//! new metadata leader started a new feed), the mount drops what it caches itself and the
//! kernel's entries age out.

use crate::client::Client;
use dfs_common::proto::meta::{req::OpenReport, Invalidation};
use dfs_common::{FsResult, InodeId};
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How long one call waits for changes: well inside the open delegations' lease, which each
/// answer renews.
const WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed call (the metadata server is away; calls retry on their own).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The caches a change is dropped from.
pub trait Caches: Send + Sync + 'static {
    /// The name `name` in `parent` may point elsewhere now.
    fn drop_entry(&self, parent: InodeId, name: &str);
    /// The inode's attributes changed, and with `data` its contents, in a change the feed
    /// holds before `before` (its id and a position).
    fn drop_inode(&self, ino: InodeId, data: bool, before: Position);
    /// Changes were missed: drop what can be dropped.
    fn drop_all(&self);
    /// The feed answered a call sent at `sent`: every change before it has been dropped.
    fn feed_whole(&self, sent: Instant);
    /// The feed failed to answer: changes elsewhere may go untold for now.
    fn feed_lost(&self);
    /// What to tell the metadata server of the files open here (every one with `all`, else
    /// what changed since the last report), so that it keeps them when they are unlinked
    /// elsewhere.
    fn open_report(&self, all: bool) -> OpenReport;
}

/// Where a mount stands in the change feed: the feed's id and the position to ask from next.
pub type Position = (u64, u64);

/// Makes this mount known to the metadata server before it serves its first request: its
/// first call for changes, answered at once (a new watcher starts at the feed's newest
/// position). From then on, a file it opens is kept for it when another mount unlinks it;
/// a mount the server had not heard from yet would lose it (see the server's orphans).
pub async fn register<C: Caches>(caches: &C, client: &Client, root: InodeId) -> FsResult<Position> {
    let report = caches.open_report(true);
    let sent = Instant::now();
    let page = client
        .watch_open(root, 0, 0, Duration::ZERO, report)
        .await?;
    // A new watcher has missed nothing: the feed answers for this mount from now on.
    caches.feed_whole(sent);
    Ok((page.feed, page.next))
}

/// Follows the change feed of the volume whose root is `root` until `caches` is gone, from
/// `start` if [`register`] gave it.
pub async fn follow<C: Caches>(
    caches: Weak<C>,
    client: Client,
    root: InodeId,
    start: Option<Position>,
) {
    let (mut feed, mut next) = start.unwrap_or((0, 0));
    // The server holds no report of this mount's open files yet (or lost it): send them all.
    let mut report_all = start.is_none();
    loop {
        let Some(report) = caches.upgrade().map(|c| c.open_report(report_all)) else {
            return;
        };
        // (A test holds the mount here, not watching, while changes happen elsewhere.)
        let sent = Instant::now();
        let page = match client.faults().hit("mount.watch_changes").await {
            Ok(()) => client.watch_open(root, feed, next, WAIT, report).await,
            Err(e) => Err(e),
        };
        let Some(caches) = caches.upgrade() else {
            return;
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!("following the change feed: {e}");
                // The report may or may not have arrived.
                report_all = true;
                caches.feed_lost();
                drop(caches);
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                continue;
            }
        };
        // Another feed (a restarted server, a new leader) knows nothing of this mount's
        // open files.
        report_all = page.feed != feed;
        (feed, next) = (page.feed, page.next);
        if page.missed {
            tracing::debug!("changes by other clients were missed: dropping cached state");
            caches.drop_all();
        }
        // The server leaves out this mount's own changes: its caches have them already.
        for change in page.changes {
            match change {
                Invalidation::Entry { parent, name } => caches.drop_entry(parent, &name),
                Invalidation::Inode { ino, data } => caches.drop_inode(ino, data, (feed, next)),
            }
        }
        caches.feed_whole(sent);
    }
}
