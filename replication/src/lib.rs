//! Meridian's state layer: embedded storage ([`store`]), the delta-state CRDTs
//! (leaderboards and stats land next),
//! and the economy's per-shard Raft groups ([`economy`]).
//!
//! Not for: HTTP, authentication or anything about clients; the node crate
//! owns those and calls in here.

pub mod economy;
pub mod store;

pub use store::{Batch, Op, Storage, Store, StoreError};
