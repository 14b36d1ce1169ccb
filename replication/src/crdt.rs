//! Delta-state CRDTs for leaderboards and player stats, and the hybrid logical
//! clock ([`Hlc`]) that stamps their updates.
//!
//! Every type here is a join-semilattice: [`Crdt::merge`] is commutative,
//! associative and idempotent, so replicas that exchanged the same updates
//! hold the same state whatever the order or duplication of delivery. Each
//! mutator returns the *delta* it produced (itself a value of the same type),
//! which is what gets replicated; [`Crdt::delta_since`] recomputes a delta from
//! the update stamps for anti-entropy.
//!
//! Node ids are `u64` ([`NodeId`]): compact in every stamp and cheap to compare.
//! A node derives its id once from its stable name with [`node_id_from_name`].
//!
//! Not for: documents with history (profiles use automerge), or anything that
//! needs a linearizable read-modify-write (the economy uses Raft).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A replica's identity inside every stamp. See [`node_id_from_name`].
pub type NodeId = u64;

/// How far ahead of our physical clock a remote stamp may be before
/// [`HlcClock::observe`] refuses to move our clock to it (10 minutes).
/// Skews below this are absorbed; a node further off is misconfigured.
pub const CLOCK_SKEW_MAX_MS: u64 = 10 * 60 * 1000;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// A remote stamp is further ahead of our clock than [`CLOCK_SKEW_MAX_MS`].
    #[error("remote clock {remote_ms} ms is more than {CLOCK_SKEW_MAX_MS} ms ahead of local {local_ms} ms")]
    ClockSkew { remote_ms: u64, local_ms: u64 },
    /// A counter would leave its `u64` range.
    #[error("counter overflow")]
    Overflow,
    /// Bytes that are not a valid encoding of the type.
    #[error("decode: {0}")]
    Decode(String),
}

/// Derive a stable [`NodeId`] from a node's name (first 8 bytes of SHA-256).
pub fn node_id_from_name(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// A hybrid logical clock timestamp: physical milliseconds, a logical counter
/// for events within one millisecond (or while a faster remote clock leads),
/// and the node id as the final tiebreak. Ordered by `(wall_ms, logical, node)`,
/// so two stamps from different nodes never compare equal.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
    pub node: NodeId,
}

impl Hlc {
    /// The smallest stamp; `delta_since(Hlc::ZERO)` is the whole state.
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        logical: 0,
        node: 0,
    };

    /// A `u64` that orders like `(wall_ms, logical)` (48 + 16 bits), for
    /// compact tiebreaks. Saturates the logical part at `0xffff`.
    pub fn packed(&self) -> u64 {
        (self.wall_ms.min((1 << 48) - 1) << 16) | u64::from(self.logical.min(0xffff))
    }
}

/// The clock of one node. Not thread-safe by itself; the owner wraps it in a
/// mutex.
#[derive(Debug, Clone)]
pub struct HlcClock {
    node: NodeId,
    last: Hlc,
}

impl HlcClock {
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            last: Hlc { node, ..Hlc::ZERO },
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A fresh stamp for a local event at physical time `phys_ms`; strictly
    /// greater than every stamp issued or observed before, even if the
    /// physical clock went backwards.
    pub fn now(&mut self, phys_ms: u64) -> Hlc {
        let next = if phys_ms > self.last.wall_ms {
            Hlc {
                wall_ms: phys_ms,
                logical: 0,
                node: self.node,
            }
        } else if self.last.logical == u32::MAX {
            Hlc {
                wall_ms: self.last.wall_ms.saturating_add(1),
                logical: 0,
                node: self.node,
            }
        } else {
            Hlc {
                wall_ms: self.last.wall_ms,
                logical: self.last.logical + 1,
                node: self.node,
            }
        };
        self.last = next;
        next
    }

    /// Take a remote stamp into account so later local stamps order after it.
    /// A remote clock more than [`CLOCK_SKEW_MAX_MS`] ahead is refused (our
    /// clock is left alone); the data it stamped may still be merged.
    pub fn observe(&mut self, remote: Hlc, phys_ms: u64) -> Result<(), CrdtError> {
        if remote.wall_ms > phys_ms.saturating_add(CLOCK_SKEW_MAX_MS) {
            return Err(CrdtError::ClockSkew {
                remote_ms: remote.wall_ms,
                local_ms: phys_ms,
            });
        }
        if (remote.wall_ms, remote.logical) > (self.last.wall_ms, self.last.logical) {
            self.last = Hlc {
                wall_ms: remote.wall_ms,
                logical: remote.logical,
                node: self.node,
            };
        }
        Ok(())
    }
}

/// What every CRDT here offers.
pub trait Crdt: Clone + PartialEq + Default + Serialize + DeserializeOwned {
    /// Join `other` into `self` (commutative, associative, idempotent).
    fn merge(&mut self, other: &Self);
    /// The part of the state stamped after `since`; `None` if nothing is.
    /// Merging it into a replica that has everything up to `since` yields
    /// this state.
    fn delta_since(&self, since: Hlc) -> Option<Self>;
    /// Compact binary encoding (postcard).
    fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, CrdtError> {
        decode(bytes)
    }
}

/// postcard-encode any serializable value. Serializing our own plain types
/// cannot fail, so a failure yields an empty vec (which then fails to decode
/// loudly instead of panicking here).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// postcard-decode, mapping failures to [`CrdtError::Decode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CrdtError> {
    postcard::from_bytes(bytes).map_err(|e| CrdtError::Decode(e.to_string()))
}

/// Which end of the order an [`ExtremumRegister`] keeps.
pub trait Direction:
    Clone + std::fmt::Debug + Default + PartialEq + Eq + Send + Sync + 'static
{
    /// Whether value `a` is strictly better than `b`.
    fn better<T: Ord>(a: &T, b: &T) -> bool;
}

/// Keeps the largest value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Highest;

/// Keeps the smallest value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lowest;

impl Direction for Highest {
    fn better<T: Ord>(a: &T, b: &T) -> bool {
        a > b
    }
}

impl Direction for Lowest {
    fn better<T: Ord>(a: &T, b: &T) -> bool {
        a < b
    }
}

/// Keeps the best value in direction `D`; among equal values the *earliest*
/// stamp, so "who reached it first" is preserved for tiebreaks. Encodes as
/// its `entry` alone (the direction is in the type, not on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtremumRegister<T, D: Direction> {
    pub entry: Option<(T, Hlc)>,
    #[serde(skip)]
    direction: std::marker::PhantomData<D>,
}

/// Keeps the largest value ([`ExtremumRegister`] towards [`Highest`]).
pub type MaxRegister<T> = ExtremumRegister<T, Highest>;
/// Keeps the smallest value ([`ExtremumRegister`] towards [`Lowest`]).
pub type MinRegister<T> = ExtremumRegister<T, Lowest>;

impl<T, D: Direction> Default for ExtremumRegister<T, D> {
    fn default() -> Self {
        Self::from_entry(None)
    }
}

impl<T, D: Direction> ExtremumRegister<T, D> {
    pub fn from_entry(entry: Option<(T, Hlc)>) -> Self {
        Self {
            entry,
            direction: std::marker::PhantomData,
        }
    }
}

impl<T: Ord + Clone, D: Direction> ExtremumRegister<T, D> {
    /// `(value, stamp)` beats `b`: a better value, or the same value stamped earlier.
    fn wins(a: &(T, Hlc), b: &(T, Hlc)) -> bool {
        D::better(&a.0, &b.0) || (a.0 == b.0 && a.1 < b.1)
    }

    pub fn value(&self) -> Option<&T> {
        self.entry.as_ref().map(|e| &e.0)
    }

    pub fn stamp(&self) -> Option<Hlc> {
        self.entry.as_ref().map(|e| e.1)
    }

    /// Offer a value; returns the delta (`None` if it did not win).
    pub fn set(&mut self, value: T, at: Hlc) -> Option<Self> {
        let d = Self::from_entry(Some((value, at)));
        let before = self.clone();
        self.merge_impl(&d);
        (*self != before).then_some(d)
    }

    fn merge_impl(&mut self, other: &Self) {
        if let Some(o) = &other.entry {
            match &self.entry {
                Some(s) if !Self::wins(o, s) => {}
                _ => self.entry = Some(o.clone()),
            }
        }
    }
}

/// Last writer wins by [`Hlc`] (node id breaks ties); equal stamps with
/// different values (only possible with a broken clock) keep the larger value
/// so merge stays deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    pub entry: Option<(Hlc, T)>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    pub fn value(&self) -> Option<&T> {
        self.entry.as_ref().map(|e| &e.1)
    }

    pub fn stamp(&self) -> Option<Hlc> {
        self.entry.as_ref().map(|e| e.0)
    }

    /// Write a value at `at`; returns the delta (`None` if a later write won).
    pub fn set(&mut self, value: T, at: Hlc) -> Option<Self> {
        let d = Self {
            entry: Some((at, value)),
        };
        let before = self.clone();
        self.merge_impl(&d);
        (*self != before).then_some(d)
    }

    fn merge_impl(&mut self, other: &Self) {
        if let Some(o) = &other.entry {
            match &self.entry {
                Some(s) if s >= o => {}
                _ => self.entry = Some(o.clone()),
            }
        }
    }
}

/// One node's share of a [`PnCounter`]: its increments, decrements, and the
/// stamp of its last change. Each field only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnShare {
    pub p: u64,
    pub n: u64,
    pub stamp: Hlc,
}

/// A positive-negative counter with one share per node: concurrent
/// increments on two nodes both count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    pub shares: BTreeMap<NodeId, PnShare>,
}

impl PnCounter {
    /// The counter's value (sum of increments minus decrements).
    pub fn value(&self) -> i128 {
        self.shares
            .values()
            .map(|s| i128::from(s.p) - i128::from(s.n))
            .sum()
    }

    /// The value clamped into `i64`.
    pub fn value_i64(&self) -> i64 {
        let v = self.value();
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    /// The latest stamp over all shares.
    pub fn stamp(&self) -> Option<Hlc> {
        self.shares.values().map(|s| s.stamp).max()
    }

    /// Add `delta` (may be negative) as node `at.node`; returns the delta
    /// state (that node's whole share).
    pub fn add(&mut self, delta: i64, at: Hlc) -> Result<Self, CrdtError> {
        let share = self.shares.entry(at.node).or_default();
        let mut next = *share;
        if delta >= 0 {
            next.p = next
                .p
                .checked_add(delta.unsigned_abs())
                .ok_or(CrdtError::Overflow)?;
        } else {
            next.n = next
                .n
                .checked_add(delta.unsigned_abs())
                .ok_or(CrdtError::Overflow)?;
        }
        next.stamp = next.stamp.max(at);
        *share = next;
        Ok(Self {
            shares: BTreeMap::from([(at.node, next)]),
        })
    }
}

/// A grow-only set; each element remembers the earliest stamp it was added at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GSet<T: Ord> {
    pub items: BTreeMap<T, Hlc>,
}

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
        }
    }
}

impl<T: Ord + Clone> GSet<T> {
    pub fn contains(&self, item: &T) -> bool {
        self.items.contains_key(item)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Add an item; returns the delta (`None` if it was already present with
    /// an earlier or equal stamp).
    pub fn insert(&mut self, item: T, at: Hlc) -> Option<Self> {
        let d = Self {
            items: BTreeMap::from([(item, at)]),
        };
        let mut changed = false;
        for (k, s) in &d.items {
            match self.items.get_mut(k) {
                Some(cur) if *cur <= *s => {}
                Some(cur) => {
                    *cur = *s;
                    changed = true;
                }
                None => {
                    self.items.insert(k.clone(), *s);
                    changed = true;
                }
            }
        }
        changed.then_some(d)
    }
}

impl<T: Ord + Clone + Serialize + DeserializeOwned, D: Direction> Crdt for ExtremumRegister<T, D> {
    fn merge(&mut self, other: &Self) {
        self.merge_impl(other)
    }
    fn delta_since(&self, since: Hlc) -> Option<Self> {
        self.entry
            .as_ref()
            .filter(|e| e.1 > since)
            .map(|_| self.clone())
    }
}

impl<T: Ord + Clone + Serialize + DeserializeOwned> Crdt for LwwRegister<T> {
    fn merge(&mut self, other: &Self) {
        self.merge_impl(other)
    }
    fn delta_since(&self, since: Hlc) -> Option<Self> {
        self.entry
            .as_ref()
            .filter(|e| e.0 > since)
            .map(|_| self.clone())
    }
}

impl Crdt for PnCounter {
    fn merge(&mut self, other: &Self) {
        for (node, o) in &other.shares {
            let s = self.shares.entry(*node).or_default();
            s.p = s.p.max(o.p);
            s.n = s.n.max(o.n);
            s.stamp = s.stamp.max(o.stamp);
        }
    }
    fn delta_since(&self, since: Hlc) -> Option<Self> {
        let shares: BTreeMap<_, _> = self
            .shares
            .iter()
            .filter(|(_, s)| s.stamp > since)
            .map(|(k, s)| (*k, *s))
            .collect();
        (!shares.is_empty()).then_some(Self { shares })
    }
}

impl<T: Ord + Clone + Serialize + DeserializeOwned> Crdt for GSet<T> {
    fn merge(&mut self, other: &Self) {
        for (k, s) in &other.items {
            match self.items.get_mut(k) {
                Some(cur) => *cur = (*cur).min(*s),
                None => {
                    self.items.insert(k.clone(), *s);
                }
            }
        }
    }
    fn delta_since(&self, since: Hlc) -> Option<Self> {
        let items: BTreeMap<_, _> = self
            .items
            .iter()
            .filter(|(_, s)| **s > since)
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        (!items.is_empty()).then_some(Self { items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hlc() -> impl Strategy<Value = Hlc> {
        (1u64..50, 0u32..3, 0u64..4).prop_map(|(wall_ms, logical, node)| Hlc {
            wall_ms,
            logical,
            node,
        })
    }

    fn max_reg() -> impl Strategy<Value = MaxRegister<i64>> {
        proptest::option::of((-5i64..5, hlc())).prop_map(MaxRegister::from_entry)
    }
    fn min_reg() -> impl Strategy<Value = MinRegister<i64>> {
        proptest::option::of((-5i64..5, hlc())).prop_map(MinRegister::from_entry)
    }
    fn lww_reg() -> impl Strategy<Value = LwwRegister<i64>> {
        proptest::option::of((hlc(), -5i64..5)).prop_map(|entry| LwwRegister { entry })
    }
    fn pn() -> impl Strategy<Value = PnCounter> {
        proptest::collection::btree_map(
            0u64..4,
            (0u64..100, 0u64..100, hlc()).prop_map(|(p, n, stamp)| PnShare { p, n, stamp }),
            0..4,
        )
        .prop_map(|shares| PnCounter { shares })
    }
    fn gset() -> impl Strategy<Value = GSet<u8>> {
        proptest::collection::btree_map(0u8..10, hlc(), 0..6).prop_map(|items| GSet { items })
    }

    fn check_laws<C: Crdt + std::fmt::Debug>(a: &C, b: &C, c: &C) {
        // Commutative.
        let mut ab = a.clone();
        ab.merge(b);
        let mut ba = b.clone();
        ba.merge(a);
        assert_eq!(ab, ba, "commutative");
        // Associative.
        let mut ab_c = ab.clone();
        ab_c.merge(c);
        let mut bc = b.clone();
        bc.merge(c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        assert_eq!(ab_c, a_bc, "associative");
        // Idempotent.
        let mut aa = a.clone();
        aa.merge(a);
        assert_eq!(&aa, a, "idempotent");
        // Encoding round-trips.
        assert_eq!(&C::from_bytes(&a.to_bytes()).unwrap(), a);
        // delta_since(ZERO) is the whole state.
        let mut r = b.clone();
        if let Some(d) = ab.delta_since(Hlc::ZERO) {
            r.merge(&d);
        }
        assert_eq!(r, ab, "delta_since(ZERO) is the whole state");
    }

    proptest! {
        #[test]
        fn max_register_laws(a in max_reg(), b in max_reg(), c in max_reg()) { check_laws(&a, &b, &c) }
        #[test]
        fn min_register_laws(a in min_reg(), b in min_reg(), c in min_reg()) { check_laws(&a, &b, &c) }
        #[test]
        fn lww_register_laws(a in lww_reg(), b in lww_reg(), c in lww_reg()) { check_laws(&a, &b, &c) }
        #[test]
        fn pn_counter_laws(a in pn(), b in pn(), c in pn()) { check_laws(&a, &b, &c) }
        #[test]
        fn gset_laws(a in gset(), b in gset(), c in gset()) { check_laws(&a, &b, &c) }
    }

    /// One operation on one of three replicas.
    #[derive(Debug, Clone)]
    struct OpOn {
        replica: usize,
        value: i64,
        phys: u64,
    }

    fn ops() -> impl Strategy<Value = Vec<OpOn>> {
        proptest::collection::vec(
            (0usize..3, -20i64..20, 0u64..30).prop_map(|(replica, value, phys)| OpOn {
                replica,
                value,
                phys,
            }),
            0..40,
        )
    }

    /// Run `ops` on three replicas with `apply` (returns the delta), then
    /// check: deltas in a shuffled, duplicated order reach the same state as
    /// merging the replicas, and per-replica `delta_since` catches a stale
    /// copy up.
    fn check_deltas<C: Crdt + std::fmt::Debug>(
        ops: &[OpOn],
        order: &[usize],
        apply: impl Fn(&mut C, i64, Hlc) -> Option<C>,
    ) {
        let mut clocks: Vec<HlcClock> = (0..3).map(|n| HlcClock::new(n as u64 + 1)).collect();
        let mut replicas: Vec<C> = vec![C::default(); 3];
        let mut deltas = Vec::new();
        let mut snapshots = Vec::new();
        for op in ops {
            let at = clocks[op.replica].now(op.phys);
            snapshots.push((op.replica, replicas[op.replica].clone(), at));
            if let Some(d) = apply(&mut replicas[op.replica], op.value, at) {
                deltas.push(d);
            }
        }
        let mut full = C::default();
        for r in &replicas {
            full.merge(r);
        }
        let mut via_deltas = C::default();
        for i in order {
            if deltas.is_empty() {
                break;
            }
            via_deltas.merge(&deltas[i % deltas.len()]);
        }
        // Make sure every delta was applied at least once, then duplicates.
        for d in deltas.iter().rev() {
            via_deltas.merge(d);
        }
        assert_eq!(via_deltas, full);
        // A stale snapshot of a replica catches up with delta_since(stamp
        // before the next local op): every later op on that replica had a
        // larger stamp.
        for (replica, snap, at) in snapshots {
            let before = Hlc {
                wall_ms: at.wall_ms,
                logical: at.logical,
                node: at.node.saturating_sub(1),
            };
            let mut caught_up = snap.clone();
            if let Some(d) = replicas[replica].delta_since(before) {
                caught_up.merge(&d);
            }
            assert_eq!(caught_up, replicas[replica]);
        }
    }

    proptest! {
        #[test]
        fn max_register_deltas(ops in ops(), order in proptest::collection::vec(0usize..100, 0..60)) {
            check_deltas::<MaxRegister<i64>>(&ops, &order, |c, v, at| c.set(v, at));
        }
        #[test]
        fn min_register_deltas(ops in ops(), order in proptest::collection::vec(0usize..100, 0..60)) {
            check_deltas::<MinRegister<i64>>(&ops, &order, |c, v, at| c.set(v, at));
        }
        #[test]
        fn lww_register_deltas(ops in ops(), order in proptest::collection::vec(0usize..100, 0..60)) {
            check_deltas::<LwwRegister<i64>>(&ops, &order, |c, v, at| c.set(v, at));
        }
        #[test]
        fn pn_counter_deltas(ops in ops(), order in proptest::collection::vec(0usize..100, 0..60)) {
            check_deltas::<PnCounter>(&ops, &order, |c, v, at| c.add(v, at).ok());
        }
        #[test]
        fn gset_deltas(ops in ops(), order in proptest::collection::vec(0usize..100, 0..60)) {
            check_deltas::<GSet<i64>>(&ops, &order, |c, v, at| c.insert(v.rem_euclid(7), at));
        }
    }

    #[test]
    fn concurrent_increments_on_two_nodes_both_count() {
        let mut a = PnCounter::default();
        let mut b = PnCounter::default();
        let da = a.add(5, HlcClock::new(1).now(10)).unwrap();
        let db = b.add(7, HlcClock::new(2).now(10)).unwrap();
        a.merge(&db);
        b.merge(&da);
        assert_eq!(a, b);
        assert_eq!(a.value(), 12);
    }

    #[test]
    fn counter_overflow_is_an_error() {
        let mut c = PnCounter::default();
        let mut clock = HlcClock::new(1);
        c.add(i64::MAX, clock.now(1)).unwrap();
        c.add(i64::MAX, clock.now(1)).unwrap();
        assert_eq!(c.add(i64::MAX, clock.now(1)), Err(CrdtError::Overflow));
        assert_eq!(c.value_i64(), i64::MAX);
    }

    #[test]
    fn hlc_is_monotonic_under_backwards_clock_and_skew() {
        let mut c = HlcClock::new(7);
        let a = c.now(1_000);
        let b = c.now(900); // clock went backwards
        assert!(b > a);
        // A remote node 3 minutes ahead: our next stamp orders after it.
        let remote = Hlc {
            wall_ms: 1_000 + 180_000,
            logical: 4,
            node: 9,
        };
        c.observe(remote, 1_000).unwrap();
        let d = c.now(1_001);
        assert!(d > remote);
        // At the edge of the allowed skew, and just beyond it.
        let edge = Hlc {
            wall_ms: 2_000 + CLOCK_SKEW_MAX_MS,
            logical: 0,
            node: 9,
        };
        assert!(c.observe(edge, 2_000).is_ok());
        let beyond = Hlc {
            wall_ms: 2_000 + CLOCK_SKEW_MAX_MS + 1,
            logical: 0,
            node: 9,
        };
        let before = c.now(2_000);
        assert!(matches!(
            c.observe(beyond, 2_000),
            Err(CrdtError::ClockSkew { .. })
        ));
        assert!(c.now(2_000) > before);
        // Logical counter overflow rolls into the next millisecond.
        let mut o = HlcClock::new(1);
        o.last = Hlc {
            wall_ms: 5,
            logical: u32::MAX,
            node: 1,
        };
        let n = o.now(5);
        assert_eq!((n.wall_ms, n.logical), (6, 0));
    }

    #[test]
    fn max_register_keeps_earliest_stamp_on_ties() {
        let mut r = MaxRegister::default();
        let mut c = HlcClock::new(1);
        let first = c.now(1);
        assert!(r.set(10i64, first).is_some());
        assert!(r.set(10, c.now(2)).is_none());
        assert_eq!(r.stamp(), Some(first));
        assert!(r.set(9, c.now(3)).is_none());
        assert!(r.set(11, c.now(4)).is_some());
        assert_eq!(r.value(), Some(&11));
    }

    #[test]
    fn decode_garbage_is_an_error() {
        assert!(matches!(
            PnCounter::from_bytes(&[0xff, 0xff, 0xff]),
            Err(CrdtError::Decode(_))
        ));
    }

    #[test]
    fn extremum_registers_encode_as_their_entry_alone() {
        // The direction lives in the type: stored and replicated bytes are
        // the entry's, whichever register holds it.
        let at = Hlc {
            wall_ms: 7,
            logical: 1,
            node: 3,
        };
        let entry = Some((5i64, at));
        assert_eq!(MaxRegister::from_entry(entry).to_bytes(), encode(&entry));
        assert_eq!(MinRegister::from_entry(entry).to_bytes(), encode(&entry));
        let back = MinRegister::<i64>::from_bytes(&encode(&entry)).unwrap();
        assert_eq!(back.value(), Some(&5));
        // Same value: the earlier stamp wins in both directions.
        let later = Hlc { wall_ms: 9, ..at };
        let mut max = MaxRegister::from_entry(Some((5i64, later)));
        assert!(max.set(5, at).is_some());
        assert_eq!(max.stamp(), Some(at));
        let mut min = MinRegister::from_entry(Some((5i64, at)));
        assert!(min.set(5, later).is_none());
        assert!(min.set(4, later).is_some());
        assert_eq!(min.value(), Some(&4));
    }

    #[test]
    fn node_id_is_stable() {
        assert_eq!(node_id_from_name("eu-west"), node_id_from_name("eu-west"));
        assert_ne!(node_id_from_name("eu-west"), node_id_from_name("us-east"));
    }
}
