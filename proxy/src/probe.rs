//! The application's probes, performed for the kubelet ([`weft_sidecar::probe`] says
//! why and how the injector rewrites them).
//!
//! The kubelet asks the admin port `/probe/<container>/<kind>`; the proxy performs the
//! original check against the application on the pod's own address — where the
//! kubelet would have — within the probe's timeout, and answers 200, or 503 with what
//! failed. Only the checks the injector listed are performed; any other path under
//! `/probe/` is 404.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use weft_sidecar::probe::{Check, Probe, Probes};

/// The most bytes of a probed application's response head read.
const MAX_HEAD: usize = 16 * 1024;
/// The most bytes of a gRPC health response read.
const MAX_GRPC_BODY: usize = 1024;

/// Performs the listed probes against the application at `host`.
#[derive(Clone, Debug, Default)]
pub struct Prober {
    probes: Arc<Probes>,
    host: Option<IpAddr>,
}

impl Prober {
    /// Probes on `pod_ip` (loopback when the pod's address is unknown).
    pub fn new(probes: Probes, pod_ip: Option<IpAddr>) -> Self {
        Self {
            probes: Arc::new(probes),
            host: pod_ip,
        }
    }

    /// The answer to the probe `key` (`<container>/<kind>`): its status and a line
    /// saying what was found.
    pub async fn answer(&self, key: &str) -> (StatusCode, String) {
        let Some(probe) = self.probes.get(key) else {
            return (StatusCode::NOT_FOUND, format!("no probe {key}\n"));
        };
        match self.check(probe).await {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(failure) => {
                tracing::debug!(probe = key, %failure, "probe failed");
                (StatusCode::SERVICE_UNAVAILABLE, format!("{failure}\n"))
            }
        }
    }

    async fn check(&self, probe: &Probe) -> Result<(), String> {
        let host = self.host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
        let work = async {
            match &probe.check {
                Check::Tcp { port } => connect(SocketAddr::new(host, *port)).await.map(drop),
                Check::Http {
                    port,
                    path,
                    headers,
                } => http_get(SocketAddr::new(host, *port), path, headers).await,
                Check::Grpc { port, service } => {
                    grpc_health(SocketAddr::new(host, *port), service).await
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

/// Connects to the application at `addr`, as the inbound side does.
async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    crate::transport::open(addr, true)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// An HTTP/1.1 GET of `path` on `addr`, succeeding on 200–399 as the kubelet's does.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut stream = connect(addr).await?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/weft\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        // The injector copied these from the pod spec; a line break would split the
        // request, so such a header is left out.
        if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let code = response.code.unwrap_or_default();
                return if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("GET {path} on {addr} answered {code}"))
                };
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!(
                    "GET {path} on {addr}: the response head is too large"
                ));
            }
            Err(e) => return Err(format!("GET {path} on {addr}: not an HTTP response ({e})")),
        }
        let mut buf = [0u8; 1024];
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("GET {path} on {addr}: closed before answering"));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// `grpc.health.v1.Health/Check` of `service` on `addr` (HTTP/2 without TLS),
/// succeeding when it answers SERVING.
async fn grpc_health(addr: SocketAddr, service: &str) -> Result<(), String> {
    let stream = connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("no HTTP/2 on {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // HealthCheckRequest { string service = 1; }, in a gRPC frame.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let request = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the health check on {addr} failed: {e}"))?;
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(format!(
            "the health check on {addr} answered HTTP {}",
            parts.status
        ));
    }
    let limited = http_body_util::Limited::new(body, MAX_GRPC_BODY);
    let collected = limited
        .collect()
        .await
        .map_err(|e| format!("the health check on {addr}: {e}"))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if grpc_status != "0" {
        return Err(format!(
            "the health check of {service:?} on {addr} failed with grpc-status {grpc_status:?}"
        ));
    }
    let body = collected.to_bytes();
    match serving_status(&body) {
        Some(1) => Ok(()),
        status => Err(format!(
            "the health check of {service:?} on {addr} answered {}",
            match status {
                Some(0) => "UNKNOWN",
                Some(2) => "NOT_SERVING",
                Some(3) => "SERVICE_UNKNOWN",
                _ => "something unreadable",
            }
        )),
    }
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The `status` of a framed `HealthCheckResponse` (0, UNKNOWN, when absent).
fn serving_status(body: &[u8]) -> Option<u64> {
    let (prefix, message) = body.split_at_checked(5)?;
    if prefix[0] != 0 {
        return None; // compressed: not something a health check sends
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let message = message.get(..len)?;
    let mut status = 0;
    let mut i = 0;
    while i < message.len() {
        let (tag, next) = varint(message, i)?;
        i = next;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                let (value, next) = varint(message, i)?;
                status = value;
                i = next;
            }
            (_, 0) => i = varint(message, i)?.1,
            (_, 2) => {
                let (len, next) = varint(message, i)?;
                i = next.checked_add(usize::try_from(len).ok()?)?;
            }
            (_, 5) => i += 4,
            (_, 1) => i += 8,
            _ => return None,
        }
    }
    (i == message.len()).then_some(status)
}

fn varint(bytes: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(i)?;
        i += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn prober(key: &str, check: Check) -> Prober {
        Prober::new(
            Probes::from([(
                key.to_string(),
                Probe {
                    check,
                    timeout_seconds: 1,
                },
            )]),
            None,
        )
    }

    /// A listener on a free loopback port, and its port.
    async fn listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_only_while_the_application_listens() {
        let (listener, port) = listener().await;
        let probe = prober("app/readiness", Check::Tcp { port });
        assert_eq!(probe.answer("app/readiness").await.0, StatusCode::OK);
        drop(listener);
        let (status, why) = probe.answer("app/readiness").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("cannot connect"), "{why}");
        // Only listed probes are performed.
        assert_eq!(probe.answer("app/liveness").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn an_http_probe_sends_the_original_request_and_judges_the_status() {
        let (listener, port) = listener().await;
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for status in ["204 No Content", "500 Internal Server Error"] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        let probe = prober(
            "app/liveness",
            Check::Http {
                port,
                path: "/healthz?deep=1".into(),
                headers: vec![("X-Probe".into(), "weft".into())],
            },
        );
        assert_eq!(probe.answer("app/liveness").await.0, StatusCode::OK);
        let (status, why) = probe.answer("app/liveness").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("answered 500"), "{why}");
        let requests = server.await.unwrap();
        assert!(
            requests[0].starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(requests[0].contains("X-Probe: weft\r\n"), "{}", requests[0]);
    }

    #[tokio::test]
    async fn a_probe_that_gets_no_answer_fails_within_its_timeout() {
        let (listener, port) = listener().await;
        let probe = prober(
            "app/readiness",
            Check::Http {
                port,
                path: "/".into(),
                headers: Vec::new(),
            },
        );
        let started = std::time::Instant::now();
        let (status, why) = probe.answer("app/readiness").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("no answer within"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    /// A gRPC health server on loopback answering `status` (1: SERVING) for `service`
    /// and SERVICE_UNKNOWN for anything else.
    async fn health_server(service: &'static str, status: u8) -> u16 {
        use http_body_util::StreamBody;
        use hyper::body::{Frame, Incoming};
        let (listener, port) = listener().await;
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let serve = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let asked = &body[5..];
                    let known = asked.is_empty() && service.is_empty()
                        || asked.get(2..) == Some(service.as_bytes());
                    let message = [0x08, if known { status } else { 3 }];
                    let mut data = vec![0u8, 0, 0, 0, 2];
                    data.extend_from_slice(&message);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(Bytes::from(data))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures::stream::iter(frames)))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), serve),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn a_grpc_probe_passes_only_when_the_service_is_serving() {
        let port = health_server("books", 1).await;
        let check = |service: &str| {
            prober(
                "app/readiness",
                Check::Grpc {
                    port,
                    service: service.into(),
                },
            )
        };
        assert_eq!(
            check("books").answer("app/readiness").await.0,
            StatusCode::OK
        );
        let (status, why) = check("films").answer("app/readiness").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("SERVICE_UNKNOWN"), "{why}");
        let port = health_server("", 2).await;
        let (status, why) = prober(
            "app/readiness",
            Check::Grpc {
                port,
                service: String::new(),
            },
        )
        .answer("app/readiness")
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("NOT_SERVING"), "{why}");
    }

    #[test]
    fn health_responses_are_read_field_by_field() {
        let framed = |message: &[u8]| {
            let mut body = vec![0u8];
            body.extend_from_slice(&(message.len() as u32).to_be_bytes());
            body.extend_from_slice(message);
            body
        };
        assert_eq!(serving_status(&framed(&[0x08, 0x01])), Some(1));
        assert_eq!(serving_status(&framed(&[0x08, 0x02])), Some(2));
        assert_eq!(serving_status(&framed(&[])), Some(0));
        // An unknown length-delimited field is skipped.
        assert_eq!(
            serving_status(&framed(&[0x12, 0x01, 0xff, 0x08, 0x01])),
            Some(1)
        );
        assert_eq!(serving_status(&framed(&[0x08])), None);
        assert_eq!(serving_status(&[0, 0, 0]), None);
        assert_eq!(serving_status(&framed(&[0x12, 0x09, 0x01])), None);
    }
}
