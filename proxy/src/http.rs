//! HTTP on the outbound side: each request of a client connection, HTTP/1 or HTTP/2
//! (gRPC included), is balanced on its own over the destination's endpoints, sent on a
//! pooled connection to the chosen endpoint (mTLS to a meshed one) in the version the
//! client spoke, and counted.
//!
//! The latency of each response's head feeds the endpoint's peak-EWMA estimate, so a
//! slow endpoint gets fewer requests. A destination with no endpoint answers 503. A
//! request that could not be sent (the endpoint refused the connection, or a kept
//! connection had closed) goes to another endpoint, up to three in all, then
//! 502; one that was sent is never sent again.
//!
//! An upgrade (WebSocket) and CONNECT pass through: once the endpoint answers 101 (a
//! CONNECT, 2xx), both connections are joined as TCP.
//!
//! HTTP/1 connections to an endpoint are kept for reuse (at most
//! [`pool::MAX_IDLE_PER_ENDPOINT`]); a connection still busy with a response is skipped,
//! never shared. HTTP/2 needs one connection per endpoint: its requests are
//! multiplexed on it. Bodies and trailers stream through as they come.
//!
//! Inbound, HTTP/2 is served the same way, to the application; HTTP/1 is relayed as
//! it came, read only to be counted ([`relay`]).

//!
//! The rooms, in the order a request passes them: [`server`] accepts the client's
//! connection and hands each request to its [`Destination`] ([`client`]), which picks
//! an endpoint and sends the request on a connection from the [`pool`]; [`body`]
//! holds the bodies passed on either way. [`relay`] and [`framing`] are inbound
//! HTTP/1, relayed as bytes.

pub mod body;
pub mod client;
pub mod framing;
pub mod pool;
pub mod relay;
pub mod server;

use crate::detect::Protocol;

pub use self::{
    body::{Body, GrpcClassified},
    client::{ConnectionCounters, Destination},
    pool::{MAX_IDLE_PER_ENDPOINT, Pool},
    server::serve,
};

/// The HTTP versions the proxy serves, each kept as it is to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    /// The HTTP version `protocol` was detected as, if it is HTTP.
    pub fn detected(protocol: &Protocol) -> Option<Self> {
        match protocol {
            Protocol::Http1 => Some(Self::Http1),
            Protocol::Http2 => Some(Self::Http2),
            Protocol::Tls { .. } | Protocol::Opaque => None,
        }
    }
}
