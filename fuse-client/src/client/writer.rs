//! Writing one block: ask for a placement, encode k+m shards, send them in parallel, and place
//! again any shard whose server fails. The block becomes visible only when a later commit
//! refers to it; a crash before that leaves unreferenced shards, never a torn file.

use super::{expect_reply, Client};
use dfs_common::proto::chunk::{ShardKey, ShardOwner};
use dfs_common::proto::meta::{
    BlockPlacement, Extent, MetaReply, MetaRequest, NewExtent, ShardLocation,
};
use dfs_common::{FsError, FsResult, InodeId};
use tokio::task::JoinSet;

/// Servers tried per shard before the block write fails.
const ATTEMPTS_PER_SHARD: usize = 3;

/// Writes `data` as a new block holding file bytes `[file_offset, file_offset + data.len())`.
pub async fn upload_block(
    client: Client,
    ino: InodeId,
    file_offset: u64,
    data: Vec<u8>,
) -> FsResult<NewExtent> {
    let reply = client.call(&MetaRequest::AllocateBlock { ino }).await?;
    let placement: BlockPlacement = expect_reply!(reply, MetaReply::Placement)?;
    let codec = client.codec(placement.policy)?;
    let encoded = codec.encode(&data);
    let owner = ShardOwner {
        volume: placement.volume,
        policy: placement.policy,
        block_len: data.len() as u64,
    };
    let mut sends = JoinSet::new();
    for (index, location) in placement.shards.iter().cloned().enumerate() {
        let client = client.clone();
        let key = ShardKey {
            block: placement.block,
            index: index as u8,
        };
        let shard = encoded.shard(index);
        sends.spawn(async move { put_with_retry(&client, key, owner, shard, location).await });
    }
    while let Some(result) = sends.join_next().await {
        result.map_err(|e| FsError::io(format!("shard upload task: {e}")))??;
    }
    Ok(NewExtent {
        extent: Extent {
            file_offset,
            len: data.len() as u64,
            block: placement.block,
            block_offset: 0,
        },
        block_len: data.len() as u64,
    })
}

async fn put_with_retry(
    client: &Client,
    key: ShardKey,
    owner: ShardOwner,
    shard: bytes::Bytes,
    mut location: ShardLocation,
) -> FsResult<()> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS_PER_SHARD {
        match client
            .inner
            .chunks
            .put_shard(&location.addr, key, owner, shard.clone())
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(block = %key.block, index = key.index, server = %location.server, "shard write failed, placing elsewhere: {e}");
                last_error = Some(e);
                let request = MetaRequest::ReplaceShard {
                    block: key.block,
                    index: key.index,
                    failed: location.server,
                };
                location = match client.call(&request).await {
                    Ok(reply) => expect_reply!(reply, MetaReply::Shard)?,
                    Err(e) => return Err(e),
                };
            }
        }
    }
    Err(last_error.unwrap_or_else(|| FsError::unavailable("shard write failed")))
}
