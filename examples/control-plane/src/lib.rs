//! A reference control plane built from the twine crates: state in etcd (or an embedded
//! in-memory store behind the same [`store::Store`] trait), scheduler shards by
//! entitlement that hold leadership through leases and fence every write, and agents
//! that converge on their assignments.
//!
//! It is an example package for integrators to read and copy: tokio, tonic and
//! etcd-client stay here and never reach the library crates. The key layout is in
//! [`keys`]; the design and its limits are in `README.md` and `docs/SCALE.md`.

pub mod admin;
pub mod agents;
pub mod bench;
pub mod dump;
pub mod keys;
pub mod model;
pub mod sched;
pub mod store;
pub mod taskcontrol;
