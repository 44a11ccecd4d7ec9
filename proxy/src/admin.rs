//! The admin server (port 4191): `/live`, `/ready`, `/metrics`, `/config`.
//!
//! It reads the proxy's [`State`] and its metrics, and writes nothing.
//!
//! `/ready` answers 200 only once the proxy has both its identity (a workload
//! certificate) and its configuration from the operator; until then 503 with what is
//! missing, so a native sidecar's startup probe holds the application back.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    metrics::Metrics,
    state::{AppliedConfig, State},
};

/// Binds `addr` and serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    state: State,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (metrics, state) = (metrics.clone(), state.clone());
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = graceful.watch(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "admin connection closed with an error");
                }
            });
        }
        graceful.shutdown().await;
    }))
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => plain(StatusCode::OK, "live\n".into()),
        "/ready" => match state.readiness.check() {
            Ok(()) => plain(StatusCode::OK, "ready\n".into()),
            Err(missing) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {missing}\n"),
            ),
        },
        "/metrics" => plain(StatusCode::OK, metrics.encode()),
        "/config" => {
            let config = state.config.as_ref().map_or_else(
                || serde_json::json!({"streams": 0, "inbound": {}, "outbound": {}}),
                AppliedConfig::to_json,
            );
            let mut response = plain(StatusCode::OK, format!("{config:#}\n"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Blocks until the admin server on `admin` answers `/ready` with 200, or `timeout`
/// passes. `weft-proxy await-ready` runs this as the proxy container's `postStart`
/// hook when the proxy is not a native sidecar: the kubelet starts the next container
/// only once the hook returns, so the application starts after the proxy is ready.
pub fn await_ready(admin: SocketAddr, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let target = if admin.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), admin.port())
    } else {
        admin
    };
    let step = std::time::Duration::from_millis(200);
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::from("not tried");
    while std::time::Instant::now() < deadline {
        let answer = std::net::TcpStream::connect_timeout(&target, step).and_then(|mut conn| {
            conn.set_read_timeout(Some(step * 5))?;
            conn.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut head = [0u8; 12];
            conn.read_exact(&mut head)?;
            Ok(head)
        });
        match answer {
            Ok(head) if head.starts_with(b"HTTP/1.1 200") => return Ok(()),
            Ok(head) => last = String::from_utf8_lossy(&head).into_owned(),
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(step);
    }
    Err(format!(
        "the proxy at {target} was not ready within {timeout:?} (last: {last})"
    ))
}
