//! A small HTTP/1.1 server (hyper) for metrics and status pages. GET and HEAD only; one handler
//! maps a path to a page. The handler runs on a blocking thread, so it may read the metadata
//! store. Connections are bounded in number and in lifetime, so a slow or idle peer cannot
//! hold the server.

use crate::error::{FsError, FsResult};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// Longest life of one connection, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// A response body with its content type.
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

/// Maps a request path (without the query) to a page; `None` is 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// Binds `addr` and serves `handler` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> FsResult<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| FsError::invalid(format!("cannot listen for HTTP on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("http accept failed: {e}");
                        continue;
                    }
                },
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(respond(handler, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

async fn respond(handler: Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    let path = req.uri().path().to_string();
    match tokio::task::spawn_blocking(move || handler(&path)).await {
        Ok(Some(page)) => reply(StatusCode::OK, page.content_type, page.body),
        Ok(None) => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("page failed: {e}\n"),
        ),
    }
}
