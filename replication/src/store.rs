//! Embedded storage: the small [`Store`] trait, its sled implementation, and
//! [`Storage`], the handle the rest of Meridian uses, which adds group commit.
//!
//! # Durability rule
//! A write is acknowledged to a client only after [`Storage::commit`] (or
//! [`Storage::sync`]) returned, and those return only after an fsync that
//! *started after the write* completed. Concurrent writers share one fsync
//! (group commit): the flusher takes every write sequenced so far, fsyncs once,
//! and wakes all of them. There is no "fsync every N ms" mode for acknowledged
//! writes; sled's own background flush (every 500 ms) only adds durability to
//! writes that nobody waits for.
//!
//! # Key space
//! One ordered key space; every subsystem owns a prefix (`acct/`, `user/`,
//! `raft/03/log/`, ...). A [`Batch`] is atomic over any keys, with optional
//! preconditions (compare-and-set), which is what uniqueness checks need.
//!
//! Not for: caching, secondary indexes kept in memory (owners do that).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of a [`Batch`] did not hold; names the key (lossy UTF-8).
    #[error("conflict on key {0}")]
    Conflict(String),
    /// The backend failed (I/O, corruption).
    #[error("storage backend: {0}")]
    Backend(String),
}

/// One write in a [`Batch`].
#[derive(Debug, Clone)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// An atomic group of writes with preconditions.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `(key, expected)`: the key must currently hold `expected` (`None` = absent).
    pub checks: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    /// Require `key` to be absent.
    pub fn require_absent(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.checks.push((key.into(), None));
        self
    }
    /// Require `key` to hold exactly `value`.
    pub fn require_value(&mut self, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> &mut Self {
        self.checks.push((key.into(), value));
        self
    }
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.checks.is_empty()
    }
}

/// A key-value pair read from the store.
pub type Kv = (Vec<u8>, Vec<u8>);

/// The storage abstraction. Implementations are synchronous and fast for
/// reads; `flush` is the only call that may block for an fsync.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[from, to)` in ascending order, at most `limit`.
    fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Kv>, StoreError>;
    /// Keys in `[from, to)` in descending order, at most `limit`.
    fn range_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError>;
    /// Apply the batch atomically if every check holds, else `Conflict`.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Make every completed commit durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
}

/// The exclusive upper bound of all keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// sled, the default embedded backend. One tree; atomic batches are sled
/// transactions.
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        Ok(Self { db })
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(from),
        to.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Kv>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.range::<&[u8], _>(bounds(from, to)).take(limit) {
            let (k, v) = item.map_err(backend)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn range_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .range::<&[u8], _>(bounds(from, to))
            .rev()
            .take(limit)
        {
            let (k, v) = item.map_err(backend)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let res = self.db.transaction(|tx| {
            for (key, expected) in &batch.checks {
                let current = tx.get(key)?;
                if current.as_deref() != expected.as_deref() {
                    return Err(ConflictableTransactionError::Abort(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
            }
            for op in &batch.ops {
                match op {
                    Op::Put(k, v) => {
                        tx.insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Delete(k) => {
                        tx.remove(k.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(key)) => Err(StoreError::Conflict(key)),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

/// Group-commit state: `written` counts completed writes that want to be
/// durable, `durable` is the highest write number covered by a finished fsync.
struct GroupCommit {
    written: AtomicU64,
    durable: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
}

/// The storage handle: a [`Store`] plus group commit. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn Store>,
    gc: Arc<GroupCommit>,
}

impl Storage {
    /// Wrap a store and start its flusher task (needs a tokio runtime).
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (durable, _) = tokio::sync::watch::channel(0u64);
        let gc = Arc::new(GroupCommit {
            written: AtomicU64::new(0),
            durable,
            wake: tokio::sync::Notify::new(),
        });
        let flusher_gc = Arc::downgrade(&gc);
        let flusher_store = store.clone();
        tokio::spawn(async move {
            loop {
                let Some(gc) = flusher_gc.upgrade() else {
                    return;
                };
                let target = gc.written.load(Ordering::Acquire);
                if target > *gc.durable.borrow() {
                    let s = flusher_store.clone();
                    match tokio::task::spawn_blocking(move || s.flush()).await {
                        Ok(Ok(())) => {
                            gc.durable.send_replace(target);
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "storage flush failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => tracing::error!(error = %e, "storage flush task failed"),
                    }
                    continue;
                }
                // Wake on a new write; the timeout lets a dropped Storage end
                // the task (notify_one keeps a permit, so no wake-up is lost).
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(500), gc.wake.notified())
                        .await;
            }
        });
        Self { store, gc }
    }

    /// Open the default sled store under `dir`.
    pub fn open_sled(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(SledStore::open(dir)?)))
    }

    /// The raw store, for owners that need sync access.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(key)
    }

    /// Every key starting with `prefix`, ascending, at most `limit`.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Kv>, StoreError> {
        let end = prefix_end(prefix);
        self.store.range(prefix, end.as_deref(), limit)
    }

    pub fn range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError> {
        self.store.range(from, to, limit)
    }

    pub fn range_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError> {
        self.store.range_rev(from, to, limit)
    }

    /// Apply a batch without waiting for durability. Callers that acknowledge
    /// anything must call [`Storage::sync`] afterwards.
    pub fn commit_nosync(&self, batch: &Batch) -> Result<(), StoreError> {
        self.store.commit(batch)
    }

    /// Apply a batch atomically and return once it is durable.
    pub async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.store.commit(batch)?;
        self.sync().await
    }

    /// Wait until every write completed before this call is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.gc.written.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.gc.durable.subscribe();
        self.gc.wake.notify_one();
        rx.wait_for(|d| *d >= ticket)
            .await
            .map_err(|_| StoreError::Backend("storage closed".into()))?;
        Ok(())
    }

    /// Blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open_sled(dir.path()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn batch_checks_are_atomic() {
        let (_d, s) = open();
        let mut b = Batch::new();
        b.require_absent("user/alice")
            .put("user/alice", "1")
            .put("acct/1", "a");
        s.commit(&b).await.unwrap();
        // Same batch again: the check fails and nothing is written.
        let mut b2 = Batch::new();
        b2.require_absent("user/alice").put("acct/2", "b");
        match s.commit(&b2).await {
            Err(StoreError::Conflict(k)) => assert_eq!(k, "user/alice"),
            other => panic!("expected conflict, got {other:?}"),
        }
        assert_eq!(s.get(b"acct/2").unwrap(), None);
        assert_eq!(s.get(b"acct/1").unwrap().as_deref(), Some(&b"a"[..]));
    }

    #[tokio::test]
    async fn scan_prefix_and_reverse() {
        let (_d, s) = open();
        let mut b = Batch::new();
        for i in 0..10u8 {
            b.put(vec![b'p', b'/', i], vec![i]);
        }
        b.put("q/0", "x");
        s.commit(&b).await.unwrap();
        let all = s.scan_prefix(b"p/", 100).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].1, vec![0]);
        let last = s.range_rev(b"p/", prefix_end(b"p/").as_deref(), 1).unwrap();
        assert_eq!(last[0].1, vec![9]);
        assert_eq!(s.scan_prefix(b"p/", 3).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn concurrent_syncs_all_complete() {
        let (_d, s) = open();
        let mut handles = Vec::new();
        for i in 0..50u32 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                let mut b = Batch::new();
                b.put(format!("k/{i}"), i.to_be_bytes().to_vec());
                s.commit(&b).await.unwrap();
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(s.scan_prefix(b"k/", 100).unwrap().len(), 50);
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
