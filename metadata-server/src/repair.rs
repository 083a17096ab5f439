//! Self-healing, driven from the metadata server: a periodic scan of every block finds shards
//! on dead servers (or missing, or found corrupt), and asks live chunk servers to rebuild them,
//! fewest surviving shards first, a bounded number at a time and at a bounded rate. Each rebuilt
//! shard moves its placement in one command. The same scan collects garbage: blocks no extent
//! refers to, after a grace period, and blocks abandoned before their commit.
//!
//! Nothing here is durable state: after a restart the next scan finds the same work again, so
//! a repair interrupted by any crash resumes. A shard rebuilt but not yet moved to is an orphan
//! that its server's reconciliation deletes.

use crate::command::{Command, Op, Outcome};
use crate::committer::Committer;
use crate::membership::Membership;
use crate::placement::place;
use crate::store::schema::{decode, BlockRecord};
use crate::store::tables::ReadTables;
use crate::store::{self, DbResult};
use dfs_common::fault::Faults;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::proto::chunk::{ShardKey, ShardOwner, ShardSource};
use dfs_common::proto::meta::{BlockHealth, RepairProgress};
use dfs_common::{BlockId, FsError, FsResult, ServerId, Timestamp};
use redb::{Database, ReadableTable};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Time between scans.
    pub interval: Duration,
    /// Shards rebuilt at once.
    pub parallel: usize,
    /// Bytes per second rebuilt at most, so client I/O keeps going.
    pub rate: u64,
    /// Unreferenced blocks are deleted this long after they lost their last reference.
    pub gc_grace: Duration,
    /// Blocks allocated but never committed are deleted this long after allocation.
    pub pending_grace: Duration,
    /// Rebalance whenever shard counts are uneven, not only when asked (`dfs rebalance`).
    pub auto_rebalance: bool,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            interval: Duration::from_secs(10),
            parallel: 4,
            rate: 100 << 20,
            gc_grace: Duration::from_secs(600),
            pending_grace: Duration::from_secs(3600),
            auto_rebalance: false,
        }
    }
}

/// One shard to rebuild.
struct Job {
    key: ShardKey,
    rec: BlockRecord,
    /// Where the shard was placed (a dead server, or `ServerId::NONE`).
    from: ServerId,
    surviving: usize,
    /// Where it must go (rebalancing chooses by shard counts); else placement decides.
    target: Option<ServerId>,
}

pub struct Repair {
    db: Arc<Database>,
    committer: Committer,
    membership: Arc<Membership>,
    pool: Arc<ChunkPool>,
    config: RepairConfig,
    progress: Mutex<RepairProgress>,
    health: Mutex<BlockHealth>,
    /// Shards being rebuilt (block, index, target): not orphans yet, whatever the placement says.
    in_flight: Mutex<HashSet<(BlockId, u8, ServerId)>>,
    /// Shards placed per server, as of the last scan.
    placed: Mutex<HashMap<ServerId, u64>>,
    /// Wakes the loop for a pass before the interval ends.
    wake: tokio::sync::Notify,
    /// A rebalance was asked for and is not finished.
    rebalance: std::sync::atomic::AtomicBool,
    /// When each unreferenced block was first seen so by a scan, on the monotonic clock: its
    /// grace period counts from there, so a wall clock that jumps (either way) neither
    /// shortens nor stalls it. A restart starts every grace period again, which is safe.
    unreferenced_since: Mutex<HashMap<BlockId, Instant>>,
    /// When old duplicate-request records were last expired.
    calls_expired: Mutex<Option<Instant>>,
    faults: Faults,
}

/// How often old duplicate-request records are looked for.
const CALL_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// Shards per server the scan keeps as rebalancing candidates, per pass.
const MOVE_CANDIDATES: usize = 1024;

impl Repair {
    pub fn new(
        db: Arc<Database>,
        committer: Committer,
        membership: Arc<Membership>,
        pool: Arc<ChunkPool>,
        config: RepairConfig,
        faults: Faults,
    ) -> Self {
        Repair {
            db,
            committer,
            membership,
            pool,
            config,
            progress: Mutex::new(RepairProgress::default()),
            health: Mutex::new(BlockHealth::default()),
            in_flight: Mutex::new(HashSet::new()),
            placed: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            rebalance: std::sync::atomic::AtomicBool::new(false),
            unreferenced_since: Mutex::new(HashMap::new()),
            calls_expired: Mutex::new(None),
            faults,
        }
    }

    /// Starts moving shards toward even counts per server, until they are even.
    pub fn start_rebalance(&self) {
        self.rebalance
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.progress.lock().expect("progress lock").rebalancing = true;
        self.kick();
    }

    /// Shards placed per server, as of the last scan.
    pub fn placed(&self) -> HashMap<ServerId, u64> {
        self.placed.lock().expect("placed lock").clone()
    }

    /// Starts a pass soon (a drain began, say) instead of at the next interval.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    pub fn progress(&self) -> RepairProgress {
        self.progress.lock().expect("progress lock").clone()
    }

    pub fn health(&self) -> BlockHealth {
        self.health.lock().expect("health lock").clone()
    }

    /// Whether `server` is being given shard `key` by a rebuild in progress.
    pub fn is_rebuilding(&self, key: ShardKey, server: ServerId) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .contains(&(key.block, key.index, server))
    }

    /// Scans, repairs and collects until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = self.wake.notified() => {}
            }
            // Only the leader repairs: the others' view of the store may be behind.
            if self.committer.group().ensure_leader().is_err() {
                continue;
            }
            if let Err(e) = self.pass(&shutdown).await {
                tracing::warn!("repair pass failed: {e}");
            }
        }
    }

    /// One scan, then the repairs and collection it found.
    pub async fn pass(self: &Arc<Self>, shutdown: &CancellationToken) -> FsResult<()> {
        let live = self.membership.live_addrs();
        let draining: HashSet<ServerId> = live
            .keys()
            .copied()
            .filter(|&s| self.membership.is_draining(s))
            .collect();
        let (mut jobs, unreferenced, health, placed, candidates) = {
            let db = self.db.clone();
            let live: HashSet<ServerId> = live.keys().copied().collect();
            tokio::task::spawn_blocking(move || -> FsResult<_> {
                let tx = store::read(&db)?;
                scan(&ReadTables::open(&tx), &live, &draining)
            })
            .await
            .map_err(|e| FsError::io(format!("scan task: {e}")))??
        };
        let garbage = self.past_grace(unreferenced);
        *self.health.lock().expect("health lock") = health;
        // Rebalance only when nothing is lost or draining: real losses come first.
        let wanted =
            self.config.auto_rebalance || self.rebalance.load(std::sync::atomic::Ordering::SeqCst);
        if wanted && jobs.is_empty() {
            let placeable: Vec<ServerId> = self
                .membership
                .placeable()
                .into_iter()
                .map(|c| c.id)
                .collect();
            jobs = rebalance_moves(&placed, &placeable, candidates);
            if jobs.is_empty() {
                self.rebalance
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                self.progress.lock().expect("progress lock").rebalancing = false;
            }
        }
        *self.placed.lock().expect("placed lock") = placed;
        {
            let mut p = self.progress.lock().expect("progress lock");
            p.shards_left = jobs.len() as u64;
            p.scans += 1;
        }
        self.collect(garbage).await;
        self.expire_calls().await;
        self.rebuild_all(jobs, &live, shutdown).await;
        Ok(())
    }

    /// Rebuilds shards in the order given, `parallel` at a time, at most `rate` bytes/s.
    async fn rebuild_all(
        self: &Arc<Self>,
        jobs: Vec<Job>,
        live: &HashMap<ServerId, String>,
        shutdown: &CancellationToken,
    ) {
        let started = Instant::now();
        let mut bytes = 0u64;
        let mut running = JoinSet::new();
        // Targets chosen in this pass, so two lost shards of a block go to different servers.
        let mut chosen: HashMap<BlockId, Vec<ServerId>> = HashMap::new();
        for job in jobs {
            if shutdown.is_cancelled() {
                break;
            }
            while running.len() >= self.config.parallel.max(1) {
                running.join_next().await;
            }
            let taken = chosen.entry(job.key.block).or_default();
            let Some((target, sources)) = self.plan(&job, live, taken) else {
                continue;
            };
            taken.push(target);
            let shard_len = job.rec.policy.shard_len(job.rec.len.unwrap_or(0));
            // Keep to the rate: wait until the bytes so far fit the time so far.
            let due = Duration::from_secs_f64(bytes as f64 / self.config.rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            bytes += shard_len;
            self.in_flight.lock().expect("in-flight lock").insert((
                job.key.block,
                job.key.index,
                target,
            ));
            let this = self.clone();
            let addr = live.get(&target).cloned().unwrap_or_default();
            running.spawn(async move { this.rebuild_one(job, target, addr, sources).await });
        }
        while running.join_next().await.is_some() {}
        if bytes > 0 {
            self.progress.lock().expect("progress lock").busy_ms +=
                started.elapsed().as_millis() as u64;
        }
    }

    async fn rebuild_one(
        &self,
        job: Job,
        target: ServerId,
        addr: String,
        sources: Vec<ShardSource>,
    ) {
        let key = job.key;
        let shard_len = job.rec.policy.shard_len(job.rec.len.unwrap_or(0));
        let result = self.rebuild(job, target, &addr, sources).await;
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&(key.block, key.index, target));
        let mut p = self.progress.lock().expect("progress lock");
        match result {
            Ok(()) => {
                p.shards_done += 1;
                p.bytes_done += shard_len;
                p.shards_left = p.shards_left.saturating_sub(1);
                tracing::info!(block = %key.block, index = key.index, %target, "shard rebuilt");
            }
            Err(e) => {
                p.failures += 1;
                tracing::warn!(block = %key.block, index = key.index, %target, "repair failed: {e}");
            }
        }
    }

    /// Asks `target` to rebuild the shard, then moves the placement to it.
    async fn rebuild(
        &self,
        job: Job,
        target: ServerId,
        addr: &str,
        sources: Vec<ShardSource>,
    ) -> FsResult<()> {
        let len = job
            .rec
            .len
            .ok_or_else(|| FsError::invalid("block not committed"))?;
        let owner = ShardOwner {
            volume: job.rec.volume,
            policy: job.rec.policy,
            block_len: len,
        };
        self.pool
            .rebuild_shard(addr, job.key, owner, sources)
            .await?;
        let command = Command::internal(
            Timestamp::now(),
            Op::MoveShard {
                key: job.key,
                from: job.from,
                to: target,
            },
        );
        if let Err(e) = self.committer.submit(command).await {
            // The placement changed meanwhile: the new copy is not wanted.
            let _ = self.pool.delete_shard(addr, job.key).await;
            return Err(e);
        }
        // A shard moved off a live server (drain, rebalance) frees its space there at once;
        // a copy on a dead server goes when that server reconciles.
        if let Some(old) = self.membership.live_addrs().get(&job.from) {
            let _ = self.pool.delete_shard(old, job.key).await;
        }
        Ok(())
    }

    /// Chooses where to rebuild a shard and what to read it from; `None` if that is impossible
    /// now (too few shards left, no server to put it on).
    fn plan(
        &self,
        job: &Job,
        live: &HashMap<ServerId, String>,
        taken: &[ServerId],
    ) -> Option<(ServerId, Vec<ShardSource>)> {
        let sources: Vec<ShardSource> = job
            .rec
            .shards
            .iter()
            .enumerate()
            .filter(|&(i, s)| i != job.key.index as usize && live.contains_key(s))
            .map(|(i, s)| ShardSource {
                index: i as u8,
                addr: live[s].clone(),
            })
            .collect();
        if sources.len() < job.rec.policy.k() {
            return None;
        }
        let candidates: Vec<_> = self
            .membership
            .placeable()
            .into_iter()
            .filter(|c| live.contains_key(&c.id))
            .collect();
        let shard_len = job.rec.policy.shard_len(job.rec.len.unwrap_or(0));
        if let Some(target) = job.target {
            let usable = candidates.iter().any(|c| c.id == target)
                && !job.rec.shards.contains(&target)
                && !taken.contains(&target);
            return usable.then_some((target, sources));
        }
        let exclude: Vec<ServerId> = job.rec.shards.iter().chain(taken).copied().collect();
        match place(&candidates, 1, shard_len, rand::random(), &exclude) {
            Ok(p) => p.first().map(|&target| (target, sources)),
            Err(e) => {
                tracing::debug!(block = %job.key.block, "no server to rebuild onto: {e}");
                None
            }
        }
    }

    /// Forgets duplicate-request records of clients that went away, at most once an hour.
    async fn expire_calls(&self) {
        {
            let mut last = self.calls_expired.lock().expect("expiry lock");
            if last.is_some_and(|at| at.elapsed() < CALL_EXPIRY_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let command = Command::internal(Timestamp::now(), Op::ExpireCalls);
        if let Err(e) = self.committer.submit(command).await {
            tracing::warn!("expiring old call records: {e}");
        }
    }

    /// Of the unreferenced blocks a scan found, those unreferenced for their whole grace
    /// period (committed garbage: `gc_grace`; never committed: `pending_grace`), measured on
    /// the monotonic clock from the first scan that saw them so.
    fn past_grace(&self, unreferenced: Vec<(BlockId, BlockRecord)>) -> Vec<(BlockId, BlockRecord)> {
        let now = Instant::now();
        let mut since = self.unreferenced_since.lock().expect("grace lock");
        let seen: HashSet<BlockId> = unreferenced.iter().map(|(b, _)| *b).collect();
        // A block referenced again (or dropped) starts from scratch if it ever comes back.
        since.retain(|b, _| seen.contains(b));
        unreferenced
            .into_iter()
            .filter(|(block, rec)| {
                let first = *since.entry(*block).or_insert(now);
                let grace = if rec.len.is_some() {
                    self.config.gc_grace
                } else {
                    self.config.pending_grace
                };
                now.duration_since(first) >= grace
            })
            .collect()
    }

    /// Forgets collectable blocks, then deletes the shards of those the metadata store really
    /// dropped from the servers that are up (those that are not delete theirs when they
    /// reconcile). A block that gained a reference between the scan and the drop is kept, and
    /// so are its shards.
    async fn collect(&self, garbage: Vec<(BlockId, BlockRecord)>) {
        let live = self.membership.live_addrs();
        for batch in garbage.chunks(1024) {
            let blocks: Vec<BlockId> = batch.iter().map(|(b, _)| *b).collect();
            if let Err(e) = self.faults.hit("gc.before_drop").await {
                tracing::warn!("garbage collection failed: {e}");
                return;
            }
            let command = Command::internal(Timestamp::now(), Op::DropBlocks { blocks });
            let dropped: HashSet<BlockId> = match self.committer.submit(command).await {
                Ok(Outcome::Dropped(dropped)) => dropped.into_iter().collect(),
                Ok(other) => {
                    tracing::error!("garbage collection: unexpected reply {other:?}");
                    return;
                }
                Err(e) => {
                    tracing::warn!("garbage collection failed: {e}");
                    return;
                }
            };
            let mut deletes = JoinSet::new();
            for (block, rec) in batch.iter().filter(|(b, _)| dropped.contains(b)) {
                for (index, server) in rec.shards.iter().enumerate() {
                    let Some(addr) = live.get(server).cloned() else {
                        continue;
                    };
                    let pool = self.pool.clone();
                    let key = ShardKey {
                        block: *block,
                        index: index as u8,
                    };
                    deletes.spawn(async move { pool.delete_shard(&addr, key).await });
                }
                self.progress
                    .lock()
                    .expect("progress lock")
                    .blocks_collected += 1;
            }
            while deletes.join_next().await.is_some() {}
        }
    }
}

/// What a scan found: shards to rebuild or move (fewest surviving first, moves off draining
/// servers last), unreferenced blocks (collected once past their grace), health, shards placed per server, and per server some
/// shards of fully healthy blocks that rebalancing could move.
type ScanResult = (
    Vec<Job>,
    Vec<(BlockId, BlockRecord)>,
    BlockHealth,
    HashMap<ServerId, u64>,
    HashMap<ServerId, Vec<Job>>,
);

/// Moves that even out the shard counts: each takes a shard from a server above the mean to
/// the server with the fewest shards that holds none of that block, and only if that narrows
/// the gap between the two; none once the spread is within 5% of the mean (at least 2).
fn rebalance_moves(
    placed: &HashMap<ServerId, u64>,
    placeable: &[ServerId],
    candidates: HashMap<ServerId, Vec<Job>>,
) -> Vec<Job> {
    if placeable.len() < 2 {
        return Vec::new();
    }
    let mut count: HashMap<ServerId, u64> = placeable
        .iter()
        .map(|s| (*s, placed.get(s).copied().unwrap_or(0)))
        .collect();
    let total: u64 = count.values().sum();
    let mean = total as f64 / placeable.len() as f64;
    let tolerance = (mean * 0.05).max(2.0);
    let spread = |count: &HashMap<ServerId, u64>| {
        let max = count.values().max().copied().unwrap_or(0);
        let min = count.values().min().copied().unwrap_or(0);
        (max - min) as f64
    };
    if spread(&count) <= tolerance {
        return Vec::new();
    }
    // Fullest servers first.
    let mut sources: Vec<ServerId> = placeable.to_vec();
    sources.sort_by_key(|s| std::cmp::Reverse(count[s]));
    let mut moves = Vec::new();
    let mut candidates = candidates;
    for from in sources {
        for mut job in candidates.remove(&from).unwrap_or_default() {
            if (count[&from] as f64) <= mean {
                break;
            }
            let target = placeable
                .iter()
                .filter(|t| !job.rec.shards.contains(t))
                .min_by_key(|t| count[*t])
                .copied();
            let Some(target) = target else { continue };
            if count[&target] + 1 >= count[&from] {
                continue;
            }
            *count.get_mut(&from).expect("counted") -= 1;
            *count.get_mut(&target).expect("counted") += 1;
            job.target = Some(target);
            moves.push(job);
        }
    }
    moves
}

/// Reads every block: the shards to rebuild, block health, and what to collect.
fn scan(
    t: &ReadTables,
    live: &HashSet<ServerId>,
    draining: &HashSet<ServerId>,
) -> FsResult<ScanResult> {
    let mut movable: HashMap<ServerId, Vec<Job>> = HashMap::new();
    let mut jobs = Vec::new();
    let mut garbage = Vec::new();
    let mut health = BlockHealth::default();
    let mut placed: HashMap<ServerId, u64> = HashMap::new();
    for item in t.blocks.table()?.iter().db()? {
        let (block, value) = item.db()?;
        let block = BlockId(block.value());
        let rec: BlockRecord = decode(value.value())?;
        if rec.len.is_none() {
            health.pending += 1;
            if rec.refs == 0 {
                garbage.push((block, rec));
            }
            continue;
        }
        if rec.refs == 0 {
            health.garbage += 1;
            garbage.push((block, rec));
            continue;
        }
        if rec.is_inline() {
            // Replicated with the metadata: nothing to rebuild or move.
            health.healthy += 1;
            continue;
        }
        for s in &rec.shards {
            *placed.entry(*s).or_default() += 1;
        }
        let surviving = rec.shards.iter().filter(|s| live.contains(s)).count();
        if surviving == rec.shards.len() {
            health.healthy += 1;
            for (index, &server) in rec.shards.iter().enumerate() {
                let mine = movable.entry(server).or_default();
                if mine.len() < MOVE_CANDIDATES {
                    mine.push(Job {
                        key: ShardKey {
                            block,
                            index: index as u8,
                        },
                        rec: rec.clone(),
                        from: server,
                        surviving,
                        target: None,
                    });
                }
            }
        } else if surviving >= rec.policy.k() {
            health.degraded += 1;
        } else {
            health.unavailable += 1;
            // Nothing to rebuild from until servers come back.
            continue;
        }
        for (index, &server) in rec.shards.iter().enumerate() {
            // A shard on a draining server is readable, so it is moved after every real loss
            // (it sorts as if the block had one more shard than it has).
            let moving = draining.contains(&server);
            if !live.contains(&server) || moving {
                jobs.push(Job {
                    key: ShardKey {
                        block,
                        index: index as u8,
                    },
                    rec: rec.clone(),
                    from: server,
                    surviving: surviving + usize::from(moving),
                    target: None,
                });
            }
        }
    }
    jobs.sort_by_key(|j: &Job| (j.surviving, j.key.block, j.key.index));
    Ok((jobs, garbage, health, placed, movable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::{EcPolicy, VolumeId};

    /// Blocks of a 2+1 policy on servers 1..=3, a fourth server empty: moves fill server 4
    /// from the fullest, never onto a server already holding the block, and stop when even.
    #[test]
    fn rebalance_fills_the_empty_server_and_stops_when_even() {
        let servers: Vec<ServerId> = (1..=4).map(ServerId).collect();
        let policy = EcPolicy::new(2, 1).unwrap();
        let mut placed: HashMap<ServerId, u64> = HashMap::new();
        let mut candidates: HashMap<ServerId, Vec<Job>> = HashMap::new();
        for b in 0..30u64 {
            let shards = servers[..3].to_vec();
            let rec = BlockRecord {
                volume: VolumeId(1),
                policy,
                len: Some(1000),
                shards: shards.clone(),
                refs: 1,
                created: Timestamp::default(),
            };
            for (i, s) in shards.iter().enumerate() {
                *placed.entry(*s).or_default() += 1;
                candidates.entry(*s).or_default().push(Job {
                    key: ShardKey {
                        block: BlockId(b),
                        index: i as u8,
                    },
                    rec: rec.clone(),
                    from: *s,
                    surviving: 3,
                    target: None,
                });
            }
        }
        let moves = rebalance_moves(&placed, &servers, candidates);
        // 90 shards on 4 servers: 22 or 23 each, so about 22 move to server 4.
        assert!((21..=23).contains(&moves.len()), "{} moves", moves.len());
        let mut after = placed.clone();
        for m in &moves {
            let target = m.target.expect("rebalance names its target");
            assert_eq!(target, ServerId(4));
            assert!(!m.rec.shards.contains(&target));
            *after.get_mut(&m.from).unwrap() -= 1;
            *after.entry(target).or_default() += 1;
        }
        let (min, max) = (after.values().min().unwrap(), after.values().max().unwrap());
        assert!(max - min <= 2, "{after:?}");
        // Already even: nothing to do.
        let even: HashMap<ServerId, u64> = servers.iter().map(|s| (*s, 10)).collect();
        assert!(rebalance_moves(&even, &servers, HashMap::new()).is_empty());
    }
}
