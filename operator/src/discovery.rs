//! Discovery: the operator's indexes of the cluster, and the proxy API's Destination
//! streams over them.
//!
//! What is indexed, each in its own module: [`key`] (namespaced names), [`authority`]
//! (what a proxy may ask to resolve), [`services`] (Services and EndpointSlices),
//! [`pods`], and ServiceProfiles ([`profile`]). The [`index`] holds them and the
//! subscriptions; the views handed to proxies are computed from its contents by
//! [`outbound`] (resolutions) and [`inbound`] with [`policy`] (inbound policies).

pub mod authority;
pub mod inbound;
pub mod index;
pub mod key;
pub mod outbound;
pub mod pods;
pub mod policy;
pub mod profile;
pub mod proxies;
pub mod server;
pub mod services;
pub mod watch;
