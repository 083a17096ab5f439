//! Writing one block: ask for a placement, encode k+m shards, send them in parallel, and place
//! again any shard whose server fails. With too few servers up, a block may go out with shards
//! missing, as long as [`EcPolicy::min_write_shards`] of them are stored (all of them where the
//! volume requires full writes); repair restores the rest. The block becomes visible only when a later commit refers to it; a crash before that
//! leaves unreferenced shards, never a torn file.
//!
//! [`EcPolicy::min_write_shards`]: dfs_common::EcPolicy::min_write_shards

use super::Client;
use dfs_common::proto::chunk::{ShardKey, ShardOwner};
use dfs_common::proto::meta::{req, BlockPlacement, NewExtent, ShardLocation};
use dfs_common::{FsError, FsResult, InodeId, ServerId, VolumeId};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Servers tried per shard before the block write fails.
const ATTEMPTS_PER_SHARD: usize = 3;

/// Writes `data` as one new block holding the file ranges `pieces` (file offset, length),
/// laid end to end in `data`: many small runs of a file share one block, and so one set of
/// shard writes.
pub async fn upload_block(
    client: Client,
    ino: InodeId,
    volume: VolumeId,
    pieces: Vec<(u64, u64)>,
    data: Vec<u8>,
) -> FsResult<Vec<NewExtent>> {
    debug_assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), data.len() as u64);
    let placement = placement_for(&client, ino, volume).await?;
    let codec = client.codec(placement.policy)?;
    let block_len = data.len() as u64;
    // In place: the data stays in its buffer and the parity goes after it (a large buffer
    // grows by remapping, not copying).
    let encoded = codec.encode_owned(data);
    let owner = ShardOwner {
        volume: placement.volume,
        policy: placement.policy,
        block_len,
    };
    let needed = placement.min_shards as usize;
    let skipped = slow_to_skip(&client, &placement.shards, needed);
    let mut missing_shards = 0u32;
    let (give_up, given_up) = watch::channel(false);
    let mut sends = JoinSet::new();
    for (index, location) in placement.shards.iter().cloned().enumerate() {
        if skipped[index] {
            client
                .inner
                .shard_writes_left
                .fetch_add(1, Ordering::Relaxed);
            missing_shards |= 1 << index;
            continue;
        }
        let client = client.clone();
        let key = ShardKey {
            block: placement.block,
            index: index as u8,
        };
        let shard = encoded.shard(index);
        let given_up = given_up.clone();
        sends.spawn(async move {
            let stored = put_with_retry(&client, key, owner, shard, location, given_up).await?;
            Ok::<_, FsError>((index, stored))
        });
    }
    let started = Instant::now();
    let mut stragglers_until = None;
    let mut stored = 0;
    loop {
        let next = match stragglers_until {
            Some(deadline) if !*give_up.borrow() => {
                match tokio::time::timeout_at(deadline, sends.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        give_up.send_replace(true);
                        continue;
                    }
                }
            }
            _ => sends.join_next().await,
        };
        let Some(result) = next else {
            break;
        };
        let (index, was_stored) =
            result.map_err(|e| FsError::io(format!("shard upload task: {e}")))??;
        if was_stored {
            stored += 1;
        } else {
            missing_shards |= 1 << index;
        }
        if stored >= needed && stragglers_until.is_none() {
            stragglers_until =
                Some(tokio::time::Instant::now() + straggler_grace(started.elapsed()));
        }
    }
    if stored < needed {
        return Err(FsError::unavailable(format!(
            "stored only {stored} of the {} shards of block {} ({needed} needed): too few chunk servers up",
            placement.policy.total(),
            placement.block
        )));
    }
    Ok(NewExtent::packed(
        placement.block,
        block_len,
        missing_shards,
        pieces,
    ))
}

/// How long shard writes still going may take once enough of a block's shards are stored,
/// after `took` for those: a server that stopped answering without closing its connection
/// (frozen, overloaded, cut off one way) would otherwise hold every write for the transfer
/// timeout until the metadata server marks it down. Its shard is left missing, for repair.
fn straggler_grace(took: Duration) -> Duration {
    (took * 4).max(MIN_STRAGGLER_GRACE)
}

/// The least time given to a block's last shard writes (see [`straggler_grace`]): well above
/// a healthy server's time for a shard on a busy host.
const MIN_STRAGGLER_GRACE: Duration = Duration::from_secs(2);

/// Which shards of a placement go unwritten because their servers were just too slow or
/// failed (suspects: the chunk pool remembers such a server for 10 s): all of them when the
/// others are `needed` or more, none otherwise. A block then waits for no server it would
/// likely have to leave behind anyway; repair writes the missing shards later.
fn slow_to_skip(client: &Client, shards: &[ShardLocation], needed: usize) -> Vec<bool> {
    let chunks = &client.inner.chunks;
    let suspect: Vec<bool> = shards
        .iter()
        .map(|l| l.server != ServerId::NONE && chunks.is_suspect(&l.addr))
        .collect();
    let others = shards
        .iter()
        .zip(&suspect)
        .filter(|(l, &suspect)| l.server != ServerId::NONE && !suspect)
        .count();
    if others >= needed {
        suspect
    } else {
        vec![false; shards.len()]
    }
}

/// A placement for a block of file `ino` in `volume`: a spare one when ready, else one asked
/// for now; fetches spares for the uploads after it (see [`spare_blocks`](super::spare_blocks)).
async fn placement_for(
    client: &Client,
    ino: InodeId,
    volume: VolumeId,
) -> FsResult<BlockPlacement> {
    let taken = client.inner.spare_blocks.take(volume, Instant::now());
    for _ in 0..taken.fetch {
        let client = client.clone();
        tokio::spawn(async move {
            let made = Instant::now();
            let fetched = client.call(req::AllocateBlock { ino }).await;
            if let Err(e) = &fetched {
                tracing::debug!(%ino, "fetching a spare block placement failed: {e}");
            }
            client
                .inner
                .spare_blocks
                .fetched(volume, fetched.ok(), made);
        });
    }
    match taken.placement {
        Some(placement) => Ok(placement),
        None => client.call(req::AllocateBlock { ino }).await,
    }
}

/// Sends one shard, placing it again when its server fails, on up to [`ATTEMPTS_PER_SHARD`]
/// servers, until `given_up` turns true (the block has enough shards, and this one is late).
/// Returns whether it was stored; one that was not goes into the commit's `missing_shards`,
/// so the block record never names a server that lacks it.
async fn put_with_retry(
    client: &Client,
    key: ShardKey,
    owner: ShardOwner,
    shard: bytes::Bytes,
    mut location: ShardLocation,
    mut given_up: watch::Receiver<bool>,
) -> FsResult<bool> {
    for attempt in 1..=ATTEMPTS_PER_SHARD {
        if location.server == ServerId::NONE {
            return Ok(false);
        }
        let cap = location.cap.ok_or_else(|| {
            FsError::protocol(format!(
                "placement of shard {}/{} carries no capability",
                key.block, key.index
            ))
        })?;
        let put = async {
            let faults = &client.inner.options.faults;
            if faults.is_enabled() {
                faults
                    .hit(&format!("client.put_shard.{}", key.index))
                    .await?;
            }
            client
                .inner
                .chunks
                .put_shard(&location.addr, key, owner, cap, shard.clone())
                .await
        };
        let result = tokio::select! {
            result = put => result,
            _ = wait_until_given_up(&mut given_up) => {
                // A server this slow is avoided by readers for a while too.
                client.inner.chunks.mark_suspect(&location.addr);
                client.inner.shard_writes_left.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(block = %key.block, index = key.index, server = %location.server, "shard write left behind: its server is too slow; the block is stored without it");
                return Ok(false);
            }
        };
        let Err(e) = result else {
            return Ok(true);
        };
        tracing::warn!(block = %key.block, index = key.index, server = %location.server, "shard write failed: {e}");
        if attempt == ATTEMPTS_PER_SHARD {
            break;
        }
        let request = req::ReplaceShard {
            block: key.block,
            index: key.index,
            failed: location.server,
        };
        location = client.call(request).await?;
    }
    Ok(false)
}

/// Returns once the block's upload gives up on its late shard writes (never, if it ended).
async fn wait_until_given_up(given_up: &mut watch::Receiver<bool>) {
    if given_up.wait_for(|&given_up| given_up).await.is_err() {
        std::future::pending::<()>().await;
    }
}
