//! Replies as the wire carries them, and outcomes of the state machine turned into them.
//!
//! Each request has one reply type ([`MetaRpc::Reply`]). A handler answers through [`answer`],
//! which hands it the request and takes back a value of exactly that type, so no request can
//! be answered with another's reply.

use crate::command::{Outcome, ShardAt};
use crate::store::tables::to_attr;
use crate::volumes::volume_info;
use dfs_common::proto::chunk::ShardKey;
use dfs_common::proto::meta::*;
use dfs_common::{BlockId, FsError, FsResult, InodeId, ServerId};
use serde::Serialize;
use std::future::Future;

/// Handles `request` with `handle`, which must give the request's reply type, and makes that
/// the wire reply.
pub async fn answer<Q, F>(request: Q, handle: impl FnOnce(Q) -> F) -> FsResult<Answer>
where
    Q: MetaRpc,
    Q::Reply: Into<Answer>,
    F: Future<Output = FsResult<Q::Reply>>,
{
    handle(request).await.map(Into::into)
}

/// Declares the reply types: a wire reply holding any one of them, encoded as the bare value.
macro_rules! answers {
    ($($variant:ident($ty:ty),)*) => {
        /// A reply on its way to the wire: the bare value of its request's reply type,
        /// without a tag (the caller decodes it as the type it expects). Made by [`answer`].
        #[derive(Debug, Serialize)]
        #[serde(untagged)]
        pub enum Answer {
            $($variant($ty),)*
        }

        $(
            impl From<$ty> for Answer {
                fn from(value: $ty) -> Answer {
                    Answer::$variant(value)
                }
            }
        )*
    };
}

answers! {
    Done(()),
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Clients(Vec<ClientInfo>),
    Grants(Option<Vec<VolumeGrant>>),
    Fsck(FsckPage),
    Usage(VolumeUsage),
    Registered(Registered),
    Cluster(ClusterStatus),
    Attr(Attr),
    Target(String),
    Dir(DirPage),
    StatFs(StatFs),
    Xattr(Vec<u8>),
    XattrNames(Vec<String>),
    Placement(BlockPlacement),
    Shard(ShardLocation),
    Committed(Committed),
    Layout(Layout),
    Lock(Option<LockConflict>),
    Dropped(Vec<BlockId>),
    StaleShards(Vec<ShardKey>),
    Repair(RepairProgress),
    Members(Vec<MetaMember>),
    Digest(Digest),
    Leader(Option<String>),
    Peer(PeerReply),
    Changes(ChangePage),
    Made(Made),
    Removed(Removed),
    Moved(Moved),
    Opened(Opened),
}

/// A reply type that a command's [`Outcome`] turns into.
pub trait FromOutcome: Sized {
    fn from_outcome(outcome: Outcome) -> FsResult<Self>;
}

/// The state machine gave an outcome its command does not make: a bug, reported as such
/// rather than answered with something made up.
fn unexpected<T>(outcome: &Outcome) -> FsResult<T> {
    let what = match outcome {
        // Recorded by a server whose replies carried a tag: the client that made the call
        // (of that version) cannot take a reply of this one.
        Outcome::WireReply(_) => {
            return Err(FsError::protocol(
                "the reply to this call was recorded by an older metadata server version",
            ))
        }
        Outcome::Done => "done",
        Outcome::Volume { .. } => "a volume",
        Outcome::Node { .. } => "an inode",
        Outcome::Placement { .. } => "a placement",
        Outcome::Shard(_) => "a shard",
        Outcome::Committed { .. } => "a commit",
        Outcome::Dropped(_) => "dropped blocks",
        Outcome::Unlinked { .. } => "a removed name",
        Outcome::Renamed { .. } => "a moved name",
        Outcome::KeptOrphans { .. } => "kept orphans",
    };
    Err(FsError::protocol(format!(
        "the command's outcome ({what}) does not fit its reply type"
    )))
}

impl FromOutcome for () {
    fn from_outcome(outcome: Outcome) -> FsResult<()> {
        match outcome {
            Outcome::Done => Ok(()),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for VolumeInfo {
    fn from_outcome(outcome: Outcome) -> FsResult<VolumeInfo> {
        match outcome {
            Outcome::Volume {
                name,
                record,
                state,
            } => Ok(volume_info(&name, &record, &state)),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for Attr {
    fn from_outcome(outcome: Outcome) -> FsResult<Attr> {
        match outcome {
            Outcome::Node { ino, record } => Ok(to_attr(ino, &record)),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for BlockPlacement {
    fn from_outcome(outcome: Outcome) -> FsResult<BlockPlacement> {
        match outcome {
            Outcome::Placement {
                block,
                volume,
                policy,
                shards,
                min_shards,
            } => Ok(BlockPlacement {
                block,
                volume,
                policy,
                shards: shards.into_iter().map(shard_location).collect(),
                min_shards,
            }),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for ShardLocation {
    fn from_outcome(outcome: Outcome) -> FsResult<ShardLocation> {
        match outcome {
            Outcome::Shard(at) => Ok(shard_location(at)),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for Committed {
    fn from_outcome(outcome: Outcome) -> FsResult<Committed> {
        match outcome {
            Outcome::Committed { ino, before, after } => Ok(Committed {
                before: to_attr(ino, &before),
                after: to_attr(ino, &after),
            }),
            other => unexpected(&other),
        }
    }
}

impl FromOutcome for Vec<BlockId> {
    fn from_outcome(outcome: Outcome) -> FsResult<Vec<BlockId>> {
        match outcome {
            Outcome::Dropped(blocks) => Ok(blocks),
            other => unexpected(&other),
        }
    }
}

/// What an `UnlinkOrHide` did to its name's inode; the reply adds the directory after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Unlinked {
    pub victim: InodeId,
    pub links: u32,
    pub hidden: Option<String>,
}

impl FromOutcome for Unlinked {
    fn from_outcome(outcome: Outcome) -> FsResult<Unlinked> {
        match outcome {
            Outcome::Unlinked {
                victim,
                links,
                hidden,
            } => Ok(Unlinked {
                victim,
                links,
                hidden,
            }),
            other => unexpected(&other),
        }
    }
}

/// What a rename changed besides its directories: the inodes moved, replaced or exchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Renamed(pub Vec<InodeId>);

impl FromOutcome for Renamed {
    fn from_outcome(outcome: Outcome) -> FsResult<Renamed> {
        match outcome {
            Outcome::Renamed { touched } => Ok(Renamed(touched)),
            other => unexpected(&other),
        }
    }
}

fn shard_location(at: ShardAt) -> ShardLocation {
    ShardLocation {
        up: at.server != ServerId::NONE,
        server: at.server,
        addr: at.addr,
        cap: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::codec::{decode_body, encode_body};
    use dfs_common::InodeId;

    /// What the server sends decodes as the reply type the caller expects.
    #[test]
    fn an_answer_decodes_as_its_reply_type() {
        let page = DirPage {
            entries: vec![DirEntry {
                name: "a".into(),
                ino: InodeId(3),
                kind: FileKind::File,
                attr: None,
            }],
            more: false,
        };
        let sent: FsResult<Answer> = Ok(page.clone().into());
        let got: FsResult<<req::ReadDir as MetaRpc>::Reply> =
            decode_body(&encode_body(&sent).unwrap()).unwrap();
        assert_eq!(got, Ok(page));
        let sent: FsResult<Answer> = Ok(().into());
        let got: FsResult<<req::Rename as MetaRpc>::Reply> =
            decode_body(&encode_body(&sent).unwrap()).unwrap();
        assert_eq!(got, Ok(()));
        let sent: FsResult<Answer> = Err(FsError::NotFound);
        let got: FsResult<<req::Lookup as MetaRpc>::Reply> =
            decode_body(&encode_body(&sent).unwrap()).unwrap();
        assert_eq!(got, Err(FsError::NotFound));
    }

    /// An outcome of the wrong kind is an error, never a made-up reply.
    #[test]
    fn an_outcome_of_another_kind_is_refused() {
        assert!(Attr::from_outcome(Outcome::Done).is_err());
        assert!(<()>::from_outcome(Outcome::Dropped(vec![])).is_err());
        assert!(<()>::from_outcome(Outcome::WireReply(vec![0])).is_err());
        assert_eq!(
            Vec::<BlockId>::from_outcome(Outcome::Dropped(vec![BlockId(4)])).unwrap(),
            vec![BlockId(4)]
        );
    }
}
