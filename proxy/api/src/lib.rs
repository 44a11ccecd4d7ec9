//! The protocol between the Weft operator and its proxies (package `weft.proxy.v1`).
//!
//! The `.proto` files under `proto/` are the contract; this crate compiles them with
//! `protox` (no system `protoc`) into prost messages and tonic clients and servers.
//! The proxy depends on this crate and never on `kube`.

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

#[cfg(feature = "testing")]
pub mod testing;

/// The audience of the ServiceAccount token a proxy sends with `Certify`.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "weft.dev/identity";
