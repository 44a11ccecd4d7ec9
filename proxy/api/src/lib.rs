//! The protocol between the Weft operator and its proxies (package `weft.proxy.v1`).
//!
//! The `.proto` files under `proto/` are the contract; this crate compiles them with
//! `protox` (no system `protoc`) into prost messages and tonic clients and servers.
//! The proxy depends on this crate and never on `kube`.
//!
//! Beside the messages, the plain types both sides must agree on: a workload's
//! [`SpiffeId`] and a [`ConfigVersion`].

#![forbid(unsafe_code)]

/// `weft.proxy.v1`.
#[allow(
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    reason = "generated code"
)]
pub mod v1 {
    tonic::include_proto!("weft.proxy.v1");
}

pub mod identity;
#[cfg(feature = "testing")]
pub mod testing;
pub mod version;

pub use self::{identity::SpiffeId, version::ConfigVersion};

/// The audience of the ServiceAccount token a proxy sends with `Certify`.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "weft.dev/identity";
