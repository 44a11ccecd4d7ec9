//! The control-plane client: everything the proxy asks of the operator, over TLS to
//! its proxy API.
//!
//! - [`identity`]: the workload certificate, from `Certify`, renewed before it
//!   expires; it makes the proxy ready and gives the data plane its mTLS credentials.
//! - [`discovery`]: the Destination streams (inbound policies, outbound resolutions),
//!   applied and acknowledged, over one mutual-TLS channel made with that certificate.
//! - [`report`]: the inbound denials, reported over the same channel for MeshStatus.
//!
//! Both retry with jittered backoff while the operator is away and keep what they
//! have meanwhile. They write what they hold into [`crate::state`] for the admin
//! server, and hand the data plane what it follows (credentials, resolutions,
//! policies) through watches and handles; nothing here depends on the data plane.

pub mod discovery;
pub mod identity;
pub mod report;
