//! Meridian's load and test tooling: [`bots`] behave like players against
//! real nodes over HTTP and report latency with HDR histograms; [`sim`] is
//! the deterministic network-partition simulator (turmoil) behind the
//! `meridian-sim` binary, with its pure checkers in [`checks`].
//!
//! Not for: anything a node runs in production.

pub mod bots;
pub mod checks;
pub mod sim;
