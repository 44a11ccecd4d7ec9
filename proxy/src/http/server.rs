//! The server side of HTTP: a client connection served request by request by hyper,
//! each request handed to the connection's [`Destination`], drained on shutdown, and
//! the connection counted in the `tcp_*` family like every other.

use std::{convert::Infallible, sync::Arc};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::{Destination, Version};
use crate::{metrics::Direction, tcp::Counted};

/// Serves the client connection `io` (an application's, outbound; a peer proxy's or an
/// unmeshed client's, inbound), which speaks `version`, sending each request to an
/// endpoint of `destination`. Once `shutdown` turns true the connection is drained:
/// requests in flight are answered, then it is closed (HTTP/1 after the response in
/// progress, HTTP/2 with a GOAWAY).
pub async fn serve<I>(
    io: I,
    version: Version,
    destination: Arc<Destination>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = destination.metrics.clone();
    let direction = destination.labels.direction.unwrap_or(Direction::Outbound);
    let service = hyper::service::service_fn(move |request| {
        let destination = destination.clone();
        async move { Ok::<_, Infallible>(destination.proxy(request).await) }
    });
    let stopping = async move {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            // No one will ever ask: serve on.
            std::future::pending::<()>().await;
        }
    };
    // Serves `$connection` until it ends, draining it once `stopping` is done.
    macro_rules! drained {
        ($connection:expr) => {{
            let mut connection = std::pin::pin!($connection);
            tokio::select! {
                served = connection.as_mut() => served,
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }};
    }
    let served = match version {
        Version::Http1 => drained!(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
        ),
        Version::Http2 => drained!(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
        ),
    };
    if let Err(error) = served {
        // A malformed HTTP/1 request gets its 400 from hyper, malformed HTTP/2 a
        // GOAWAY; a client that went away mid-message gets nothing.
        tracing::debug!(%error, ?version, "HTTP client connection ended");
        if !error.is_incomplete_message() && !error.is_canceled() {
            metrics.http_client_error(direction);
        }
    }
}

/// Serves an HTTP connection request by request ([`serve`]), counted in the `tcp_*`
/// family like every connection.
pub(crate) async fn serve_counted<I>(
    io: I,
    version: Version,
    destination: Destination,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = destination.metrics.clone();
    let labels = metrics.tcp_opened(&destination.labels);
    let (io, counts) = Counted::new(io);
    serve(io, version, Arc::new(destination), shutdown).await;
    let (read, written) = counts.get();
    metrics.tcp_closed(&labels, read, written);
}
