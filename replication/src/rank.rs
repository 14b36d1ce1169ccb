//! The in-memory rank index of one leaderboard: an order-statistic counted
//! B+tree over compact keys, plus a player → key map.
//!
//! Every operation is O(log n): insert/update/remove, rank of a player, and
//! the start of a top-N page at any offset (a page then costs O(limit)).
//! Ties are broken deterministically: equal scores order by the smaller
//! `tiebreak` first (callers pass the packed HLC of the entry's last update,
//! so the earlier update ranks higher), then by `origin` (the HLC's node),
//! then by the player's interned id. An HLC stamp is unique per
//! (node, event), so with HLC tiebreaks every replica orders equal scores
//! the same way; the node-local interned id only decides between stamps
//! equal in wall time, logical counter and the low 32 bits of the node id.
//!
//! Memory: an entry is a 16-byte order key plus an 8-byte tail (origin,
//! interned player id) in a leaf (about 24–35 bytes at typical fill), plus
//! one 24-byte slot in the player → key hash map. Measure with
//! [`RankIndex::memory_bytes`].
//!
//! Not for: persistence or CRDT semantics (the leaderboard engine owns
//! those); player ids are interned `u32`s assigned by the caller.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// Sort direction of a board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Highest score first.
    #[default]
    Desc,
    /// Lowest score first.
    Asc,
}

/// One ranked row. `rank` is 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankedEntry {
    pub rank: u64,
    pub player: u32,
    pub score: i64,
    pub tiebreak: u64,
}

/// Keys per leaf and children per inner node of the production index.
const LEAF_CAP: usize = 128;
const INNER_CAP: usize = 64;

/// An order-statistic index for one board.
pub struct RankIndex {
    order: SortOrder,
    tree: Tree<LEAF_CAP, INNER_CAP>,
    /// Player → (order key, origin), packed to 4-byte alignment (24-byte
    /// slots instead of 48 for `(u32, (u128, u32))`).
    by_player: HashMap<u32, PackedKey, FxBuild>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct PackedKey([u32; 5]);

impl PackedKey {
    fn new(k: u128, origin: u32) -> Self {
        Self([
            k as u32,
            (k >> 32) as u32,
            (k >> 64) as u32,
            (k >> 96) as u32,
            origin,
        ])
    }
    fn key(self) -> u128 {
        let [a, b, c, d, _] = self.0.map(u128::from);
        a | (b << 32) | (c << 64) | (d << 96)
    }
    /// The tree key of `player` under this order key and origin.
    fn tree_key(self, player: u32) -> Key {
        (self.key(), tail(self.0[4], player))
    }
}

/// The low half of a tree key: origin node, then player.
fn tail(origin: u32, player: u32) -> u64 {
    (u64::from(origin) << 32) | u64::from(player)
}

impl RankIndex {
    pub fn new(order: SortOrder) -> Self {
        Self {
            order,
            tree: Tree::new(),
            by_player: HashMap::with_hasher(FxBuild),
        }
    }

    pub fn order(&self) -> SortOrder {
        self.order
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree.len
    }

    pub fn is_empty(&self) -> bool {
        self.tree.len == 0
    }

    /// Insert or move a player's entry. `tiebreak` orders equal scores
    /// (smaller first), then `origin`. Returns `true` if anything changed.
    pub fn upsert(&mut self, player: u32, score: i64, tiebreak: u64, origin: u32) -> bool {
        let new = PackedKey::new(order_key(self.order, score, tiebreak), origin);
        match self.by_player.insert(player, new) {
            Some(old) if old == new => false,
            Some(old) => {
                let removed = self.tree.remove(old.tree_key(player));
                debug_assert!(removed, "rank index lost an entry");
                self.tree.insert(new.tree_key(player));
                true
            }
            None => {
                self.tree.insert(new.tree_key(player));
                true
            }
        }
    }

    /// Remove a player's entry. Returns `true` if it existed.
    pub fn remove(&mut self, player: u32) -> bool {
        match self.by_player.remove(&player) {
            Some(k) => self.tree.remove(k.tree_key(player)),
            None => false,
        }
    }

    /// The player's current row, if ranked.
    pub fn get(&self, player: u32) -> Option<RankedEntry> {
        let k = self.by_player.get(&player)?.tree_key(player);
        let rank = self.tree.rank(k) as u64 + 1;
        Some(self.entry(rank, k))
    }

    /// `limit` rows starting at 0-based position `offset`.
    pub fn top(&self, offset: usize, limit: usize) -> Vec<RankedEntry> {
        let mut keys = Vec::with_capacity(limit.min(self.len().saturating_sub(offset)));
        self.tree.collect_from(offset, limit, &mut keys);
        keys.into_iter()
            .enumerate()
            .map(|(i, k)| self.entry((offset + i) as u64 + 1, k))
            .collect()
    }

    /// Up to `n` rows above the player, the player, and up to `n` below.
    /// Empty if the player is not ranked.
    pub fn around(&self, player: u32, n: usize) -> Vec<RankedEntry> {
        let Some(k) = self.by_player.get(&player) else {
            return Vec::new();
        };
        let pos = self.tree.rank(k.tree_key(player));
        let start = pos.saturating_sub(n);
        self.top(start, (pos - start).saturating_add(1).saturating_add(n))
    }

    /// Approximate heap bytes held by this index.
    pub fn memory_bytes(&self) -> usize {
        let map_slot = std::mem::size_of::<(u32, PackedKey)>() + 1;
        self.tree.memory_bytes() + self.by_player.capacity() * map_slot
    }

    fn entry(&self, rank: u64, (k, tail): Key) -> RankedEntry {
        RankedEntry {
            rank,
            player: tail as u32,
            score: score_of(self.order, k),
            tiebreak: k as u64,
        }
    }
}

/// The 128-bit key that sorts ascending in the board's order: the score
/// mapped to an order-preserving `u64` (inverted for descending boards) in
/// the high half, the tiebreak in the low half.
fn order_key(order: SortOrder, score: i64, tiebreak: u64) -> u128 {
    let s = (score as u64) ^ (1 << 63);
    let s = match order {
        SortOrder::Asc => s,
        SortOrder::Desc => !s,
    };
    (u128::from(s) << 64) | u128::from(tiebreak)
}

fn score_of(order: SortOrder, k: u128) -> i64 {
    let s = (k >> 64) as u64;
    let s = match order {
        SortOrder::Asc => s,
        SortOrder::Desc => !s,
    };
    (s ^ (1 << 63)) as i64
}

/// FxHash (rustc's hasher): fast for small integer keys, no DoS concern
/// because keys are our own interned ids.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FxBuild;

pub(crate) struct Fx(u64);

const FX_K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(FX_K);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(FX_K);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(FX_K);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

// ---------------------------------------------------------------------------
// Counted B+tree in two arenas (leaves, inner nodes) addressed by u32.

type Key = (u128, u64);

struct Leaf<const L: usize> {
    len: u32,
    keys: [u128; L],
    players: [u64; L],
}

impl<const L: usize> Leaf<L> {
    fn empty() -> Self {
        Self {
            len: 0,
            keys: [0; L],
            players: [0; L],
        }
    }
    fn key(&self, i: usize) -> Key {
        (self.keys[i], self.players[i])
    }
    fn search(&self, key: Key) -> Result<usize, usize> {
        let n = self.len as usize;
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
    fn insert_at(&mut self, pos: usize, key: Key) {
        let n = self.len as usize;
        self.keys.copy_within(pos..n, pos + 1);
        self.players.copy_within(pos..n, pos + 1);
        self.keys[pos] = key.0;
        self.players[pos] = key.1;
        self.len += 1;
    }
    fn remove_at(&mut self, pos: usize) {
        let n = self.len as usize;
        self.keys.copy_within(pos + 1..n, pos);
        self.players.copy_within(pos + 1..n, pos);
        self.len -= 1;
    }
}

/// `sep[i]` (i ≥ 1) is a lower bound of every key under `children[i]` and
/// greater than every key under `children[i - 1]`; `sep[0]` is unused.
struct Inner<const I: usize> {
    len: u32,
    children: [u32; I],
    counts: [u32; I],
    sep_k: [u128; I],
    sep_p: [u64; I],
}

impl<const I: usize> Inner<I> {
    fn empty() -> Self {
        Self {
            len: 0,
            children: [0; I],
            counts: [0; I],
            sep_k: [0; I],
            sep_p: [0; I],
        }
    }
    fn sep(&self, i: usize) -> Key {
        (self.sep_k[i], self.sep_p[i])
    }
    /// The child whose range holds `key`.
    fn find_child(&self, key: Key) -> usize {
        // Largest i in 1..len with sep(i) <= key, else 0.
        let (mut lo, mut hi) = (1usize, self.len as usize);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.sep(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }
    fn insert_at(&mut self, pos: usize, child: u32, count: u32, sep: Key) {
        let n = self.len as usize;
        self.children.copy_within(pos..n, pos + 1);
        self.counts.copy_within(pos..n, pos + 1);
        self.sep_k.copy_within(pos..n, pos + 1);
        self.sep_p.copy_within(pos..n, pos + 1);
        self.children[pos] = child;
        self.counts[pos] = count;
        self.sep_k[pos] = sep.0;
        self.sep_p[pos] = sep.1;
        self.len += 1;
    }
    fn remove_at(&mut self, pos: usize) {
        let n = self.len as usize;
        self.children.copy_within(pos + 1..n, pos);
        self.counts.copy_within(pos + 1..n, pos);
        self.sep_k.copy_within(pos + 1..n, pos);
        self.sep_p.copy_within(pos + 1..n, pos);
        self.len -= 1;
    }
    fn total(&self) -> u32 {
        self.counts[..self.len as usize].iter().sum()
    }
}

struct Tree<const L: usize, const I: usize> {
    // Boxed so arena growth never over-allocates whole nodes.
    leaves: Vec<Box<Leaf<L>>>,
    free_leaves: Vec<u32>,
    inners: Vec<Box<Inner<I>>>,
    free_inners: Vec<u32>,
    root: u32,
    /// 0: the root is a leaf; h: the root is an inner node h levels above
    /// the leaves.
    height: u32,
    len: usize,
}

impl<const L: usize, const I: usize> Tree<L, I> {
    fn new() -> Self {
        assert!(L >= 4 && I >= 4, "node capacities too small");
        Self {
            leaves: vec![Box::new(Leaf::empty())],
            free_leaves: Vec::new(),
            inners: Vec::new(),
            free_inners: Vec::new(),
            root: 0,
            height: 0,
            len: 0,
        }
    }

    fn memory_bytes(&self) -> usize {
        self.leaves.len() * std::mem::size_of::<Leaf<L>>()
            + self.inners.len() * std::mem::size_of::<Inner<I>>()
            + (self.leaves.capacity() + self.inners.capacity()) * 8
            + (self.free_leaves.capacity() + self.free_inners.capacity()) * 4
    }

    fn alloc_leaf(&mut self) -> u32 {
        match self.free_leaves.pop() {
            Some(i) => {
                self.leaves[i as usize].len = 0;
                i
            }
            None => {
                self.leaves.push(Box::new(Leaf::empty()));
                (self.leaves.len() - 1) as u32
            }
        }
    }

    fn alloc_inner(&mut self) -> u32 {
        match self.free_inners.pop() {
            Some(i) => {
                self.inners[i as usize].len = 0;
                i
            }
            None => {
                self.inners.push(Box::new(Inner::empty()));
                (self.inners.len() - 1) as u32
            }
        }
    }

    fn count_of(&self, node: u32, level: u32) -> u32 {
        if level == 0 {
            self.leaves[node as usize].len
        } else {
            self.inners[node as usize].total()
        }
    }

    /// Insert a key that is not present.
    fn insert(&mut self, key: Key) {
        if let Some((sep, right)) = self.insert_rec(self.root, self.height, key) {
            let left = self.root;
            let lc = self.count_of(left, self.height);
            let rc = self.count_of(right, self.height);
            let root = self.alloc_inner();
            let r = &mut self.inners[root as usize];
            r.insert_at(0, left, lc, (0, 0));
            r.insert_at(1, right, rc, sep);
            self.root = root;
            self.height += 1;
        }
        self.len += 1;
    }

    /// Returns `(separator, new right sibling)` if `node` split.
    fn insert_rec(&mut self, node: u32, level: u32, key: Key) -> Option<(Key, u32)> {
        if level == 0 {
            let leaf = &mut self.leaves[node as usize];
            let pos = match leaf.search(key) {
                Ok(_) => return None,
                Err(p) => p,
            };
            if (leaf.len as usize) < L {
                leaf.insert_at(pos, key);
                return None;
            }
            let right = self.alloc_leaf();
            let mid = L / 2;
            let (l, r) = two_mut(&mut self.leaves, node as usize, right as usize);
            r.keys[..L - mid].copy_from_slice(&l.keys[mid..L]);
            r.players[..L - mid].copy_from_slice(&l.players[mid..L]);
            r.len = (L - mid) as u32;
            l.len = mid as u32;
            if pos <= mid {
                l.insert_at(pos, key);
            } else {
                r.insert_at(pos - mid, key);
            }
            return Some((r.key(0), right));
        }
        let c = self.inners[node as usize].find_child(key);
        self.inners[node as usize].counts[c] += 1;
        let child = self.inners[node as usize].children[c];
        let (sep, new_child) = self.insert_rec(child, level - 1, key)?;
        let new_count = self.count_of(new_child, level - 1);
        self.inners[node as usize].counts[c] -= new_count;
        let pos = c + 1;
        if (self.inners[node as usize].len as usize) < I {
            self.inners[node as usize].insert_at(pos, new_child, new_count, sep);
            return None;
        }
        let right = self.alloc_inner();
        let mid = I / 2;
        let (l, r) = two_mut(&mut self.inners, node as usize, right as usize);
        let m = I - mid;
        r.children[..m].copy_from_slice(&l.children[mid..I]);
        r.counts[..m].copy_from_slice(&l.counts[mid..I]);
        r.sep_k[..m].copy_from_slice(&l.sep_k[mid..I]);
        r.sep_p[..m].copy_from_slice(&l.sep_p[mid..I]);
        r.len = m as u32;
        l.len = mid as u32;
        let up = r.sep(0);
        if pos <= mid {
            l.insert_at(pos, new_child, new_count, sep);
        } else {
            r.insert_at(pos - mid, new_child, new_count, sep);
        }
        Some((up, right))
    }

    /// Remove a key; `false` if absent.
    fn remove(&mut self, key: Key) -> bool {
        if !self.remove_rec(self.root, self.height, key) {
            return false;
        }
        self.len -= 1;
        while self.height > 0 && self.inners[self.root as usize].len == 1 {
            let old = self.root;
            self.root = self.inners[old as usize].children[0];
            self.free_inners.push(old);
            self.height -= 1;
        }
        true
    }

    fn remove_rec(&mut self, node: u32, level: u32, key: Key) -> bool {
        if level == 0 {
            let leaf = &mut self.leaves[node as usize];
            return match leaf.search(key) {
                Ok(pos) => {
                    leaf.remove_at(pos);
                    true
                }
                Err(_) => false,
            };
        }
        let c = self.inners[node as usize].find_child(key);
        let child = self.inners[node as usize].children[c];
        if !self.remove_rec(child, level - 1, key) {
            return false;
        }
        self.inners[node as usize].counts[c] -= 1;
        self.rebalance(node, level, c);
        true
    }

    /// Merge child `c` of `node` with a neighbour if it became small and the
    /// two fit in one node.
    fn rebalance(&mut self, node: u32, level: u32, c: usize) {
        let inner = &self.inners[node as usize];
        let n = inner.len as usize;
        if n < 2 {
            return;
        }
        let child = inner.children[c];
        let (cap, child_len) = if level == 1 {
            (L, self.leaves[child as usize].len as usize)
        } else {
            (I, self.inners[child as usize].len as usize)
        };
        if child_len >= cap / 4 {
            return;
        }
        let left = if c > 0 { c - 1 } else { c };
        let right = left + 1;
        let (ln, rn) = (inner.children[left], inner.children[right]);
        let (llen, rlen) = if level == 1 {
            (
                self.leaves[ln as usize].len as usize,
                self.leaves[rn as usize].len as usize,
            )
        } else {
            (
                self.inners[ln as usize].len as usize,
                self.inners[rn as usize].len as usize,
            )
        };
        // An empty child always merges (0 + neighbour <= cap).
        if llen + rlen > cap * 3 / 4 && child_len > 0 {
            return;
        }
        if level == 1 {
            let (l, r) = two_mut(&mut self.leaves, ln as usize, rn as usize);
            let (a, b) = (l.len as usize, r.len as usize);
            l.keys[a..a + b].copy_from_slice(&r.keys[..b]);
            l.players[a..a + b].copy_from_slice(&r.players[..b]);
            l.len = (a + b) as u32;
        } else {
            let parent_sep = self.inners[node as usize].sep(right);
            let (l, r) = two_mut(&mut self.inners, ln as usize, rn as usize);
            let (a, b) = (l.len as usize, r.len as usize);
            l.children[a..a + b].copy_from_slice(&r.children[..b]);
            l.counts[a..a + b].copy_from_slice(&r.counts[..b]);
            l.sep_k[a..a + b].copy_from_slice(&r.sep_k[..b]);
            l.sep_p[a..a + b].copy_from_slice(&r.sep_p[..b]);
            // The right node's first child had no separator of its own.
            l.sep_k[a] = parent_sep.0;
            l.sep_p[a] = parent_sep.1;
            l.len = (a + b) as u32;
        }
        let p = &mut self.inners[node as usize];
        p.counts[left] += p.counts[right];
        p.remove_at(right);
        self.free_node(rn, level - 1);
    }

    fn free_node(&mut self, node: u32, level: u32) {
        if level == 0 {
            self.leaves[node as usize].len = 0;
            self.free_leaves.push(node);
        } else {
            self.inners[node as usize].len = 0;
            self.free_inners.push(node);
        }
    }

    /// Number of keys smaller than `key`.
    fn rank(&self, key: Key) -> usize {
        let mut node = self.root;
        let mut level = self.height;
        let mut acc = 0usize;
        while level > 0 {
            let inner = &self.inners[node as usize];
            let c = inner.find_child(key);
            acc += inner.counts[..c].iter().map(|&x| x as usize).sum::<usize>();
            node = inner.children[c];
            level -= 1;
        }
        match self.leaves[node as usize].search(key) {
            Ok(p) | Err(p) => acc + p,
        }
    }

    /// Append up to `limit` keys starting at position `skip` to `out`.
    fn collect_from(&self, skip: usize, limit: usize, out: &mut Vec<Key>) {
        let target = out.len().saturating_add(limit);
        self.collect_rec(self.root, self.height, skip, target, out);
    }

    fn collect_rec(
        &self,
        node: u32,
        level: u32,
        mut skip: usize,
        target: usize,
        out: &mut Vec<Key>,
    ) {
        if out.len() >= target {
            return;
        }
        if level == 0 {
            let leaf = &self.leaves[node as usize];
            let n = leaf.len as usize;
            let mut i = skip;
            while i < n && out.len() < target {
                out.push(leaf.key(i));
                i += 1;
            }
            return;
        }
        let inner = &self.inners[node as usize];
        for i in 0..inner.len as usize {
            let cnt = inner.counts[i] as usize;
            if skip >= cnt {
                skip -= cnt;
                continue;
            }
            self.collect_rec(inner.children[i], level - 1, skip, target, out);
            skip = 0;
            if out.len() >= target {
                return;
            }
        }
    }

    /// Check every structural invariant (tests).
    #[cfg(test)]
    fn check(&self) {
        fn walk<const L: usize, const I: usize>(
            t: &Tree<L, I>,
            node: u32,
            level: u32,
            lo: Option<Key>,
            hi: Option<Key>,
            out: &mut Vec<Key>,
        ) -> usize {
            if level == 0 {
                let leaf = &t.leaves[node as usize];
                for i in 0..leaf.len as usize {
                    let k = leaf.key(i);
                    assert!(lo.is_none_or(|lo| lo <= k));
                    assert!(hi.is_none_or(|hi| k < hi));
                    out.push(k);
                }
                return leaf.len as usize;
            }
            let inner = &t.inners[node as usize];
            assert!(inner.len >= 1);
            let mut total = 0;
            for i in 0..inner.len as usize {
                let clo = if i == 0 { lo } else { Some(inner.sep(i)) };
                let chi = if i + 1 < inner.len as usize {
                    Some(inner.sep(i + 1))
                } else {
                    hi
                };
                let got = walk(t, inner.children[i], level - 1, clo, chi, out);
                assert_eq!(got, inner.counts[i] as usize, "count of child {i}");
                total += got;
            }
            total
        }
        let mut keys = Vec::new();
        let total = walk(self, self.root, self.height, None, None, &mut keys);
        assert_eq!(total, self.len);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted");
    }
}

/// Two distinct mutable elements of a slice of boxes.
fn two_mut<T>(v: &mut [Box<T>], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut *x[a], &mut *y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut *y[0], &mut *x[b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u32, i64, u64, u32),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..300, -50i64..50, 0u64..5, 0u32..3).prop_map(|(p, s, t, o)| Op::Upsert(p, s, t, o)),
            1 => (0u32..300).prop_map(Op::Remove),
        ]
    }

    /// The naive model: a sorted Vec of (order key, origin, player).
    fn model_sorted(m: &HashMap<u32, (i64, u64, u32)>, order: SortOrder) -> Vec<Key> {
        let mut v: Vec<Key> = m
            .iter()
            .map(|(p, (s, t, o))| (order_key(order, *s, *t), tail(*o, *p)))
            .collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn small_tree_matches_sorted_vec(keys in proptest::collection::vec((0u128..2000, 0u64..4), 0..1500),
                                        removes in proptest::collection::vec(0usize..2000, 0..1500)) {
            let mut t: Tree<4, 4> = Tree::new();
            let mut model: Vec<Key> = Vec::new();
            for k in &keys {
                if let Err(p) = model.binary_search(k) {
                    model.insert(p, *k);
                    t.insert(*k);
                }
            }
            t.check();
            for r in &removes {
                if model.is_empty() { break; }
                let k = model.remove(r % model.len());
                prop_assert!(t.remove(k));
                prop_assert!(!t.remove(k));
            }
            t.check();
            prop_assert_eq!(t.len, model.len());
            for (i, k) in model.iter().enumerate() {
                prop_assert_eq!(t.rank(*k), i);
            }
            let mut all = Vec::new();
            t.collect_from(0, usize::MAX, &mut all);
            prop_assert_eq!(&all, &model);
            for off in [0usize, 1, 3, model.len() / 2, model.len()] {
                let mut page = Vec::new();
                t.collect_from(off, 7, &mut page);
                let end = (off + 7).min(model.len());
                prop_assert_eq!(&page[..], &model[off.min(model.len())..end]);
            }
        }

        #[test]
        fn index_matches_model(ops in proptest::collection::vec(op(), 0..600), desc in any::<bool>()) {
            let order = if desc { SortOrder::Desc } else { SortOrder::Asc };
            let mut idx = RankIndex::new(order);
            let mut model: HashMap<u32, (i64, u64, u32)> = HashMap::new();
            for op in &ops {
                match op {
                    Op::Upsert(p, s, t, o) => {
                        let changed = idx.upsert(*p, *s, *t, *o);
                        let before = model.insert(*p, (*s, *t, *o));
                        prop_assert_eq!(changed, before != Some((*s, *t, *o)));
                    }
                    Op::Remove(p) => {
                        prop_assert_eq!(idx.remove(*p), model.remove(p).is_some());
                    }
                }
            }
            idx.tree.check();
            let sorted = model_sorted(&model, order);
            prop_assert_eq!(idx.len(), sorted.len());
            let top = idx.top(0, usize::MAX);
            prop_assert_eq!(top.len(), sorted.len());
            for (i, (e, (_, tl))) in top.iter().zip(&sorted).enumerate() {
                let p = *tl as u32;
                prop_assert_eq!(e.rank, i as u64 + 1);
                prop_assert_eq!(e.player, p);
                prop_assert_eq!((e.score, e.tiebreak), (model[&p].0, model[&p].1));
                prop_assert_eq!(idx.get(p).map(|g| g.rank), Some(i as u64 + 1));
            }
            // Scores are in board order.
            for w in top.windows(2) {
                match order {
                    SortOrder::Desc => prop_assert!(w[0].score >= w[1].score),
                    SortOrder::Asc => prop_assert!(w[0].score <= w[1].score),
                }
            }
            if let Some((_, tl)) = sorted.get(sorted.len() / 2) {
                let pos = sorted.len() / 2;
                let a = idx.around(*tl as u32, 3);
                let start = pos.saturating_sub(3);
                let end = (pos + 4).min(sorted.len());
                let want: Vec<u32> = sorted[start..end].iter().map(|k| k.1 as u32).collect();
                let got: Vec<u32> = a.iter().map(|e| e.player).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn extreme_scores_sort_correctly() {
        let mut idx = RankIndex::new(SortOrder::Desc);
        idx.upsert(1, i64::MIN, 0, 0);
        idx.upsert(2, i64::MAX, 0, 0);
        idx.upsert(3, 0, 0, 0);
        idx.upsert(4, -1, 0, 0);
        let top: Vec<(u32, i64)> = idx.top(0, 10).iter().map(|e| (e.player, e.score)).collect();
        assert_eq!(top, vec![(2, i64::MAX), (3, 0), (4, -1), (1, i64::MIN)]);
        let mut asc = RankIndex::new(SortOrder::Asc);
        asc.upsert(1, i64::MIN, 0, 0);
        asc.upsert(2, i64::MAX, 0, 0);
        assert_eq!(asc.top(0, 1)[0].player, 1);
    }

    #[test]
    fn ties_earlier_update_first_then_origin_then_player() {
        let mut idx = RankIndex::new(SortOrder::Desc);
        idx.upsert(9, 100, 50, 0);
        idx.upsert(3, 100, 20, 1);
        idx.upsert(5, 100, 20, 0);
        idx.upsert(4, 100, 20, 1);
        let order: Vec<u32> = idx.top(0, 10).iter().map(|e| e.player).collect();
        assert_eq!(order, vec![5, 3, 4, 9]);
    }

    #[test]
    fn pages_past_the_end_are_empty() {
        let mut idx = RankIndex::new(SortOrder::Desc);
        assert!(idx.top(0, 10).is_empty());
        assert!(idx.around(1, 5).is_empty());
        assert_eq!(idx.get(1), None);
        for p in 0..1000 {
            idx.upsert(p, i64::from(p), 0, 0);
        }
        assert!(idx.top(1000, 10).is_empty());
        assert_eq!(idx.top(995, 10).len(), 5);
        assert_eq!(idx.top(usize::MAX, 10).len(), 0);
        assert_eq!(idx.around(999, usize::MAX).len(), 1000);
        // Remove everything: the tree collapses back to one leaf.
        for p in 0..1000 {
            assert!(idx.remove(p));
        }
        assert!(idx.is_empty());
        assert_eq!(idx.tree.height, 0);
        idx.tree.check();
    }

    #[test]
    fn churn_keeps_tree_valid() {
        let mut idx = RankIndex::new(SortOrder::Desc);
        let mut x: u64 = 12345;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x % 20_000) as u32;
            if x % 7 == 1 {
                idx.remove(p);
            } else {
                idx.upsert(p, (x >> 20) as i64 % 1000, i, 0);
            }
        }
        idx.tree.check();
    }
}
