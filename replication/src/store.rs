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
    feed: Arc<Feed>,
}

/// Prefix of the change feed's own keys (never replicated).
pub const FEED_PREFIX: &[u8] = b"~feed/";
const FEED_VERSION_KEY: &[u8] = b"~feed/v";
const FEED_EPOCH_KEY: &[u8] = b"~feed/epoch";
const FEED_LOG: &str = "~feed/log/";
const FEED_AT: &str = "~feed/at/";
/// Most replicated prefixes one storage tracks.
pub const FEED_PREFIXES_MAX: usize = 64;

/// The change feed: every committed write under a registered prefix gets the
/// next local version, logged in the same atomic batch, so replication can
/// ask "what changed after version v" and get each changed key once (a key
/// written again moves to its newest version).
struct Feed {
    prefixes: std::sync::RwLock<Vec<Vec<u8>>>,
    /// Serializes version assignment and the commit that logs it, so a
    /// reader that sees version v sees every version below it.
    lock: std::sync::Mutex<()>,
    version: AtomicU64,
    epoch: u64,
    changed: tokio::sync::watch::Sender<u64>,
}

/// One change from the feed: the key and its value now (`None` = deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub version: u64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

fn feed_log_key(v: u64) -> Vec<u8> {
    format!("{FEED_LOG}{v:016x}").into_bytes()
}

fn feed_at_key(key: &[u8]) -> Vec<u8> {
    let mut k = FEED_AT.as_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
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
        let version = read_u64(store.get(FEED_VERSION_KEY).ok().flatten());
        let mut epoch = read_u64(store.get(FEED_EPOCH_KEY).ok().flatten());
        if epoch == 0 {
            let id = uuid::Uuid::new_v4();
            let mut b8 = [1u8; 8];
            b8.copy_from_slice(&id.as_bytes()[..8]);
            epoch = u64::from_be_bytes(b8).max(1);
            let mut b = Batch::new();
            b.put(FEED_EPOCH_KEY, epoch.to_be_bytes().to_vec());
            if let Err(e) = store.commit(&b) {
                tracing::error!(error = %e, "storing the change-feed epoch");
            }
        }
        let (changed, _) = tokio::sync::watch::channel(version);
        let feed = Arc::new(Feed {
            prefixes: Default::default(),
            lock: std::sync::Mutex::new(()),
            version: AtomicU64::new(version),
            epoch,
            changed,
        });
        Self { store, gc, feed }
    }

    /// Log every later write under `prefix` in the change feed (at most
    /// [`FEED_PREFIXES_MAX`] prefixes; more are refused with an error).
    pub fn replicate_prefix(&self, prefix: &[u8]) -> Result<(), StoreError> {
        if prefix.starts_with(FEED_PREFIX) || prefix.is_empty() {
            return Err(StoreError::Backend(
                "the feed cannot log its own keys".into(),
            ));
        }
        let mut p = self
            .feed
            .prefixes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if p.iter().any(|x| x == prefix) {
            return Ok(());
        }
        if p.len() >= FEED_PREFIXES_MAX {
            return Err(StoreError::Backend(format!(
                "more than {FEED_PREFIXES_MAX} replicated prefixes"
            )));
        }
        p.push(prefix.to_vec());
        Ok(())
    }

    /// The highest change-feed version committed.
    pub fn feed_version(&self) -> u64 {
        self.feed.version.load(Ordering::Acquire)
    }

    /// A random id of this store, fixed at creation: a replica whose peer's
    /// epoch changed (data dir wiped) starts over from version 0.
    pub fn feed_epoch(&self) -> u64 {
        self.feed.epoch
    }

    /// Watch the feed version (changes when a logged write commits).
    pub fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.changed.subscribe()
    }

    /// Changes after `version`, oldest first: at most `limit` keys and about
    /// `max_bytes` of values (at least one change when any exists).
    pub fn changes_since(
        &self,
        version: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FeedChange>, StoreError> {
        let top = self.feed_version();
        if version >= top {
            return Ok(Vec::new());
        }
        let from = feed_log_key(version.saturating_add(1));
        let to = feed_log_key(top.saturating_add(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (k, key) in self.store.range(&from, Some(&to), limit.max(1))? {
            let v = std::str::from_utf8(&k[FEED_LOG.len()..])
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| StoreError::Backend("bad feed log key".into()))?;
            let value = self.store.get(&key)?;
            bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            out.push(FeedChange {
                version: v,
                key,
                value,
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn logs(&self, key: &[u8]) -> bool {
        !key.starts_with(FEED_PREFIX)
            && self
                .feed
                .prefixes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|p| key.starts_with(p))
    }

    /// Commit `batch`, logging its replicated keys in the feed atomically.
    fn commit_logged(&self, batch: &Batch) -> Result<(), StoreError> {
        let keys: Vec<&[u8]> = batch
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(k, _) | Op::Delete(k) => k.as_slice(),
            })
            .filter(|k| self.logs(k))
            .collect();
        if keys.is_empty() {
            return self.store.commit(batch);
        }
        let _g = self.feed.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = batch.clone();
        let mut v = self.feed.version.load(Ordering::Acquire);
        for key in keys {
            v += 1;
            let at = feed_at_key(key);
            if let Some(old) = self.store.get(&at)? {
                b.delete(feed_log_key(read_u64(Some(old))));
            }
            b.put(feed_log_key(v), key.to_vec());
            b.put(at, v.to_be_bytes().to_vec());
        }
        b.put(FEED_VERSION_KEY, v.to_be_bytes().to_vec());
        self.store.commit(&b)?;
        self.feed.version.store(v, Ordering::Release);
        self.feed.changed.send_replace(v);
        Ok(())
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
        self.commit_logged(batch)
    }

    /// Apply a batch atomically and return once it is durable.
    pub async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit_logged(batch)?;
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
    async fn feed_logs_replicated_keys_once_at_their_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let s = Storage::open_sled(dir.path()).unwrap();
            epoch = s.feed_epoch();
            s.replicate_prefix(b"acct/").unwrap();
            let mut b = Batch::new();
            b.put("acct/1", "a").put("acct/2", "b").put("local/x", "y");
            s.commit(&b).await.unwrap();
            assert_eq!(s.feed_version(), 2);
            let mut b = Batch::new();
            b.put("acct/1", "a2");
            s.commit(&b).await.unwrap();
            let all = s.changes_since(0, 100, 1 << 20).unwrap();
            let keys: Vec<_> = all.iter().map(|c| (c.version, c.key.clone())).collect();
            assert_eq!(keys, vec![(2, b"acct/2".to_vec()), (3, b"acct/1".to_vec())]);
            assert_eq!(all[1].value.as_deref(), Some(&b"a2"[..]));
            assert_eq!(s.changes_since(3, 100, 1 << 20).unwrap(), vec![]);
            // Limits: one key per call; the byte bound still returns one.
            assert_eq!(s.changes_since(0, 1, 1 << 20).unwrap().len(), 1);
            assert_eq!(s.changes_since(0, 100, 1).unwrap().len(), 1);
            // A failed check logs nothing.
            let mut b = Batch::new();
            b.require_absent("acct/1").put("acct/1", "zz");
            assert!(s.commit(&b).await.is_err());
            assert_eq!(s.feed_version(), 3);
            s.flush_blocking().unwrap();
        }
        // The group-commit flusher lets go of the old handle within 500 ms.
        let mut reopened = None;
        for _ in 0..50 {
            match Storage::open_sled(dir.path()) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.feed_version(), 3, "the version survives a restart");
        assert_eq!(s.feed_epoch(), epoch, "so does the epoch");
        assert!(s.replicate_prefix(b"~feed/").is_err());
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
