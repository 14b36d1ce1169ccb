//! Meridian's state layer: embedded storage ([`store`]). CRDTs, the rank
//! index and the economy's Raft shards land here next.
//!
//! Not for: HTTP, authentication or anything about clients; the node crate
//! owns those and calls in here.

pub mod store;

pub use store::{Batch, Op, Storage, Store, StoreError};
