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

use crate::command::{Call, Outcome};
use crate::store::schema::{
    decode_body, encode_as, split_format, CallRecord, WireCallRecord, CALL_FORMAT,
};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::{FsError, FsResult, Timestamp};
use redb::ReadableTable;
use std::time::Duration;

/// Records of a client older than this are deleted even if it never confirmed them.
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Sequence numbers a client may have outstanding; older records go regardless of
/// `done_below`, so no client can grow the table without bound.
pub const MAX_IN_FLIGHT: u64 = 4096;

/// What identifies the request itself, so a reused sequence number is caught: the hash of
/// its encoding, hashed as it is encoded (a request may carry up to 64 KiB of file data,
/// which need not be copied for this).
pub fn fingerprint<T: serde::Serialize + ?Sized>(request: &T) -> FsResult<[u8; 32]> {
    dfs_common::codec::hash_body(request)
}

/// Decodes a call record of either format.
fn decode_call(bytes: &[u8]) -> FsResult<CallRecord> {
    match split_format(bytes)? {
        (CALL_FORMAT, body) => decode_body(body),
        (1, body) => {
            let old: WireCallRecord = decode_body(body)?;
            Ok(CallRecord {
                request: old.request,
                outcome: Outcome::WireReply(old.reply),
                at: old.at,
            })
        }
        (v, _) => Err(FsError::Corrupt(format!("unknown call record format {v}"))),
    }
}

/// The outcome of an earlier application of this call, if there was one.
pub fn replay(t: &mut WriteTables, call: &Call) -> FsResult<Option<Outcome>> {
    let Some(value) = t.calls.table()?.get((call.client, call.seq)).db()? else {
        return Ok(None);
    };
    let record = decode_call(value.value())?;
    if record.request != call.request {
        return Err(FsError::invalid(format!(
            "call {} of client {:016x} was already used for another request",
            call.seq, call.client
        )));
    }
    Ok(Some(record.outcome))
}

/// Stores the outcome of a call applied now, and forgets the client's calls it has confirmed.
pub fn record(t: &mut WriteTables, call: &Call, outcome: &Outcome, now: Timestamp) -> FsResult<()> {
    let forget_below = call
        .done_below
        .max(call.seq.saturating_sub(MAX_IN_FLIGHT))
        .min(call.seq);
    if forget_below > 0 {
        t.calls
            .table()?
            .retain_in((call.client, 0)..(call.client, forget_below), |_, _| false)
            .db()?;
    }
    let record = CallRecord {
        request: call.request,
        outcome: outcome.clone(),
        at: now,
    };
    t.calls
        .table()?
        .insert(
            (call.client, call.seq),
            encode_as(CALL_FORMAT, &record).as_slice(),
        )
        .db()?;
    Ok(())
}

/// Deletes the records older than [`RECORD_TTL`] (clients that went away); returns how many.
pub fn expire(t: &mut WriteTables, now: Timestamp) -> FsResult<u64> {
    let cutoff = now.secs.saturating_sub(RECORD_TTL.as_secs() as i64);
    let mut expired = 0;
    t.calls
        .table()?
        .retain(|_, value| {
            let keep = decode_call(value).is_ok_and(|r| r.at.secs >= cutoff);
            expired += u64::from(!keep);
            keep
        })
        .db()?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op};
    use crate::state_machine::apply;
    use crate::store;
    use dfs_common::model::{FileKind, VolumeLimits};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    fn run(path: &std::path::Path, command: &Command) -> Result<Outcome, FsError> {
        let db = store::open(path).unwrap();
        let tx = db.begin_write().unwrap();
        let reply = apply(&tx, command);
        if reply.is_ok() {
            tx.commit().unwrap();
        }
        reply
    }

    fn command(op: Op, call: Option<Call>) -> Command {
        Command {
            now: Timestamp {
                secs: 100,
                nanos: 0,
            },
            call,
            op,
        }
    }

    fn call(seq: u64, done_below: u64, request: &[u8]) -> Call {
        Call {
            client: 7,
            seq,
            done_below,
            request: fingerprint(&request).unwrap(),
        }
    }

    #[test]
    fn a_retry_gets_the_first_outcome_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let create = Op::CreateVolume {
            name: "v".into(),
            policy: "2+1".parse().unwrap(),
            block_size: 1 << 20,
            limits: VolumeLimits::default(),
        };
        let Ok(Outcome::Volume { record: v, .. }) = run(&path, &command(create, None)) else {
            panic!("no volume")
        };
        let make = Op::MakeNode {
            parent: v.root,
            name: "f".into(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: None,
        };
        let id = call(1, 1, b"make f");
        // Each `run` opens the database anew: the record is durable state.
        let first = run(&path, &command(make.clone(), Some(id))).unwrap();
        let again = run(&path, &command(make.clone(), Some(id))).unwrap();
        assert_eq!(first, again);
        // Untracked, the same request is a second create.
        assert_eq!(
            run(&path, &command(make.clone(), None)),
            Err(FsError::Exists)
        );
        // The same id for another request is refused, not answered with the first outcome.
        let other = Op::Unlink {
            parent: v.root,
            name: "f".into(),
        };
        let reused = Call {
            request: fingerprint(&b"unlink f"[..]).unwrap(),
            ..id
        };
        assert!(matches!(
            run(&path, &command(other.clone(), Some(reused))),
            Err(FsError::Invalid(_))
        ));
        // Once the client confirms it, the record goes.
        run(&path, &command(other, Some(call(2, 2, b"unlink f")))).unwrap();
        let db = store::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let calls = tx.open_table(crate::store::schema::CALLS).unwrap();
        assert_eq!(calls.len().unwrap(), 1, "only call 2 is kept");
    }

    /// Records written by a server of format 1 (the tagged wire reply's bytes) still decode,
    /// so a reused call id is still caught, and still expire. (A retry finding one is refused
    /// by the service: replies are no longer tagged.)
    #[test]
    fn format_1_records_still_answer_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let at = Timestamp {
            secs: 100,
            nanos: 0,
        };
        // A format 1 record as such a server wrote it: request hash, reply bytes, time.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&fingerprint(&b"old"[..]).unwrap());
        v1.extend_from_slice(&[3, 9, 8, 7, 100, 0]);
        let tx = db.begin_write().unwrap();
        tx.open_table(crate::store::schema::CALLS)
            .unwrap()
            .insert((7, 1), v1.as_slice())
            .unwrap();
        tx.commit().unwrap();
        let tx = db.begin_write().unwrap();
        let mut t = WriteTables::open(&tx);
        let outcome = replay(&mut t, &call(1, 0, b"old")).unwrap();
        assert_eq!(outcome, Some(Outcome::WireReply(vec![9, 8, 7])));
        // Records of both formats expire by their time.
        record(&mut t, &call(2, 0, b"new"), &Outcome::Done, at).unwrap();
        assert_eq!(
            replay(&mut t, &call(2, 0, b"new")).unwrap(),
            Some(Outcome::Done)
        );
        let later = Timestamp {
            secs: at.secs + RECORD_TTL.as_secs() as i64 + 1,
            nanos: 0,
        };
        assert_eq!(expire(&mut t, later).unwrap(), 2);
    }
}
