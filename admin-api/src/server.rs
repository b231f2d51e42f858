//! The HTTP server under the router: HTTP/1.1 (hyper) with the limits a server open to the
//! internet needs, so slow or idle clients cannot hold it (slowloris):
//!
//! - **header read timeout** (`HTTP_HEADER_READ_TIMEOUT`, default 10 s): the request line and
//!   headers must arrive within it, counted from when the server starts waiting for them (the
//!   connection's start, or the end of the previous response on a kept-alive connection, so it
//!   is also how long an idle connection stays open);
//! - **idle timeout** (`HTTP_IDLE_TIMEOUT`, default 60 s): the longest pause in the middle of a
//!   request body (the request then fails and the connection closes);
//! - **connection limit** (`HTTP_MAX_CONNECTIONS`, default 1024): connections served at once;
//!   one more is closed as soon as it is accepted (and counted in
//!   `dashlight_http_connections_refused_total`).
//!
//! Each request carries the peer address (`ConnectInfo<SocketAddr>`), which [`crate::guard`]
//! reads. [`serve`] stops accepting when the shutdown future resolves and lets the connections
//! finish their requests.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use dashlight_core::config::HttpServer;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then waits for the open
/// connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpServer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone; when all are dropped, every connection has ended.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let header_read_timeout = limits.header_read_timeout;
    let idle_timeout = limits.idle_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("dashlight_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection limit reached: connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let mut req = req.map(|b| Body::new(TimeoutBody::new(idle_timeout, b)));
                    req.extensions_mut().insert(ConnectInfo(peer));
                    Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                    // Once told (or the sender gone), only the connection is awaited.
                    let _ = conn.as_mut().await;
                }
            }
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}
