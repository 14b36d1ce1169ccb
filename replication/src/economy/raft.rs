//! One economy shard as an openraft group: its type config, its log and
//! state machine persisted in [`Storage`], and the network seam.
//!
//! # Keys (shard `s`, two digits)
//! - `raft/{s}/log/{index:020}` one log entry (postcard)
//! - `raft/{s}/vote`, `raft/{s}/purged`, `raft/{s}/committed`, `raft/{s}/snapshot`
//! - `econ/{s}/meta` last applied log id + membership + shard counters
//! - `econ/{s}/p/{player}` wallet, inventory, purchase counters
//! - `econ/{s}/idem/{player}/{key}`, `econ/{s}/tx/{player}/{seq:020}`,
//!   `econ/{s}/hold/{transfer_id}`, `econ/{s}/credit/{transfer_id}`,
//!   `econ/{s}/pay/{payment_gateway_ref}`
//!
//! # Durability
//! A log append returns to openraft (its `LogFlushed` callback) only after
//! [`Storage::commit`], i.e. after an fsync. Applying entries writes the
//! changed records and `econ/{s}/meta` (the applied log id) in one atomic
//! batch without waiting for an fsync: the entries are already durable in the
//! log, and a restart re-applies whatever the state machine lost. A snapshot
//! syncs the store before it is reported, so purging the log never drops an
//! entry whose effects are not durable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::model::{EconomyError, Receipt};
use super::state::{
    CreditRecord, Hold, IdemRecord, PaymentRecord, PlayerState, Request, ShardMeta, ShardState,
    Write,
};
use crate::store::{prefix_end, Batch, Storage};

/// Node ids of the economy's Raft groups.
pub type NodeId = u64;

/// What applying one log entry returns: `None` for blank and membership
/// entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse(pub Option<Result<Receipt, EconomyError>>);

openraft::declare_raft_types!(
    /// The openraft type config of an economy shard.
    pub EconTypeConfig:
        D = Request,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<EconTypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

type C = EconTypeConfig;
type SErr = StorageError<NodeId>;

/// Raw key/value pairs (a state machine dump).
type Kvs = Vec<(Vec<u8>, Vec<u8>)>;

/// Entries read per storage page when scanning.
pub const SCAN_PAGE_ENTRIES: usize = 1_024;
/// Most log entries one replication read returns (openraft's
/// `limited_get_log_entries`; `try_get_log_entries` must return its whole
/// range, which openraft bounds itself).
pub const REPLICATION_READ_ENTRIES_MAX: usize = 4_096;

// ---------------------------------------------------------------- keys ----

pub(crate) fn raft_key(shard: u16, rest: &str) -> Vec<u8> {
    format!("raft/{shard:02}/{rest}").into_bytes()
}
pub(crate) fn econ_prefix(shard: u16) -> Vec<u8> {
    format!("econ/{shard:02}/").into_bytes()
}
pub(crate) fn econ_key(shard: u16, rest: &str) -> Vec<u8> {
    format!("econ/{shard:02}/{rest}").into_bytes()
}
fn log_key(shard: u16, index: u64) -> Vec<u8> {
    raft_key(shard, &format!("log/{index:020}"))
}
pub(crate) fn tx_prefix(shard: u16, player: &str) -> Vec<u8> {
    econ_key(shard, &format!("tx/{player}/"))
}
pub(crate) fn tx_key(shard: u16, player: &str, seq: u64) -> Vec<u8> {
    econ_key(shard, &format!("tx/{player}/{seq:020}"))
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, EconomyError> {
    postcard::to_allocvec(v).map_err(|e| EconomyError::Storage(format!("encode: {e}")))
}
fn dec<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, EconomyError> {
    postcard::from_bytes(b).map_err(|e| EconomyError::Storage(format!("decode: {e}")))
}

fn io_err(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Calls `f` on every key/value under `prefix`, page by page.
pub(crate) fn scan_all(
    storage: &Storage,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), EconomyError>,
) -> Result<(), EconomyError> {
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    loop {
        let page = storage.range(&from, end.as_deref(), SCAN_PAGE_ENTRIES)?;
        for (k, v) in &page {
            f(k, v)?;
        }
        match page.last() {
            Some((k, _)) if page.len() == SCAN_PAGE_ENTRIES => {
                from = k.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

// ------------------------------------------------------------ log store ----

/// The Raft log and vote of one shard.
#[derive(Clone)]
pub struct LogStore {
    shard: u16,
    storage: Storage,
}

impl LogStore {
    pub fn new(shard: u16, storage: Storage) -> Self {
        Self { shard, storage }
    }

    fn read_opt<T: for<'a> Deserialize<'a>>(&self, key: &[u8]) -> Result<Option<T>, EconomyError> {
        match self.storage.get(key)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, EconomyError> {
        let prefix = raft_key(self.shard, "log/");
        let end = prefix_end(&prefix);
        let last = self.storage.range_rev(&prefix, end.as_deref(), 1)?;
        match last.first() {
            Some((_, v)) => Ok(Some(dec::<Entry<C>>(v)?.log_id)),
            None => Ok(None),
        }
    }

    /// Log entries with index in `[start, end)`, at most `limit`.
    fn entries(
        &self,
        start: u64,
        end: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry<C>>, EconomyError> {
        let from = log_key(self.shard, start);
        let to = match end {
            Some(e) => log_key(self.shard, e),
            None => prefix_end(&raft_key(self.shard, "log/")).unwrap_or_default(),
        };
        let kvs = self.storage.range(&from, Some(&to), limit)?;
        kvs.iter().map(|(_, v)| dec(v)).collect()
    }

    /// Add a delete of every key in `[from, to)` to `b`, scanning in pages.
    fn delete_range(
        &self,
        b: &mut Batch,
        from: Vec<u8>,
        to: Option<&[u8]>,
    ) -> Result<(), crate::store::StoreError> {
        let mut cursor = from;
        loop {
            let page = self.storage.range(&cursor, to, SCAN_PAGE_ENTRIES)?;
            for (k, _) in &page {
                b.delete(k.clone());
            }
            match page.last() {
                Some((k, _)) if page.len() == SCAN_PAGE_ENTRIES => {
                    cursor = k.clone();
                    cursor.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        self.entries(start, end, usize::MAX)
            .map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<C>>, SErr> {
        self.entries(start, Some(end), REPLICATION_READ_ENTRIES_MAX)
            .map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, SErr> {
        let purged: Option<LogId<NodeId>> = self
            .read_opt(&raft_key(self.shard, "purged"))
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let last = self
            .last_log_id()
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut b = Batch::new();
        b.put(
            raft_key(self.shard, "vote"),
            enc(vote).map_err(|e| StorageIOError::write_vote(io_err(e)))?,
        );
        self.storage
            .commit(&b)
            .await
            .map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.read_opt(&raft_key(self.shard, "vote"))
            .map_err(|e| StorageIOError::read_vote(io_err(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Not synced: a stale committed id is still a lower bound, which is
        // all openraft uses it for (applying sooner after a restart).
        let mut b = Batch::new();
        b.put(
            raft_key(self.shard, "committed"),
            enc(&committed).map_err(|e| StorageIOError::write(io_err(e)))?,
        );
        self.storage
            .commit_nosync(&b)
            .map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        let v: Option<Option<LogId<NodeId>>> = self
            .read_opt(&raft_key(self.shard, "committed"))
            .map_err(|e| StorageIOError::read(io_err(e)))?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = Batch::new();
        for entry in entries {
            let v = enc(&entry).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            b.put(log_key(self.shard, entry.log_id.index), v);
        }
        // Durable before openraft is told so.
        let res = self.storage.commit(&b).await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(io_err(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut b = Batch::new();
        let prefix = raft_key(self.shard, "log/");
        let end = prefix_end(&prefix);
        let from = log_key(self.shard, log_id.index);
        self.delete_range(&mut b, from, end.as_deref())
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        self.storage
            .commit(&b)
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut b = Batch::new();
        b.put(
            raft_key(self.shard, "purged"),
            enc(&log_id).map_err(|e| StorageIOError::write_logs(io_err(e)))?,
        );
        let from = raft_key(self.shard, "log/");
        let to = log_key(self.shard, log_id.index.saturating_add(1));
        self.delete_range(&mut b, from, Some(&to))
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        self.storage
            .commit(&b)
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}

// -------------------------------------------------------- state machine ----

/// `econ/{s}/meta`: what the state machine has applied, atomically with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmMeta {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    shard: ShardMeta,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The shard's state, shared between the state machine (writer) and the
/// facade (readers).
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<ShardState>>);

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, ShardState> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, ShardState> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The replicated state machine of one shard.
pub struct StateMachine {
    shard: u16,
    storage: Storage,
    state: SharedState,
    meta: SmMeta,
    snapshot_seq: u64,
}

/// Read the shard's state machine from storage.
fn load(storage: &Storage, shard: u16) -> Result<(ShardState, SmMeta), EconomyError> {
    let mut st = ShardState::new();
    let meta: SmMeta = match storage.get(&econ_key(shard, "meta"))? {
        Some(v) => dec(&v)?,
        None => SmMeta::default(),
    };
    st.load_meta(meta.shard);
    let pp = econ_key(shard, "p/");
    scan_all(storage, &pp, |k, v| {
        let id = String::from_utf8_lossy(&k[pp.len()..]).into_owned();
        st.load_player(id, dec::<PlayerState>(v)?);
        Ok(())
    })?;
    scan_all(storage, &econ_key(shard, "idem/"), |_, v| {
        st.load_idem(dec::<IdemRecord>(v)?);
        Ok(())
    })?;
    scan_all(storage, &econ_key(shard, "hold/"), |_, v| {
        st.load_hold(dec::<Hold>(v)?);
        Ok(())
    })?;
    scan_all(storage, &econ_key(shard, "credit/"), |_, v| {
        st.load_credit(dec::<CreditRecord>(v)?);
        Ok(())
    })?;
    scan_all(storage, &econ_key(shard, "pay/"), |_, v| {
        st.load_payment(dec::<PaymentRecord>(v)?);
        Ok(())
    })?;
    let np = econ_key(shard, "name/");
    scan_all(storage, &np, |k, v| {
        let name = String::from_utf8_lossy(&k[np.len()..]).into_owned();
        st.load_name(name, dec::<String>(v)?);
        Ok(())
    })?;
    Ok((st, meta))
}

impl StateMachine {
    pub fn open(shard: u16, storage: Storage, state: SharedState) -> Result<Self, EconomyError> {
        let (st, meta) = load(&storage, shard)?;
        *state.write() = st;
        Ok(Self {
            shard,
            storage,
            state,
            meta,
            snapshot_seq: 0,
        })
    }

    fn write_ops(
        &self,
        st: &ShardState,
        writes: &[Write],
        b: &mut Batch,
    ) -> Result<(), EconomyError> {
        let s = self.shard;
        for w in writes {
            match w {
                Write::Player(p) => match st.player(p) {
                    Some(ps) => {
                        b.put(econ_key(s, &format!("p/{p}")), enc(ps)?);
                    }
                    None => {
                        b.delete(econ_key(s, &format!("p/{p}")));
                    }
                },
                Write::IdemPut { player, key } => {
                    if let Some(r) = st.idem_record(player, key) {
                        b.put(econ_key(s, &format!("idem/{player}/{key}")), enc(r)?);
                    }
                }
                Write::IdemDel { player, key } => {
                    b.delete(econ_key(s, &format!("idem/{player}/{key}")));
                }
                Write::Tx { seq, tx } => {
                    b.put(tx_key(s, &tx.player_id, *seq), enc(tx)?);
                }
                Write::HoldPut(id) => {
                    if let Some(h) = st.hold(id) {
                        b.put(econ_key(s, &format!("hold/{id}")), enc(h)?);
                    }
                }
                Write::HoldDel(id) => {
                    b.delete(econ_key(s, &format!("hold/{id}")));
                }
                Write::CreditPut(id) => {
                    if let Some(c) = st.credit_record(id) {
                        b.put(econ_key(s, &format!("credit/{id}")), enc(c)?);
                    }
                }
                Write::CreditDel(id) => {
                    b.delete(econ_key(s, &format!("credit/{id}")));
                }
                Write::Name(n) => match st.name_owner(n) {
                    Some(o) => {
                        b.put(econ_key(s, &format!("name/{n}")), enc(&o.to_string())?);
                    }
                    None => {
                        b.delete(econ_key(s, &format!("name/{n}")));
                    }
                },
                Write::PaymentPut(r) => {
                    if let Some(p) = st.payment_record(r) {
                        b.put(econ_key(s, &format!("pay/{r}")), enc(p)?);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_batch(&mut self, entries: Vec<Entry<C>>) -> Result<Vec<ApplyResponse>, EconomyError> {
        let mut b = Batch::new();
        let mut out = Vec::with_capacity(entries.len());
        let state = self.state.clone();
        let mut st = state.write();
        for entry in entries {
            self.meta.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(ApplyResponse(None)),
                EntryPayload::Normal(req) => {
                    let applied = st.apply(&req);
                    self.write_ops(&st, &applied.writes, &mut b)?;
                    out.push(ApplyResponse(Some(applied.result)));
                }
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(ApplyResponse(None));
                }
            }
        }
        self.meta.shard = st.meta();
        drop(st);
        b.put(econ_key(self.shard, "meta"), enc(&self.meta)?);
        // The entries are durable in the log; on a crash they are re-applied
        // from `applied`, which is in this same atomic batch.
        self.storage.commit_nosync(&b)?;
        Ok(out)
    }

    /// Dump every `econ/{s}/` record; runs inside the state machine worker,
    /// so no apply interleaves.
    fn dump(&self) -> Result<Kvs, EconomyError> {
        let mut kvs = Vec::new();
        scan_all(&self.storage, &econ_prefix(self.shard), |k, v| {
            kvs.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(kvs)
    }
}

/// Builds a snapshot from a dump taken when the builder was created.
pub struct SnapshotBuilder {
    shard: u16,
    storage: Storage,
    meta: SnapshotMeta<NodeId, BasicNode>,
    dump: Result<Kvs, EconomyError>,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, SErr> {
        let kvs = std::mem::replace(&mut self.dump, Ok(Vec::new()))
            .map_err(|e| StorageIOError::read_state_machine(io_err(e)))?;
        let data = enc(&kvs).map_err(|e| StorageIOError::read_state_machine(io_err(e)))?;
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: data.clone(),
        };
        let mut b = Batch::new();
        b.put(
            raft_key(self.shard, "snapshot"),
            enc(&stored).map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?,
        );
        // Synced: this also makes every applied state change durable before
        // openraft may purge the log entries behind this snapshot.
        self.storage
            .commit(&b)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, SErr>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.apply_batch(entries)
            .map_err(|e| StorageIOError::write_state_machine(io_err(e)).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let last = self.meta.applied;
        let snapshot_id = match last {
            Some(l) => format!(
                "{}-{}-{}-{}",
                self.shard, l.leader_id, l.index, self.snapshot_seq
            ),
            None => format!("{}-none-{}", self.shard, self.snapshot_seq),
        };
        SnapshotBuilder {
            shard: self.shard,
            storage: self.storage.clone(),
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.meta.membership.clone(),
                snapshot_id,
            },
            dump: self.dump(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let err =
            |e: EconomyError| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e));
        let kvs: Kvs = dec(&data).map_err(err)?;
        let prefix = econ_prefix(self.shard);
        let mut b = Batch::new();
        scan_all(&self.storage, &prefix, |k, _| {
            b.delete(k.to_vec());
            Ok(())
        })
        .map_err(err)?;
        for (k, v) in kvs {
            if !k.starts_with(&prefix) {
                return Err(err(EconomyError::Storage("snapshot key outside shard".into())).into());
            }
            b.put(k, v);
        }
        let mut meta_rec = SmMeta {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            shard: ShardMeta::default(),
        };
        if let Some(v) = b.ops.iter().rev().find_map(|op| match op {
            crate::store::Op::Put(k, v) if *k == econ_key(self.shard, "meta") => Some(v.clone()),
            _ => None,
        }) {
            let dumped: SmMeta = dec(&v).map_err(err)?;
            meta_rec.shard = dumped.shard;
        }
        b.put(econ_key(self.shard, "meta"), enc(&meta_rec).map_err(err)?);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        b.put(raft_key(self.shard, "snapshot"), enc(&stored).map_err(err)?);
        self.storage.commit(&b).await.map_err(|e| err(e.into()))?;
        let (st, m) = load(&self.storage, self.shard).map_err(err)?;
        *self.state.write() = st;
        self.meta = m;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, SErr> {
        let v = self
            .storage
            .get(&raft_key(self.shard, "snapshot"))
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        let Some(v) = v else { return Ok(None) };
        let s: StoredSnapshot =
            dec(&v).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

// -------------------------------------------------------------- network ----

/// Which Raft RPC a [`RaftRpc`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A write forwarded by a follower to the leader: the payload is a
    /// postcard `Forwarded`; the reply a postcard `Result<Receipt, EconomyError>`.
    ClientWrite,
    /// A follower's linearizable read: the leader confirms its leadership
    /// with a quorum and replies with the postcard `u64` log index the
    /// follower must have applied before it reads.
    ReadIndex,
    /// Leader hand-over: the target campaigns after the postcard `u64`
    /// delay in ms (once the old leader's lease ran out).
    Campaign,
    /// Leader hand-over: a voter that is not the target holds its own
    /// elections for the postcard `u64` ms, so the target wins.
    HoldElections,
}

/// One serialized Raft RPC for a shard. The payload is the postcard
/// encoding of openraft's request; the reply is the postcard encoding of
/// `Result<response, RaftError>`. Transports move bytes only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftRpc {
    pub shard: u16,
    pub kind: RaftRpcKind,
    pub payload: Vec<u8>,
}

/// A boxed future, so the traits below stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one network seam of the economy: deliver a serialized Raft RPC to
/// `target` and return its serialized reply. The in-process implementation
/// is [`InProcessNetwork`]; the mesh adds a QUIC one and, on the receiving
/// node, hands the bytes to [`super::Economy::handle_raft_rpc`].
pub trait ShardNetwork: Send + Sync + 'static {
    fn send(&self, target: NodeId, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// The receiving side of [`ShardNetwork`].
pub trait RaftRpcHandler: Send + Sync + 'static {
    fn handle(&self, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Delivers RPCs to handlers registered in this process (tests, one node).
#[derive(Default)]
pub struct InProcessNetwork {
    routes: RwLock<BTreeMap<NodeId, Arc<dyn RaftRpcHandler>>>,
}

impl InProcessNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn register(&self, node: NodeId, handler: Arc<dyn RaftRpcHandler>) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, handler);
    }
}

impl ShardNetwork for InProcessNetwork {
    fn send(&self, target: NodeId, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let h = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned();
        Box::pin(async move {
            match h {
                Some(h) => h.handle(rpc).await,
                None => Err(format!("node {target} unreachable")),
            }
        })
    }
}

/// Serve one incoming RPC on `raft`.
pub(crate) async fn serve_rpc(raft: &openraft::Raft<C>, rpc: &RaftRpc) -> Result<Vec<u8>, String> {
    fn e(x: impl std::fmt::Display) -> String {
        x.to_string()
    }
    match rpc.kind {
        RaftRpcKind::AppendEntries => {
            let req: AppendEntriesRequest<C> = postcard::from_bytes(&rpc.payload).map_err(e)?;
            postcard::to_allocvec(&raft.append_entries(req).await).map_err(e)
        }
        RaftRpcKind::Vote => {
            let req: VoteRequest<NodeId> = postcard::from_bytes(&rpc.payload).map_err(e)?;
            postcard::to_allocvec(&raft.vote(req).await).map_err(e)
        }
        RaftRpcKind::InstallSnapshot => {
            let req: InstallSnapshotRequest<C> = postcard::from_bytes(&rpc.payload).map_err(e)?;
            postcard::to_allocvec(&raft.install_snapshot(req).await).map_err(e)
        }
        RaftRpcKind::ClientWrite
        | RaftRpcKind::ReadIndex
        | RaftRpcKind::Campaign
        | RaftRpcKind::HoldElections => Err("client RPCs are served by the economy facade".into()),
    }
}

/// openraft's network factory for one shard over a [`ShardNetwork`].
pub struct NetworkFactory {
    pub shard: u16,
    pub net: Arc<dyn ShardNetwork>,
}

pub struct NetworkClient {
    shard: u16,
    target: NodeId,
    net: Arc<dyn ShardNetwork>,
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = NetworkClient;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NetworkClient {
        NetworkClient {
            shard: self.shard,
            target,
            net: self.net.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NetErr(String);

impl NetworkClient {
    async fn call<Req: Serialize, Resp: for<'a> Deserialize<'a>, E>(
        &self,
        kind: RaftRpcKind,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + for<'a> Deserialize<'a>,
    {
        let payload = postcard::to_allocvec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&NetErr(e.to_string()))))?;
        let rpc = RaftRpc {
            shard: self.shard,
            kind,
            payload,
        };
        let reply = self
            .net
            .send(self.target, rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&NetErr(e))))?;
        let res: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&NetErr(e.to_string()))))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<C> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpcKind::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpcKind::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpcKind::Vote, &rpc).await
    }
}
