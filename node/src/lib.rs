//! The Meridian region node: configuration, the HTTP API and the domain
//! services behind it (accounts, profiles, telemetry). The `meridian` binary
//! (`main.rs`) is a thin CLI over [`node::run`].
//!
//! Not for: storage engines, CRDTs and Raft (`meridian-replication`), the
//! mesh (`meridian-mesh`) or game servers (`meridian-dgs`).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod erasure;
pub mod error;
pub mod games;
pub mod matchmaking;
pub mod node;
pub mod offers;
pub mod profiles;
pub mod regions;
pub mod replica;
pub mod takeover;
pub mod telemetry;
pub mod tools;
