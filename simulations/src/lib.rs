//! Meridian's load and test tooling: [`bots`] behave like players against
//! real nodes over HTTP and report latency with HDR histograms; [`sim`] is
//! the deterministic network-partition simulator (turmoil) behind the
//! `meridian-sim` binary, with its pure checkers in [`checks`];
//! [`membership`] runs SWIM (foca) over turmoil for both the simulator and
//! the membership-only scale runs (`--membership-only`).
//!
//! Not for: anything a node runs in production.

pub mod bots;
pub mod checks;
pub mod membership;
pub mod sim;
