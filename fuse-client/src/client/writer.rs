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
use std::time::Instant;
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
    let mut sends = JoinSet::new();
    for (index, location) in placement.shards.iter().cloned().enumerate() {
        let client = client.clone();
        let key = ShardKey {
            block: placement.block,
            index: index as u8,
        };
        let shard = encoded.shard(index);
        sends.spawn(async move {
            let stored = put_with_retry(&client, key, owner, shard, location).await?;
            Ok::<_, FsError>((index, stored))
        });
    }
    let mut stored = 0;
    let mut missing_shards = 0u32;
    while let Some(result) = sends.join_next().await {
        let (index, was_stored) =
            result.map_err(|e| FsError::io(format!("shard upload task: {e}")))??;
        if was_stored {
            stored += 1;
        } else {
            missing_shards |= 1 << index;
        }
    }
    let needed = placement.min_shards as usize;
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
/// servers. Returns whether it was stored; one that was not goes into the commit's
/// `missing_shards`, so the block record never names a server that lacks it.
async fn put_with_retry(
    client: &Client,
    key: ShardKey,
    owner: ShardOwner,
    shard: bytes::Bytes,
    mut location: ShardLocation,
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
        let Err(e) = put.await else {
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
