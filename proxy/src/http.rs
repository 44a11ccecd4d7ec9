//! HTTP/1 on the outbound side: each request of a client connection is balanced on
//! its own over the destination's endpoints, sent on a pooled connection to the chosen
//! endpoint (mTLS to a meshed one), and counted.
//!
//! The latency of each response's head feeds the endpoint's peak-EWMA estimate, so a
//! slow endpoint gets fewer requests. A destination with no endpoint answers 503; an
//! endpoint that cannot be reached, 502. An upgrade (WebSocket) is passed through:
//! once the endpoint answers 101, both upgraded connections are joined as TCP.
//!
//! Connections to an endpoint are kept for reuse (at most [`MAX_IDLE_PER_ENDPOINT`]);
//! a connection still busy with a response is skipped, never shared.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::{
    body::{Bytes, Incoming},
    client::conn::http1::SendRequest,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use weft_proxy_api::v1::Resolution;

use crate::{
    balance::Balancer,
    metrics::{Direction, Metrics, TcpLabels},
    tls::Tls,
};

/// The most idle connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// The most endpoints whose connections are kept.
const MAX_POOLED_ENDPOINTS: usize = 1024;

type Body = Either<Incoming, Full<Bytes>>;

/// Connections to endpoints, for reuse. Shared by every client connection.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Incoming>>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection to `addr` ready for a request, if one is kept.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_mut(&addr)?;
        senders.retain(|s| !s.is_closed());
        let ready = senders.iter().position(SendRequest::is_ready)?;
        Some(senders.swap_remove(ready))
    }

    /// Keeps `sender` for the next request to `addr` (it becomes ready once the
    /// response in flight on it is done).
    fn checkin(&self, addr: SocketAddr, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_POOLED_ENDPOINTS && !idle.contains_key(&addr) {
            idle.clear();
        }
        let senders = idle.entry(addr).or_default();
        senders.retain(|s| !s.is_closed());
        if senders.len() < MAX_IDLE_PER_ENDPOINT {
            senders.push(sender);
        }
    }
}

/// Where one client connection's requests go.
#[derive(Debug)]
pub struct Destination {
    pub authority: String,
    pub resolution: watch::Receiver<Option<Arc<Resolution>>>,
    pub balancer: Arc<Balancer>,
    pub pool: Arc<Pool>,
    pub tls: Option<Tls>,
    pub metrics: Arc<Metrics>,
}

/// Serves the HTTP/1 client connection `io`, sending each request to an endpoint of
/// `destination`.
pub async fn serve_outbound<I>(io: I, destination: Arc<Destination>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let destination = destination.clone();
        async move { Ok::<_, Infallible>(destination.proxy(request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        // A malformed request gets its 400 from hyper; a reset client, nothing.
        tracing::debug!(%error, "HTTP/1 client connection ended");
    }
}

impl Destination {
    async fn proxy(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let mut labels = TcpLabels::new(Direction::Outbound);
        labels.authority = Some(self.authority.clone());
        let resolution = self.resolution.borrow().clone().unwrap_or_default();
        let endpoints = crate::tcp::endpoint_addrs(&resolution);
        let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|(a, w, _)| (*a, *w)).collect();
        let Some((chosen, in_flight)) = self.balancer.pick(&weighted) else {
            let labels = self.metrics.request_started(&labels);
            return self.answer(&labels, started, StatusCode::SERVICE_UNAVAILABLE);
        };
        let (addr, _, index) = endpoints[chosen];
        let endpoint = &resolution.endpoints[index];
        let identity = crate::tcp::label_endpoint(&mut labels, endpoint, self.tls.is_some());
        let labels = self.metrics.request_started(&labels);

        let sender = match self.pool.checkout(addr) {
            Some(sender) => Some(sender),
            None => self.connect(addr, identity.as_deref()).await,
        };
        let Some(mut sender) = sender else {
            return self.answer(&labels, started, StatusCode::BAD_GATEWAY);
        };
        let upgrading = request.headers().contains_key(header::UPGRADE);
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
        let mut response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%addr, %error, "the endpoint failed the request");
                return self.answer(&labels, started, StatusCode::BAD_GATEWAY);
            }
        };
        in_flight.load().observe(started.elapsed());
        drop(in_flight);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(join_upgraded(client_upgrade, server_upgrade));
            }
        } else {
            self.pool.checkin(addr, sender);
        }
        self.metrics
            .response(&labels, response.status().as_u16(), started.elapsed());
        response.map(Either::Left)
    }

    /// A connection to the endpoint `addr`, over mTLS when it has an identity.
    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Option<SendRequest<Incoming>> {
        let tcp = crate::tcp::connect(addr, Direction::Outbound, &self.metrics).await?;
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                let tls = crate::tcp::connect_mtls(tls, tcp, identity, &self.metrics).await?;
                handshake(tls).await
            }
            _ => handshake(tcp).await,
        }
    }

    /// An answer of the proxy's own, counted like the endpoint's would be.
    fn answer(&self, labels: &TcpLabels, started: Instant, status: StatusCode) -> Response<Body> {
        self.metrics
            .response(labels, status.as_u16(), started.elapsed());
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        *response.status_mut() = status;
        response
    }
}

async fn handshake<I>(io: I) -> Option<SendRequest<Incoming>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "HTTP/1 handshake with the endpoint failed");
            return None;
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "connection to the endpoint ended");
        }
    });
    Some(sender)
}

/// Joins an upgraded client connection with the upgraded endpoint connection.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(server)) = (client.await, server.await) else {
        tracing::debug!("an upgrade did not complete");
        return;
    };
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
