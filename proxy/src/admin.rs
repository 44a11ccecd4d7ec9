//! The admin server (port 4191): `/live`, `/ready`, `/metrics`, `/config`,
//! `/shutdown`, and `/probe/<container>/<kind>` (the application's probes, performed
//! by [`crate::probe`]).
//!
//! It reads the proxy's [`State`] and its metrics. `/live`, `/ready`, `/metrics` and
//! the probes answer anyone (the kubelet, Prometheus). `/config` (what the proxy was told: the
//! pod's policies and destinations) and `POST /shutdown` (stop the proxy, for a Job
//! whose work is done when the proxy is not a native sidecar) answer only a client on
//! loopback — a process in the pod itself — and 403 anyone else: the admin port is
//! not captured, so no policy stands in front of it.
//!
//! `/ready` answers 200 only once the proxy has both its identity (a workload
//! certificate) and its configuration from the operator; until then 503 with what is
//! missing, so a native sidecar's startup probe holds the application back.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::JoinHandle,
};

use crate::{
    accept::Backoff,
    metrics::Metrics,
    state::{AppliedConfig, State},
};

/// Binds `addr` and serves until `shutdown` turns true; `POST /shutdown` from loopback
/// notifies `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    state: State,
    stop: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut backoff = Backoff::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    let (wait, log) = backoff.failed(Instant::now());
                    if let Some(suppressed) = log {
                        tracing::warn!(%error, suppressed, retry_in = ?wait, "admin accept failed");
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let (metrics, state, stop) = (metrics.clone(), state.clone(), stop.clone());
            let local = is_loopback(peer.ip());
            let service = service_fn(move |req| {
                let probe = req
                    .uri()
                    .path()
                    .strip_prefix(weft_sidecar::probe::PATH_PREFIX)
                    .filter(|_| req.method() == Method::GET || req.method() == Method::HEAD)
                    .map(|key| (key.to_string(), state.probes.clone()));
                let response = match probe {
                    Some(_) => None,
                    None => Some(respond(&req, local, &metrics, &state, &stop)),
                };
                async move {
                    Ok::<_, Infallible>(match (response, probe) {
                        (Some(response), _) => response,
                        (None, Some((key, prober))) => {
                            let (status, text) = prober.answer(&key).await;
                            plain(status, text)
                        }
                        (None, None) => plain(StatusCode::NOT_FOUND, "not found\n".into()),
                    })
                }
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

/// Whether `ip` is loopback, an IPv4 one mapped into IPv6 included.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The answer to `req`, from a client on loopback when `local`.
fn respond<B>(
    req: &Request<B>,
    local: bool,
    metrics: &Metrics,
    state: &State,
    stop: &Notify,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if matches!(path, "/config" | "/shutdown") && !local {
        return plain(
            StatusCode::FORBIDDEN,
            format!("{path} answers only on loopback, from inside the pod\n"),
        );
    }
    if path == "/shutdown" {
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "POST /shutdown\n".into());
        }
        tracing::info!("shutdown asked for on the admin port");
        stop.notify_one();
        return plain(StatusCode::ACCEPTED, "shutting down\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match path {
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
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("a request")
    }

    #[test]
    fn config_and_shutdown_answer_only_loopback() {
        let (metrics, state, stop) = (Metrics::new(), State::default(), Notify::new());
        for path in ["/config", "/shutdown"] {
            let remote = respond(&get(path), false, &metrics, &state, &stop);
            assert_eq!(remote.status(), StatusCode::FORBIDDEN, "{path}");
        }
        for path in ["/live", "/metrics"] {
            let remote = respond(&get(path), false, &metrics, &state, &stop);
            assert_eq!(remote.status(), StatusCode::OK, "{path}");
        }
        let local = respond(&get("/config"), true, &metrics, &state, &stop);
        assert_eq!(local.status(), StatusCode::OK);
        assert_eq!(
            respond(&get("/shutdown"), true, &metrics, &state, &stop).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn a_local_post_to_shutdown_stops_the_proxy() {
        let (metrics, state, stop) = (Metrics::new(), State::default(), Notify::new());
        let post = Request::post("/shutdown").body(()).expect("a request");
        assert_eq!(
            respond(&post, false, &metrics, &state, &stop).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            respond(&post, true, &metrics, &state, &stop).status(),
            StatusCode::ACCEPTED
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), stop.notified())
            .await
            .expect("the proxy was told to stop");
    }

    #[test]
    fn mapped_loopback_is_loopback() {
        assert!(is_loopback("::ffff:127.0.0.1".parse().expect("an address")));
        assert!(is_loopback("::1".parse().expect("an address")));
        assert!(!is_loopback("198.18.0.7".parse().expect("an address")));
    }
}
