//! The simulator's own guarantees: same seed → same trace hash, a small
//! CI batch passes, and every injected bug is caught within a few seeds.

use meridian_sim::sim::{run_seed, Bug, SimConfig};

/// A short configuration so the debug-build test stays fast.
fn short(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        duration_s: 4,
        liveness_bound_s: 30,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_same_trace_hash() {
    let a = run_seed(&short(7));
    let b = run_seed(&short(7));
    assert!(!a.trace.is_empty());
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "same seed, different trace hash"
    );
    let c = run_seed(&short(8));
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "different seeds, same trace hash"
    );
}

#[test]
fn ci_batch_passes() {
    for seed in 1..=6 {
        let r = run_seed(&short(seed));
        // Every invariant, liveness included, holds on every seed.
        assert!(
            r.violations.is_empty(),
            "seed {seed} violated: {:?}\n{}",
            r.violations,
            r.trace_text()
        );
        assert!(r.ops > 0 && r.acked > 0, "seed {seed} did no work");
    }
}

#[test]
fn every_injected_bug_is_caught() {
    for bug in Bug::ALL {
        let caught = (1..=6).find_map(|seed| {
            let r = run_seed(&SimConfig {
                bug: Some(bug),
                ..short(seed)
            });
            // Caught by the invariant the bug is meant for.
            r.violations
                .iter()
                .any(|v| v.invariant == bug.invariant())
                .then_some((seed, r))
        });
        let (seed, r) = caught.unwrap_or_else(|| {
            panic!(
                "bug {} not caught by {:?} in 6 seeds",
                bug.name(),
                bug.invariant()
            )
        });
        eprintln!(
            "{} caught at seed {seed}: {:?}",
            bug.name(),
            r.violations.iter().map(|v| v.invariant).collect::<Vec<_>>()
        );
    }
}
