//! Discovery: the operator's indexes of the cluster, and the proxy API's Destination
//! streams over them.

pub mod index;
pub mod policy;
pub mod profile;
pub mod proxies;
pub mod server;
pub mod watch;
