//! Status publication: one `MeshStatus` per meshed workload, the Mesh's totals, and
//! the status of every ServiceProfile and ServerAuthorization ([`resources`]), computed
//! from the discovery index (pods, policies, profiles) and the connected proxies (what
//! they acknowledged), and written by the Lease holder only.
//!
//! Writes are coalesced: the publisher wakes on any change, pauses [`SETTLE`], computes
//! every status, and writes only those that differ from what it last wrote, and only
//! once they have stopped changing ([`settle`]: 250 ms quiet, at most 2 s held back) —
//! so a burst of changes to one object is one write, and a rollout of fifty pods is a
//! handful of writes per MeshStatus, not hundreds. It also recomputes every [`RESYNC`], since time alone changes nothing but
//! a proxy's policy version can move without a pod event.
//!
//! A MeshStatus is named after its workload and owned by it (garbage collected with
//! it); the publisher also deletes one whose workload has no pod left. Workloads of
//! the same name and different kinds in one namespace share the name: the first kind
//! in [`WorkloadKind`](weft_api::mesh_status::WorkloadKind) order wins, and the others
//! are logged.
//!
//! The computing ([`compute`], [`resources`]) is pure and tested with plain values;
//! the publishing ([`publish`]: kube reads and writes, coalescing) is apart from it.

pub mod compute;
pub mod denials;
pub mod publish;
pub mod resources;
pub mod settle;

pub use compute::{Desired, Totals, compute};
pub use publish::{FIELD_MANAGER, MANAGED_BY, RESYNC, SETTLE, run};
