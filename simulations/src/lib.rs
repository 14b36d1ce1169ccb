//! Meridian's load tooling: [`bots`] behave like players against real nodes
//! over HTTP and report latency with HDR histograms. The deterministic
//! partition simulations (turmoil) will live here too.
//!
//! Not for: anything a node runs in production.

pub mod bots;
