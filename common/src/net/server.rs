//! The server side of every dfs service: accept connections, accept streams, decode one bounded
//! request frame per stream, hand it to the service, write the reply (and any raw body).
//!
//! Every stream runs in its own task under a deadline, so a peer that stalls or sends garbage
//! only loses its own stream; other streams and other clients keep being served.

use super::endpoint::Endpoint;
use crate::codec::{decode_body, read_error, read_frame_len};
use crate::error::FsError;
use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// What a service handler returns: a reply and optionally raw bytes to send after it.
pub type Response<R> = Result<(R, Option<Bytes>), FsError>;

/// Who sent a request.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub principal: crate::net::tls::Principal,
}

pub trait Service: Send + Sync + 'static {
    type Request: DeserializeOwned + Send + std::fmt::Debug;
    type Reply: Serialize + Send + Sync;

    /// Largest request frame this service accepts.
    const MAX_REQUEST: usize;
    /// Deadline for one whole request, including any body.
    const REQUEST_TIMEOUT: Duration;

    /// The kind of a request, for metrics.
    fn op_name(request: &Self::Request) -> &'static str;

    /// Where request counts and latencies are recorded, if anywhere.
    fn op_metrics(&self) -> Option<&crate::metrics::OpMetrics> {
        None
    }

    /// Handles one request; `body` holds whatever raw bytes the client sent after the frame.
    fn handle(
        &self,
        request: Self::Request,
        body: &mut RecvStream,
        peer: &PeerInfo,
    ) -> impl Future<Output = Response<Self::Reply>> + Send;
}

/// Connections a server holds at once; more are refused until some close.
pub const MAX_CONNECTIONS: usize = 4096;
/// Request bytes one connection may have in memory at once (frames being received and
/// decoded, before the service has them): its further streams wait, so no peer, authorized
/// or not, can make the server buffer more than this.
pub const CONNECTION_REQUEST_BUDGET: usize = 8 << 20;
/// Unit of the request budget.
const BUDGET_UNIT: usize = 1024;

/// Serves `service` on `endpoint` until `shutdown` is cancelled, then waits for in-flight
/// requests to finish.
pub async fn serve<S: Service>(endpoint: Endpoint, service: Arc<S>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        if open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
            warn!(peer = %incoming.remote_address(), "refusing a connection: {MAX_CONNECTIONS} open");
            incoming.refuse();
            continue;
        }
        let slot = ConnectionSlot::take(&open);
        let service = service.clone();
        let shutdown = shutdown.clone();
        let streams = tracker.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!("handshake failed: {e}");
                    return;
                }
            };
            let _counted = super::stats::Counted::accepted(conn.clone());
            serve_connection(conn, service, shutdown, streams).await;
        });
    }
    tracker.close();
    endpoint.close(0u32.into(), b"shutting down");
    tracker.wait().await;
    info!("server stopped");
}

/// One of the [`MAX_CONNECTIONS`], given back when the connection's task ends.
struct ConnectionSlot(Arc<std::sync::atomic::AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionSlot(open.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn serve_connection<S: Service>(
    conn: Connection,
    service: Arc<S>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let peer = PeerInfo {
        addr: conn.remote_address(),
        principal: crate::net::tls::Principal::of_connection(&conn),
    };
    debug!(peer = %peer.addr, "connection open");
    let budget = Arc::new(Semaphore::new(CONNECTION_REQUEST_BUDGET / BUDGET_UNIT));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = conn.accept_bi() => s,
        };
        let (send, recv) = match stream {
            Ok(s) => s,
            // A peer that fell silent (crashed, cut off, paused) is worth a line; the others
            // closed on purpose.
            Err(quinn::ConnectionError::TimedOut) => {
                info!(peer = %peer.addr, "connection timed out: the peer fell silent");
                return;
            }
            Err(e) => {
                debug!(peer = %peer.addr, "connection closed: {e}");
                return;
            }
        };
        let service = service.clone();
        let peer = peer.clone();
        let budget = budget.clone();
        tracker.spawn(async move {
            match tokio::time::timeout(
                S::REQUEST_TIMEOUT,
                serve_stream(&*service, send, recv, &peer, &budget),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(peer = %peer.addr, "stream failed: {e}"),
                Err(_) => warn!(peer = %peer.addr, "request exceeded {:?}", S::REQUEST_TIMEOUT),
            }
        });
    }
}

async fn serve_stream<S: Service>(
    service: &S,
    mut send: SendStream,
    mut recv: RecvStream,
    peer: &PeerInfo,
    budget: &Semaphore,
) -> Result<(), FsError> {
    let started = std::time::Instant::now();
    let (op, response) = match read_request::<S::Request>(&mut recv, S::MAX_REQUEST, budget).await {
        Ok(request) => {
            let op = S::op_name(&request);
            (op, service.handle(request, &mut recv, peer).await)
        }
        Err(e) => ("Malformed", Err(e)),
    };
    if let Some(metrics) = service.op_metrics() {
        metrics.record(op, started.elapsed(), response.is_ok());
    }
    let (reply, body) = match response {
        Ok((reply, body)) => (Ok(reply), body),
        Err(e) => (Err(e), None),
    };
    let failed = reply.is_err();
    crate::codec::write_message(&mut send, crate::codec::encode_frame(&reply)?, body).await??;
    let _ = send.finish();
    let _ = crate::codec::take_end(&mut recv);
    if failed {
        // Discard whatever the peer is still sending (e.g. the body of a refused request).
        let _ = recv.stop(0u32.into());
    }
    // Wait until the peer has the whole reply, so dropping the stream does not cut it off.
    let _ = send.stopped().await;
    // The peer sent the end of its request before it read the reply, so the end has nearly
    // always arrived by now; on a busy host it can come in a packet of its own even later.
    // Dropping the stream before it arrives would cost a STOP_SENDING: wait for it aside.
    if !crate::codec::take_end(&mut recv) {
        crate::codec::take_late_end(recv);
    }
    Ok(())
}

/// Reads one request frame of at most `max` bytes, holding its size in the connection's
/// `budget` while it is received and decoded.
async fn read_request<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
    budget: &Semaphore,
) -> Result<T, FsError> {
    let len = read_frame_len(recv, max).await?;
    let _held = budget
        .acquire_many((len / BUDGET_UNIT + 1) as u32)
        .await
        .map_err(|_| FsError::unavailable("connection closing"))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    decode_body(&body)
}
