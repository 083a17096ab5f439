//! The client side of every dfs RPC: one long-lived connection per peer, one bidirectional
//! stream per request, so a slow request never blocks another. This is the one choke point for
//! remote calls: every call is bounded by a timeout here.

use super::endpoint::Endpoint;
use super::stats::Counted;
use super::tls::SERVER_NAME;
use crate::codec::{encode_frame, read_frame, write_message, ReplyStream};
use crate::error::{FsError, FsResult};
use bytes::Bytes;
use quinn::{Connection, RecvStream};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::Mutex;

/// Default bound on one request: connect, send, and receive the reply frame.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A remote party reached over one cached QUIC connection, re-established when it breaks.
pub struct Peer {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Mutex<Option<Counted>>,
    timeout: Duration,
}

impl Peer {
    pub fn new(endpoint: Endpoint, addr: SocketAddr) -> Self {
        Peer {
            endpoint,
            addr,
            conn: Mutex::new(None),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The cached connection, or a new one if there is none or it has closed.
    async fn connection(&self) -> FsResult<Connection> {
        let mut cached = self.conn.lock().await;
        if let Some(counted) = cached.as_ref() {
            let conn = counted.connection();
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self.endpoint.connect_to(self.addr, SERVER_NAME)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT.min(self.timeout), connecting)
            .await
            .map_err(|_| FsError::unavailable(format!("connect to {}: timed out", self.addr)))?
            .map_err(|e| FsError::unavailable(format!("connect to {}: {e}", self.addr)))?;
        *cached = Some(Counted::new(conn.clone()));
        Ok(conn)
    }

    /// The transport statistics of the cached connection, if one is open.
    pub async fn connection_stats(&self) -> Option<quinn::ConnectionStats> {
        self.conn
            .lock()
            .await
            .as_ref()
            .map(|c| c.connection().stats())
    }

    /// Forgets the cached connection, so the next call connects anew: for a peer that may
    /// have died and come back, whose old connection would only time out.
    pub async fn reset(&self) {
        if let Some(counted) = self.conn.lock().await.take() {
            counted.connection().close(0u32.into(), b"reset by client");
        }
    }

    /// Forgets the cached connection if it is `conn`, so the next call reconnects.
    async fn drop_connection(&self, conn: &Connection) {
        let mut cached = self.conn.lock().await;
        if cached.as_ref().map(|c| c.connection().stable_id()) == Some(conn.stable_id()) {
            conn.close(0u32.into(), b"reset by client");
            *cached = None;
        }
    }

    /// Sends `request` (and `body`, raw, after it), then reads the reply frame of at most
    /// `max_reply` bytes. Returns the reply and the stream, from which any raw reply body can be
    /// read. Errors the server sent come back as `Err`.
    pub async fn call<Q, R>(
        &self,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
    ) -> FsResult<(R, ReplyStream)>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let (reply, recv) = self.exchange(request, body, max_reply).await?;
        Ok((reply?, recv))
    }

    /// Like [`Peer::call`], keeping apart the two ways a call fails: the outer error means the
    /// exchange itself failed (no connection, no reply in time), the inner one is the server's
    /// answer. Only the first is worth retrying.
    pub async fn exchange<Q, R>(
        &self,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
    ) -> FsResult<(FsResult<R>, ReplyStream)>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| FsError::unavailable(format!("{}: {e}", self.addr)))?;
            // A server that refuses a request replies and then stops the stream, which can
            // fail the write of the body: the reply still says why, so read it first.
            let body_sent = write_message(&mut send, encode_frame(request)?, body).await?;
            let _ = send.finish();
            match read_frame::<Result<R, FsError>>(&mut recv, max_reply).await {
                Ok(reply) => Ok::<_, FsError>((reply, ReplyStream::new(recv))),
                Err(e) => Err(body_sent.err().unwrap_or(e)),
            }
        })
        .await;
        match result {
            Ok(Ok((reply, recv))) => Ok((reply, recv)),
            Ok(Err(e)) => {
                if matches!(e, FsError::Unavailable(_)) {
                    self.drop_connection(&conn).await;
                }
                Err(e)
            }
            Err(_) => {
                self.drop_connection(&conn).await;
                Err(FsError::TimedOut(format!(
                    "no reply from {} within {:?}",
                    self.addr, self.timeout
                )))
            }
        }
    }
}

/// Reads exactly `len` raw bytes into `buf`, bounded by `timeout`.
pub async fn read_body_into(
    recv: &mut RecvStream,
    buf: &mut [u8],
    timeout: Duration,
) -> FsResult<()> {
    tokio::time::timeout(timeout, recv.read_exact(buf))
        .await
        .map_err(|_| FsError::TimedOut("reading message body".into()))?
        .map_err(crate::codec::read_error)
}
