//! The duplicate-request table: exactly-once mutations for clients that retry.
//!
//! A client tags each mutation with a [`CallId`] (its random id and a sequence number it keeps
//! across retries). The first time a tagged command is applied, its reply is stored in the
//! `calls` table in the same transaction as its effects; a retry of the same id (the reply was
//! lost: a timeout, a dropped connection, a server restart) finds the record and gets the first
//! reply back without being applied again. So a retried append is appended once, a retried
//! `RENAME_EXCHANGE` does not swap back, and a retried unlink or create reports success.
//!
//! Failed commands leave no record (and no effect): their retry is simply applied anew, as if
//! the first attempt had never been made.
//!
//! The table stays small: every call carries the client's low-water mark (`done_below`, the
//! oldest sequence number still waiting for its reply), and records below it are deleted as
//! the call is applied; a client keeps at most [`MAX_IN_FLIGHT`] sequence numbers alive; and
//! records of clients that vanished are deleted after [`RECORD_TTL`] by [`expire`]. The table
//! is part of the durable state, so it survives restarts.

use crate::store::schema::{decode, encode, CallRecord};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::codec::{decode_body, encode_body};
use dfs_common::proto::meta::{CallId, MetaReply, MetaRequest};
use dfs_common::{FsError, FsResult, Timestamp};
use redb::ReadableTable;
use std::time::Duration;

/// Records of a client older than this are deleted even if it never confirmed them.
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Sequence numbers a client may have outstanding; older records go regardless of
/// `done_below`, so no client can grow the table without bound.
pub const MAX_IN_FLIGHT: u64 = 4096;

/// What identifies the request itself, so a reused sequence number is caught.
pub fn fingerprint(request: &MetaRequest) -> FsResult<[u8; 32]> {
    Ok(dfs_common::checksum::hash(&encode_body(request)?))
}

/// The stored reply of an earlier application of this call, if there was one.
pub fn replay(t: &WriteTables, id: CallId, request: &[u8; 32]) -> FsResult<Option<MetaReply>> {
    let Some(value) = t.calls.get((id.client, id.seq)).db()? else {
        return Ok(None);
    };
    let record: CallRecord = decode(value.value())?;
    if &record.request != request {
        return Err(FsError::invalid(format!(
            "call {} of client {:016x} was already used for another request",
            id.seq, id.client
        )));
    }
    Ok(Some(decode_body(&record.reply).map_err(|e| {
        FsError::Corrupt(format!("stored reply of call {}: {e}", id.seq))
    })?))
}

/// Stores the reply of a call applied now, and forgets the client's calls it has confirmed.
pub fn record(
    t: &mut WriteTables,
    id: CallId,
    request: [u8; 32],
    reply: &MetaReply,
    now: Timestamp,
) -> FsResult<()> {
    let forget_below = id
        .done_below
        .max(id.seq.saturating_sub(MAX_IN_FLIGHT))
        .min(id.seq);
    if forget_below > 0 {
        t.calls
            .retain_in((id.client, 0)..(id.client, forget_below), |_, _| false)
            .db()?;
    }
    let record = CallRecord {
        request,
        reply: encode_body(reply)?,
        at: now,
    };
    t.calls
        .insert((id.client, id.seq), encode(&record).as_slice())
        .db()?;
    Ok(())
}

/// Deletes the records older than [`RECORD_TTL`] (clients that went away); returns how many.
pub fn expire(t: &mut WriteTables, now: Timestamp) -> FsResult<u64> {
    let cutoff = now.secs.saturating_sub(RECORD_TTL.as_secs() as i64);
    let mut expired = 0;
    t.calls
        .retain(|_, value| {
            let keep = decode::<CallRecord>(value).is_ok_and(|r| r.at.secs >= cutoff);
            expired += u64::from(!keep);
            keep
        })
        .db()?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use crate::state_machine::{apply, Command};
    use crate::store;
    use dfs_common::proto::meta::*;
    use dfs_common::{FsError, Timestamp};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    fn run(path: &std::path::Path, command: &Command) -> Result<MetaReply, FsError> {
        let db = store::open(path).unwrap();
        let tx = db.begin_write().unwrap();
        let reply = apply(&tx, command);
        if reply.is_ok() {
            tx.commit().unwrap();
        }
        reply
    }

    fn command(request: MetaRequest, call: Option<CallId>) -> Command {
        Command {
            now: Timestamp {
                secs: 100,
                nanos: 0,
            },
            request,
            placement: vec![],
            call,
        }
    }

    #[test]
    fn a_retry_gets_the_first_reply_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let create = MetaRequest::CreateVolume {
            name: "v".into(),
            policy: "2+1".parse().unwrap(),
            block_size: 1 << 20,
            limits: VolumeLimits::default(),
        };
        let Ok(MetaReply::Volume(v)) = run(&path, &command(create, None)) else {
            panic!("no volume")
        };
        let make = MetaRequest::MakeNode {
            parent: v.root,
            name: "f".into(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        };
        let id = CallId {
            client: 7,
            seq: 1,
            done_below: 1,
        };
        // Each `run` opens the database anew: the record is durable state.
        let first = run(&path, &command(make.clone(), Some(id))).unwrap();
        let again = run(&path, &command(make.clone(), Some(id))).unwrap();
        assert_eq!(first, again);
        // Untracked, the same request is a second create.
        assert_eq!(
            run(&path, &command(make.clone(), None)),
            Err(FsError::Exists)
        );
        // The same id for another request is refused, not answered with the first reply.
        let other = MetaRequest::Unlink {
            parent: v.root,
            name: "f".into(),
        };
        assert!(matches!(
            run(&path, &command(other.clone(), Some(id))),
            Err(FsError::Invalid(_))
        ));
        // Once the client confirms it, the record goes.
        let next = CallId {
            client: 7,
            seq: 2,
            done_below: 2,
        };
        run(&path, &command(other, Some(next))).unwrap();
        let db = store::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let calls = tx.open_table(crate::store::schema::CALLS).unwrap();
        assert_eq!(calls.len().unwrap(), 1, "only call 2 is kept");
    }
}
