//! Pure pieces of the simulator: the seeded RNG, the per-account
//! linearizability checker and percentiles. No I/O, no turmoil.

use std::collections::HashSet;

/// SplitMix64: tiny, seedable, the same on every platform. The simulator
/// draws every random choice (workload, faults, timeouts, skew) from it.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`; `lo` when the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

/// One operation of a per-account history, for the linearizability check.
/// Times are simulated microseconds; an effect's interval runs from its
/// first invocation to the moment its final outcome was known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistOp {
    pub invoke: u64,
    pub complete: u64,
    pub kind: HistKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistKind {
    /// The balance changes by this much (grant, purchase, transfer leg).
    Add(i64),
    /// A linearizable read returned this balance.
    Read(i64),
}

/// Outcome of [`linearizable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinResult {
    Ok,
    Violation,
    /// The search gave up (state budget); counted as neither.
    Unknown,
}

/// Wing-Gong-Lowe search with a visited-state cache (as Porcupine does) for
/// a counter register starting at 0: is there a total order of the ops,
/// consistent with real time, in which every read returns the sum of the
/// adds before it?
pub fn linearizable(ops: &[HistOp], budget: usize) -> LinResult {
    let n = ops.len();
    if n == 0 {
        return LinResult::Ok;
    }
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.complete));
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, i64)> = HashSet::new();
    // Explicit DFS stack: (done set, value).
    let mut stack: Vec<(Vec<u64>, i64)> = vec![(vec![0; words], 0)];
    let mut steps = 0usize;
    while let Some((done, value)) = stack.pop() {
        steps += 1;
        if steps > budget {
            return LinResult::Unknown;
        }
        let is_done = |i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        let pending: Vec<usize> = (0..n).filter(|&i| !is_done(i)).collect();
        if pending.is_empty() {
            return LinResult::Ok;
        }
        let min_complete = pending.iter().map(|&i| ops[i].complete).min().unwrap_or(0);
        for &i in pending.iter().rev() {
            let op = &ops[i];
            if op.invoke > min_complete {
                continue;
            }
            let next = match op.kind {
                HistKind::Add(d) => value + d,
                HistKind::Read(v) if v == value => value,
                HistKind::Read(_) => continue,
            };
            let mut d2 = done.clone();
            d2[i / 64] |= 1 << (i % 64);
            if seen.insert((d2.clone(), next)) {
                stack.push((d2, next));
            }
        }
    }
    LinResult::Violation
}

/// The `q`-quantile (0..=1) of `v` (sorted in place); 0 when empty.
pub fn percentile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoke: u64, complete: u64, kind: HistKind) -> HistOp {
        HistOp {
            invoke,
            complete,
            kind,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(0, 1, HistKind::Add(10)),
            op(2, 3, HistKind::Read(10)),
            op(4, 5, HistKind::Add(-3)),
            op(6, 7, HistKind::Read(7)),
        ];
        assert_eq!(linearizable(&h, 100_000), LinResult::Ok);
    }

    #[test]
    fn concurrent_add_may_or_may_not_be_seen() {
        let h = vec![
            op(0, 10, HistKind::Add(5)),
            op(1, 2, HistKind::Read(0)),
            op(3, 4, HistKind::Read(5)),
        ];
        assert_eq!(linearizable(&h, 100_000), LinResult::Ok);
    }

    #[test]
    fn stale_read_after_ack_is_a_violation() {
        let h = vec![op(0, 1, HistKind::Add(5)), op(2, 3, HistKind::Read(0))];
        assert_eq!(linearizable(&h, 100_000), LinResult::Violation);
        // A read going back after a newer value was seen.
        let h = vec![
            op(0, 10, HistKind::Add(5)),
            op(1, 2, HistKind::Read(5)),
            op(3, 4, HistKind::Read(0)),
        ];
        assert_eq!(linearizable(&h, 100_000), LinResult::Violation);
    }

    #[test]
    fn rng_is_reproducible() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!((0..1000).all(|_| a.range(3, 9) < 9));
    }
}
