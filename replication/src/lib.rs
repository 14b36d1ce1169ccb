//! Meridian's state layer: embedded storage ([`store`]), the delta-state CRDTs
//! and rank index behind leaderboards and stats ([`crdt`], [`rank`],
//! [`leaderboard`]), and the economy's per-shard Raft groups ([`economy`]).
//!
//! Not for: HTTP, authentication or anything about clients; the node crate
//! owns those and calls in here.

pub mod crdt;
pub mod economy;
pub mod leaderboard;
pub mod rank;
pub mod store;

pub use store::{Batch, Op, Storage, Store, StoreError};
