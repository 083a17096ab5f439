//! Frames on QUIC streams: a little-endian `u32` length, then that many bytes of bincode.
//!
//! The length is checked against a caller-given bound before anything is allocated, and bincode
//! decodes with the same limit, so a peer can never make us allocate more than we agreed to.
//! Bulk data (shard bytes) never goes through here: it follows the frame as raw bytes.

use crate::error::FsError;
use bincode::config::{self, Configuration};
use bytes::Bytes;
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound for any frame: large enough for a directory page with attributes or a layout of
/// a few thousand extents, small enough that a hostile peer cannot exhaust memory.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

fn bincode_config() -> Configuration {
    config::standard()
}

/// Serializes `value` into a length-prefixed frame.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FsError> {
    let mut buf = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut buf, bincode_config())
        .map_err(|e| FsError::protocol(format!("encode: {e}")))?;
    let body_len = buf.len() - 4;
    if body_len > MAX_FRAME {
        return Err(FsError::TooBig(format!(
            "message of {body_len} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )));
    }
    buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    Ok(buf)
}

/// Serializes `value` as a frame body, without the length prefix.
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, FsError> {
    let mut frame = encode_frame(value)?;
    frame.drain(..4);
    Ok(frame)
}

/// The blake3 hash of `value`'s frame body ([`encode_body`]), encoded straight into the
/// hasher: no buffer as large as the message is made or copied.
pub fn hash_body<T: Serialize + ?Sized>(value: &T) -> Result<crate::checksum::Hash, FsError> {
    let mut hasher = blake3::Hasher::new();
    bincode::serde::encode_into_std_write(value, &mut hasher, bincode_config())
        .map_err(|e| FsError::protocol(format!("encode: {e}")))?;
    Ok(*hasher.finalize().as_bytes())
}

/// Decodes a frame body (without its length prefix), rejecting trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FsError> {
    let cfg = bincode_config().with_limit::<MAX_FRAME>();
    let (value, used) = bincode::serde::decode_from_slice(body, cfg)
        .map_err(|e| FsError::protocol(format!("malformed message: {e}")))?;
    if used != body.len() {
        return Err(FsError::protocol(format!(
            "malformed message: {} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

pub async fn write_frame<T: Serialize>(send: &mut SendStream, value: &T) -> Result<(), FsError> {
    let frame = encode_frame(value)?;
    send.write_all(&frame).await.map_err(write_error)
}

/// Consumes the end of `recv` if it has already arrived (it normally comes with the last
/// bytes). quinn answers a stream dropped before its end was read with STOP_SENDING: one more
/// packet, and one more wake-up of the peer, per request.
/// Returns whether the stream is done with (its end taken, or failed).
pub fn take_end(recv: &mut RecvStream) -> bool {
    use std::future::Future;
    let mut read = std::pin::pin!(recv.read_chunk(1, true));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    !matches!(read.as_mut().poll(&mut cx), std::task::Poll::Pending)
}

/// Unread bytes a dropped reply stream may still take in while it waits for its end.
const LATE_END_BYTES: usize = 64 * 1024;
/// How long a dropped reply stream waits for its end.
const LATE_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (in the background) for the end of a stream that has not come yet: the sender
/// finishes right after its last write, but on a busy host the end can leave in a packet of
/// its own, after the reply was read. Dropping the stream before it arrives would cost a
/// STOP_SENDING. More unread data than a little, or no end in time, stops the stream instead.
pub fn take_late_end(mut recv: RecvStream) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drained = tokio::time::timeout(LATE_END_WAIT, async {
            let mut left = LATE_END_BYTES;
            loop {
                match recv.read_chunk(left, true).await {
                    Ok(Some(chunk)) if chunk.bytes.len() < left => left -= chunk.bytes.len(),
                    Ok(Some(_)) => return false,
                    Ok(None) | Err(_) => return true,
                }
            }
        })
        .await;
        if !matches!(drained, Ok(true)) {
            let _ = recv.stop(0u32.into());
        }
    });
}

/// A reply stream: whatever of it the caller reads, its end is taken when it is dropped (see
/// [`take_end`]), waiting for it in the background if it is late.
pub struct ReplyStream(Option<RecvStream>);

impl ReplyStream {
    pub fn new(recv: RecvStream) -> Self {
        ReplyStream(Some(recv))
    }
}

impl std::ops::Deref for ReplyStream {
    type Target = RecvStream;

    fn deref(&self) -> &RecvStream {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for ReplyStream {
    fn deref_mut(&mut self) -> &mut RecvStream {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        if let Some(mut recv) = self.0.take() {
            if !take_end(&mut recv) {
                take_late_end(recv);
            }
        }
    }
}

/// Bodies up to this size go out in the same write as their frame.
const COALESCE_BODY: usize = 64 * 1024;

/// Writes `frame` (from [`encode_frame`]) and then `body`. A small body is joined to its frame
/// and written at once, so a short message leaves in one datagram rather than two and the
/// peer has one packet to acknowledge, not two (on a busy host every packet costs a wake-up).
/// Returns the error of the frame write (the outer one) apart from that of the body.
pub async fn write_message(
    send: &mut SendStream,
    frame: Vec<u8>,
    body: Option<Bytes>,
) -> Result<Result<(), FsError>, FsError> {
    match body {
        Some(body) if body.len() <= COALESCE_BODY => {
            let mut joined = Vec::with_capacity(frame.len() + body.len());
            joined.extend_from_slice(&frame);
            joined.extend_from_slice(&body);
            Ok(send
                .write_chunk(Bytes::from(joined))
                .await
                .map_err(write_error))
        }
        Some(body) => {
            send.write_all(&frame).await.map_err(write_error)?;
            Ok(send.write_chunk(body).await.map_err(write_error))
        }
        None => {
            send.write_chunk(Bytes::from(frame))
                .await
                .map_err(write_error)?;
            Ok(Ok(()))
        }
    }
}

/// Reads a frame's length prefix, refusing one over `max` (or [`MAX_FRAME`]) before anything
/// is allocated.
pub async fn read_frame_len(recv: &mut RecvStream, max: usize) -> Result<usize, FsError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(read_error)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(FsError::TooBig(format!(
            "peer sent a {len}-byte message, limit is {}",
            max.min(MAX_FRAME)
        )));
    }
    Ok(len)
}

/// Reads one frame of at most `max` bytes and decodes it.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T, FsError> {
    let len = read_frame_len(recv, max).await?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    decode_body(&body)
}

pub fn read_error(e: ReadExactError) -> FsError {
    match e {
        ReadExactError::FinishedEarly(n) => {
            FsError::protocol(format!("stream ended early after {n} bytes"))
        }
        ReadExactError::ReadError(e) => FsError::unavailable(format!("read: {e}")),
    }
}

pub fn write_error(e: quinn::WriteError) -> FsError {
    FsError::unavailable(format!("write: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let v = (42u64, "name".to_string(), vec![1u8, 2, 3]);
        let frame = encode_frame(&v).unwrap();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let back: (u64, String, Vec<u8>) = decode_body(&frame[4..]).unwrap();
        assert_eq!(back, v);
        // Truncated and trailing input are errors, never panics.
        assert!(decode_body::<(u64, String, Vec<u8>)>(&frame[4..frame.len() - 1]).is_err());
        let mut longer = frame[4..].to_vec();
        longer.push(0);
        assert!(decode_body::<(u64, String, Vec<u8>)>(&longer).is_err());
        // A declared vector length far beyond the limit is refused before allocating.
        let huge = [0xFC, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
        assert!(decode_body::<Vec<u8>>(&huge).is_err());
    }

    /// The hash of a body encoded into the hasher is the hash of the body's bytes, so a
    /// fingerprint taken either way is the same.
    #[test]
    fn a_body_hashed_as_encoded_is_the_hash_of_its_bytes() {
        for v in [
            (0u64, String::new(), vec![]),
            (42, "name".into(), vec![7u8; 100_000]),
        ] {
            let bytes = encode_body(&v).unwrap();
            assert_eq!(hash_body(&v).unwrap(), crate::checksum::hash(&bytes));
        }
        assert_ne!(
            hash_body(&(1u64, "a", [1u8])).unwrap(),
            hash_body(&(1u64, "a", [2u8])).unwrap()
        );
    }
}
