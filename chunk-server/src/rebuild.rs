//! Rebuilding a lost shard on this server, when the metadata server's repair asks: read the
//! whole shard range from any k other shards of the block (each verified against its checksums
//! as it is read), decode, store durably, and verify what was stored.

use crate::store::{validate_put, ShardStore};
use dfs_common::erasure::Erasure;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::proto::chunk::{ShardKey, ShardOwner, ShardSource};
use dfs_common::{FsError, FsResult};
use std::sync::Arc;
use tokio::task::JoinSet;

pub async fn rebuild(
    pool: &Arc<ChunkPool>,
    store: &Arc<ShardStore>,
    key: ShardKey,
    owner: ShardOwner,
    sources: Vec<ShardSource>,
) -> FsResult<()> {
    let policy = owner.policy;
    let shard_len = policy.shard_len(owner.block_len);
    validate_put(&key, &owner, shard_len)?;
    if sources.len() > policy.total()
        || sources
            .iter()
            .any(|s| s.index as usize >= policy.total() || s.index == key.index)
    {
        return Err(FsError::invalid(
            "rebuild sources do not fit the block's policy",
        ));
    }
    let mut fetches = JoinSet::new();
    for source in sources {
        let pool = pool.clone();
        let from = ShardKey {
            block: key.block,
            index: source.index,
        };
        fetches.spawn(async move {
            let result = pool.get_shard(&source.addr, from, 0, shard_len).await;
            (source, result)
        });
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; policy.total()];
    let mut have = 0;
    while let Some(joined) = fetches.join_next().await {
        let Ok((source, result)) = joined else {
            continue;
        };
        match result {
            Ok(data) => {
                shards[source.index as usize] = Some(data);
                have += 1;
                if have == policy.k() {
                    break;
                }
            }
            Err(e) => tracing::warn!(block = %key.block, index = source.index, addr = %source.addr,
                "rebuild source failed: {e}"),
        }
    }
    fetches.abort_all();
    if have < policy.k() {
        return Err(FsError::unavailable(format!(
            "rebuilding shard {} of block {}: only {have} of the {} shards needed were readable",
            key.index,
            key.block,
            policy.k()
        )));
    }
    Erasure::new(policy)?.reconstruct_all(&mut shards)?;
    let data = shards[key.index as usize]
        .take()
        .ok_or_else(|| FsError::io("decoder left the shard empty"))?;
    // Stored durably, then read back and checked against its fresh checksums before the
    // metadata server is told it exists.
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.put(key, owner, &data)?;
        store.verify(&key)
    })
    .await
    .map_err(|e| FsError::io(format!("disk task failed: {e}")))?
}
