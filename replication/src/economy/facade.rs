//! [`Economy`]: the node's handle on the economy shards (see the module doc
//! of [`super`] for the protocol and guarantees).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{
    validate_idempotency_key, validate_name, validate_player_id, validate_token, Catalog,
    EconomyError, InventoryItem, Receipt, Transaction, TxStatus, NAME_BYTES_MAX, REASON_BYTES_MAX,
};
use super::raft::{
    serve_rpc, tx_key, tx_prefix, BoxFuture, EconTypeConfig, InProcessNetwork, LogStore,
    NetworkFactory, NodeId, RaftRpc, RaftRpcHandler, RaftRpcKind, ShardNetwork, SharedState,
    StateMachine,
};
use super::state::{body_hash, Command, IdemTag, Request};
use crate::store::{Batch, Storage};

/// Most shards a cluster may be created with.
pub const SHARDS_MAX: u16 = 99;
/// Default number of shards.
pub const SHARDS_DEFAULT: u16 = 16;
/// Longest wait a hand-over RPC may ask for (campaign delay, election hold).
pub const HANDOVER_DELAY_MAX_MS: u64 = 10_000;
/// Longest directory name (an email address is at most 320 bytes).
pub const DIRECTORY_NAME_BYTES_MAX: usize = 320;
/// Most transactions returned by one [`Economy::transactions`] call.
pub const TRANSACTIONS_PAGE_MAX: usize = 100;
/// How old a hold must be before the recovery task resolves it, in ms
/// (younger holds are being resolved by the request that made them).
pub const HOLD_RECOVERY_AGE_MS: i64 = 2_000;

/// How the economy is opened.
#[derive(Clone)]
pub struct EconomyConfig {
    /// Shard count; used when the cluster is created, then read from the
    /// store (`econ/config`). A different value on a later start is ignored
    /// with a warning.
    pub shards: u16,
    pub catalog: Catalog,
    pub node_id: NodeId,
    /// This node's address for its Raft peers (opaque to the economy).
    pub node_addr: String,
    /// Initialize every pristine shard (first start) with
    /// `bootstrap_members` as voters, or this node alone if that is empty.
    pub bootstrap: bool,
    /// Initial voters `node id -> address`; every listed node may pass the
    /// same map (openraft allows that). Empty = this node only.
    pub bootstrap_members: BTreeMap<NodeId, String>,
    /// The Raft transport.
    pub transport: RaftTransport,
    /// A leader of a multi-voter shard whose last quorum acknowledgement is
    /// older than this (ms) refuses writes and reads fast with
    /// [`EconomyError::Unavailable`] instead of waiting for the commit
    /// timeout.
    pub quorum_ack_max_age_ms: u64,
    /// How long a request waits for its shard to have a leader before it
    /// fails with [`EconomyError::Unavailable`], in ms.
    pub leader_wait_ms: u64,
    /// How long a write waits for commit + apply, in ms; on timeout the
    /// outcome is unknown and the client retries with the same key.
    pub commit_timeout_ms: u64,
    /// A snapshot is taken after this many log entries since the last one.
    /// A snapshot copies the whole shard (transaction history included), so
    /// this trades log size against snapshot cost.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot (for slow followers).
    pub log_entries_kept_after_snapshot: u64,
    /// Period of the cross-shard recovery task, in ms.
    pub recovery_interval_ms: u64,
    /// Raft heartbeat period, in ms; elections time out after 3-6 of them.
    pub heartbeat_interval_ms: u64,
    /// Writes waiting for commit per shard; beyond it a write fails fast
    /// with [`EconomyError::Unavailable`] (backpressure, not a queue).
    pub writes_in_flight_per_shard_max: usize,
    /// Fixed election timeout range `[min, max)` in ms instead of 3-6
    /// heartbeats. `Some((t, t + 1))` gives this node one fixed timeout,
    /// which the deterministic simulations use (openraft otherwise draws
    /// it from the thread RNG). `None` in production.
    pub election_timeout_ms: Option<(u64, u64)>,
    /// Whether `open` waits (up to `leader_wait_ms`) for a leader of the
    /// shards that have other voters too. A caller whose transport starts
    /// only after `open` (the node: Raft RPCs travel over the mesh) sets
    /// false: no leader can be heard of before, so the wait only delays the
    /// start. Single-voter shards are always waited for (local election).
    pub open_waits_for_peers: bool,
}

impl Default for EconomyConfig {
    fn default() -> Self {
        Self {
            shards: SHARDS_DEFAULT,
            catalog: Catalog::default(),
            node_id: 1,
            node_addr: "local".into(),
            bootstrap: true,
            bootstrap_members: BTreeMap::new(),
            transport: RaftTransport::Private,
            quorum_ack_max_age_ms: 1_000,
            leader_wait_ms: 2_000,
            commit_timeout_ms: 5_000,
            snapshot_logs_since_last: 50_000,
            log_entries_kept_after_snapshot: 1_000,
            recovery_interval_ms: 1_000,
            heartbeat_interval_ms: 100,
            writes_in_flight_per_shard_max: 1_024,
            election_timeout_ms: None,
            open_waits_for_peers: true,
        }
    }
}

/// How the shards' Raft RPCs travel.
#[derive(Clone, Default)]
pub enum RaftTransport {
    /// A private in-process network: this node only (single-node mode).
    #[default]
    Private,
    /// A shared in-process network (tests of several nodes in one
    /// process); the economy registers itself in it when it opens.
    InProcess(Arc<InProcessNetwork>),
    /// Another transport (the mesh's QUIC). The receiving node passes
    /// incoming RPCs to [`Economy::handle_raft_rpc`] / [`Economy::rpc_handler`].
    Custom(Arc<dyn ShardNetwork>),
}

/// A grant (server/admin): currency and/or an item. Mirrors
/// `POST /economy/grant`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub player_id: String,
    pub currency: Option<String>,
    pub amount: Option<i64>,
    pub item_id: Option<String>,
    /// Defaults to 1 when `item_id` is set.
    pub quantity: Option<i64>,
    pub reason: String,
    pub idempotency_key: String,
    /// Set by the payment flow; `None` for match rewards and support.
    #[serde(default)]
    pub payment_gateway_ref: Option<String>,
}

/// One page of a player's transactions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionPage {
    pub transactions: Vec<Transaction>,
    /// Pass back to get the next (older) page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// What `/admin/shards` shows about one shard, as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: u16,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    /// The voters' node names (their Raft addresses), in `voters` order.
    pub voter_names: Vec<String>,
    /// Non-voting members being caught up before they become voters.
    pub learners: Vec<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub open_holds: usize,
}

struct Shard {
    id: u16,
    raft: Raft<EconTypeConfig>,
    state: SharedState,
    in_flight: tokio::sync::Semaphore,
    /// Set while this leader hands the shard over: requests wait (bounded by
    /// `leader_wait_ms`), then go to the new leader.
    handing_off: std::sync::atomic::AtomicBool,
    /// Writes committed while this node led, by the node they came in at.
    origins: std::sync::Mutex<BTreeMap<NodeId, u64>>,
}

/// A forwarded write: the node it came in at, and the request.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    origin: NodeId,
    req: Request,
}

struct Inner {
    storage: Storage,
    net: Arc<dyn ShardNetwork>,
    shards: Vec<Shard>,
    catalog: Catalog,
    cfg: EconomyConfig,
    recovery: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set by [`Economy::refuse_leadership`]: hand-overs to this node are
    /// refused (it is about to be replaced).
    refuse_leadership: std::sync::atomic::AtomicBool,
}

/// The economy of one node: per-shard Raft groups behind one async API.
/// Cheap to clone.
#[derive(Clone)]
pub struct Economy {
    inner: Arc<Inner>,
}

/// The stable shard of a player: the first 8 bytes of SHA-256(player_id),
/// big endian, modulo the shard count.
pub fn shard_of(player_id: &str, shards: u16) -> u16 {
    let d = Sha256::digest(player_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % u64::from(shards.max(1))) as u16
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn map_fatal(f: Fatal<NodeId>) -> EconomyError {
    match f {
        Fatal::StorageError(e) => EconomyError::Storage(e.to_string()),
        other => EconomyError::unavailable(format!("shard stopped: {other}")),
    }
}

fn map_write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> EconomyError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            EconomyError::unavailable(format!("not the leader (leader: {:?})", f.leader_id))
        }
        RaftError::APIError(other) => EconomyError::unavailable(other),
        RaftError::Fatal(f) => map_fatal(f),
    }
}

fn map_read_err(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> EconomyError {
    match e {
        RaftError::APIError(other) => EconomyError::unavailable(other),
        RaftError::Fatal(f) => map_fatal(f),
    }
}

/// The reason of the `Unavailable` a node answers to a forwarded request
/// when it is not the shard's leader (any more): nothing was proposed.
const LEADERSHIP_MOVED: &str = "leadership moved to node";

/// Who leads a shard, as far as this node knows.
enum Leadership {
    Local,
    Remote(NodeId),
}

fn positive_quantity(field: &str, q: i64) -> Result<u64, EconomyError> {
    if q <= 0 {
        return Err(EconomyError::quantity(field));
    }
    Ok(q as u64)
}

const CONFIG_KEY: &str = "econ/config";

#[derive(Serialize, Deserialize)]
struct PersistedConfig {
    shards: u16,
}

impl Economy {
    /// Open (or create) the economy in `storage`: read or persist the shard
    /// count, start one Raft group per shard (initializing pristine shards
    /// when `bootstrap`), wait briefly for leaders, then start the
    /// cross-shard recovery task.
    pub async fn open(storage: Storage, cfg: EconomyConfig) -> Result<Self, EconomyError> {
        cfg.catalog.validate()?;
        let shards = match storage.get(CONFIG_KEY.as_bytes())? {
            Some(v) => {
                let p: PersistedConfig = postcard::from_bytes(&v)
                    .map_err(|e| EconomyError::Storage(format!("econ/config: {e}")))?;
                if p.shards != cfg.shards {
                    tracing::warn!(
                        stored = p.shards,
                        configured = cfg.shards,
                        "economy shard count is fixed at creation; using the stored value"
                    );
                }
                p.shards
            }
            None => {
                if cfg.shards == 0 || cfg.shards > SHARDS_MAX {
                    return Err(EconomyError::invalid("shards", "must be 1..=99"));
                }
                let mut b = Batch::new();
                let v = postcard::to_allocvec(&PersistedConfig { shards: cfg.shards })
                    .map_err(|e| EconomyError::Storage(e.to_string()))?;
                b.require_absent(CONFIG_KEY).put(CONFIG_KEY, v);
                storage.commit(&b).await?;
                cfg.shards
            }
        };
        let raft_cfg = Config {
            cluster_name: "meridian-economy".into(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            election_timeout_min: cfg
                .election_timeout_ms
                .map_or(cfg.heartbeat_interval_ms.saturating_mul(3), |t| t.0),
            election_timeout_max: cfg
                .election_timeout_ms
                .map_or(cfg.heartbeat_interval_ms.saturating_mul(6), |t| t.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: cfg.log_entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| EconomyError::invalid("raft", &e.to_string()))?;
        let raft_cfg = Arc::new(raft_cfg);
        let (net, register): (Arc<dyn ShardNetwork>, Option<Arc<InProcessNetwork>>) =
            match &cfg.transport {
                RaftTransport::Private => {
                    let n = InProcessNetwork::new();
                    (n.clone(), Some(n))
                }
                RaftTransport::InProcess(n) => (n.clone(), Some(n.clone())),
                RaftTransport::Custom(n) => (n.clone(), None),
            };
        let mut list: Vec<Shard> = Vec::with_capacity(shards as usize);
        for id in 0..shards {
            let state = SharedState::default();
            let log = LogStore::new(id, storage.clone());
            let factory = NetworkFactory {
                shard: id,
                net: net.clone(),
            };
            let started = match StateMachine::open(id, storage.clone(), state.clone()) {
                Ok(sm) => Raft::new(cfg.node_id, raft_cfg.clone(), factory, log, sm)
                    .await
                    .map_err(map_fatal),
                Err(e) => Err(e),
            };
            let raft = match started {
                Ok(r) => r,
                Err(e) => {
                    // Stop the groups already started: they hold the store.
                    for sh in &list {
                        let _ = sh.raft.shutdown().await;
                    }
                    return Err(e);
                }
            };
            list.push(Shard {
                id,
                raft,
                state,
                in_flight: tokio::sync::Semaphore::new(cfg.writes_in_flight_per_shard_max.max(1)),
                handing_off: Default::default(),
                origins: Default::default(),
            });
        }
        let inner = Arc::new(Inner {
            storage,
            net,
            shards: list,
            catalog: cfg.catalog.clone(),
            cfg,
            recovery: std::sync::Mutex::new(None),
            refuse_leadership: Default::default(),
        });
        // The registry holds the handler strongly; the handler holds `Inner`
        // weakly, so no cycle keeps the economy alive.
        if let Some(n) = register {
            n.register(
                inner.cfg.node_id,
                Arc::new(RpcHandler(Arc::downgrade(&inner))),
            );
        }
        let economy = Economy { inner };
        if economy.inner.cfg.bootstrap {
            let cfg = &economy.inner.cfg;
            let members = if cfg.bootstrap_members.is_empty() {
                BTreeMap::from([(cfg.node_id, cfg.node_addr.clone())])
            } else {
                cfg.bootstrap_members.clone()
            };
            economy.initialize(&members).await;
        }
        economy.wait_ready().await;
        let weak = Arc::downgrade(&economy.inner);
        let period = Duration::from_millis(economy.inner.cfg.recovery_interval_ms.max(10));
        let task = tokio::spawn(async move {
            // First pass at start resolves every hold left by a crash; later
            // passes leave young holds to the requests that made them.
            let mut min_age_ms = 0;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let eco = Economy { inner };
                eco.recover_holds(min_age_ms).await;
                drop(eco);
                min_age_ms = HOLD_RECOVERY_AGE_MS;
                tokio::time::sleep(period).await;
            }
        });
        *economy
            .inner
            .recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(economy)
    }

    /// Wait (bounded by `leader_wait_ms`) until every shard has a leader and,
    /// where this node leads, has applied its whole log: reads right after
    /// open then see every acknowledged write.
    async fn wait_ready(&self) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.inner.cfg.leader_wait_ms);
        for sh in &self.inner.shards {
            if !self.inner.cfg.open_waits_for_peers {
                let m = sh.raft.metrics().borrow().clone();
                let me = self.inner.cfg.node_id;
                if m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v != me)
                {
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let res = sh
                .raft
                .wait(Some(left.max(Duration::from_millis(1))))
                .metrics(
                    |m| {
                        m.current_leader.is_some()
                            && (m.state != ServerState::Leader
                                || m.last_applied.map(|l| l.index) >= m.last_log_index)
                    },
                    "economy shard ready",
                )
                .await;
            if let Err(e) = res {
                tracing::warn!(shard = sh.id, error = %e, "economy shard not ready");
            }
        }
    }

    /// Stop every shard's Raft group and the recovery task. Acknowledged
    /// writes are already durable; this only releases the store.
    pub async fn shutdown(&self) {
        let task = self
            .inner
            .recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        for sh in &self.inner.shards {
            if let Err(e) = sh.raft.shutdown().await {
                tracing::warn!(shard = sh.id, error = %e, "economy shard shutdown");
            }
        }
    }

    /// Number of shards (fixed at creation).
    pub fn shard_count(&self) -> u16 {
        self.inner.shards.len() as u16
    }

    /// The shard that owns `player_id`.
    pub fn shard_of(&self, player_id: &str) -> u16 {
        shard_of(player_id, self.shard_count())
    }

    /// The store catalog (from config).
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    fn shard(&self, player: &str) -> &Shard {
        let i = self.shard_of(player) as usize;
        &self.inner.shards[i]
    }

    /// Fail fast unless this node leads the shard with a live quorum,
    /// waiting up to `leader_wait_ms` for an election or a first quorum
    /// acknowledgement.
    async fn lead(&self, sh: &Shard) -> Result<Leadership, EconomyError> {
        let me = self.inner.cfg.node_id;
        let max_age = self.inner.cfg.quorum_ack_max_age_ms;
        let bound = Duration::from_millis(self.inner.cfg.leader_wait_ms);
        // A leadership hand-over (`hand_over`) takes well under the lease:
        // wait for it (bounded) rather than fail, then find the new leader.
        // Nothing is proposed here meanwhile.
        let started = tokio::time::Instant::now();
        while sh.handing_off.load(std::sync::atomic::Ordering::Acquire) {
            if started.elapsed() >= bound {
                return Err(EconomyError::unavailable(format!(
                    "shard {}: leadership is moving; retry",
                    sh.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let quorum_ok = move |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            m.membership_config.membership().voter_ids().count() <= 1
                || m.millis_since_quorum_ack.is_some_and(|a| a <= max_age)
        };
        let res = sh
            .raft
            .wait(Some(bound))
            .metrics(
                |m| match m.current_leader {
                    Some(l) if l == me => quorum_ok(m),
                    Some(_) => true,
                    None => false,
                },
                "economy leader",
            )
            .await;
        let m = match res {
            Ok(m) => m,
            Err(_) => {
                let m = sh.raft.metrics().borrow().clone();
                let why = match m.current_leader {
                    None => "has no leader".to_string(),
                    Some(_) => format!("has no quorum acknowledgement within {max_age} ms"),
                };
                return Err(EconomyError::unavailable(format!("shard {} {why}", sh.id)));
            }
        };
        match m.current_leader {
            Some(l) if l == me => Ok(Leadership::Local),
            Some(l) => Ok(Leadership::Remote(l)),
            None => Err(EconomyError::unavailable(format!(
                "shard {} has no leader",
                sh.id
            ))),
        }
    }

    /// Send a client RPC to the shard's leader, bounded by the commit timeout.
    async fn forward(
        &self,
        sh: &Shard,
        leader: NodeId,
        kind: RaftRpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, EconomyError> {
        let rpc = RaftRpc {
            shard: sh.id,
            kind,
            payload,
        };
        let bound = Duration::from_millis(self.inner.cfg.commit_timeout_ms);
        match tokio::time::timeout(bound, self.inner.net.send(leader, rpc)).await {
            Err(_) => Err(EconomyError::unavailable(format!(
                "shard {}: leader {leader} did not answer in time; retry with the same idempotency key",
                sh.id
            ))),
            Ok(Err(e)) => Err(EconomyError::unavailable(format!(
                "shard {}: leader {leader} unreachable ({e}); retry with the same idempotency key",
                sh.id
            ))),
            Ok(Ok(bytes)) => Ok(bytes),
        }
    }

    /// Propose `cmd` on its shard: locally when this node leads, else
    /// forwarded to the leader (one hop; the client never needs to know).
    async fn write(&self, sh: &Shard, cmd: Command) -> Result<Receipt, EconomyError> {
        let req = Request {
            ts_ms: now_ms(),
            cmd,
        };
        // A leader that refused a forwarded write because the leadership
        // just moved (a hand-over) never proposed it: ask again where the
        // leadership went, bounded by `leader_wait_ms`.
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.inner.cfg.leader_wait_ms);
        loop {
            let leader = match self.lead(sh).await? {
                Leadership::Local => {
                    return self.commit_local(sh, req, self.inner.cfg.node_id).await
                }
                Leadership::Remote(leader) => leader,
            };
            let fwd = Forwarded {
                origin: self.inner.cfg.node_id,
                req: req.clone(),
            };
            let payload = postcard::to_allocvec(&fwd)
                .map_err(|e| EconomyError::Storage(format!("encode forward: {e}")))?;
            let bytes = self
                .forward(sh, leader, RaftRpcKind::ClientWrite, payload)
                .await?;
            let res =
                postcard::from_bytes::<Result<Receipt, EconomyError>>(&bytes).map_err(|e| {
                    EconomyError::unavailable(format!("shard {}: bad forward reply: {e}", sh.id))
                })?;
            match res {
                Err(EconomyError::Unavailable { reason })
                    if reason.contains(LEADERSHIP_MOVED)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Commit a request on a shard this node leads.
    async fn commit_local(
        &self,
        sh: &Shard,
        req: Request,
        origin: NodeId,
    ) -> Result<Receipt, EconomyError> {
        *sh.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(origin)
            .or_default() += 1;
        let _permit = sh.in_flight.try_acquire().map_err(|_| {
            EconomyError::unavailable(format!(
                "shard {}: more than {} writes in flight",
                sh.id, self.inner.cfg.writes_in_flight_per_shard_max
            ))
        })?;
        let bound = Duration::from_millis(self.inner.cfg.commit_timeout_ms);
        match tokio::time::timeout(bound, sh.raft.client_write(req)).await {
            Err(_) => Err(EconomyError::unavailable(format!(
                "shard {}: commit timed out; retry with the same idempotency key",
                sh.id
            ))),
            Ok(Err(e)) => Err(map_write_err(e)),
            Ok(Ok(resp)) => resp
                .data
                .0
                .unwrap_or_else(|| Err(EconomyError::Storage("empty apply result".into()))),
        }
    }

    /// Linearizable read barrier: confirms leadership with a quorum and
    /// waits until the state machine has applied everything committed.
    async fn linearize(&self, sh: &Shard) -> Result<(), EconomyError> {
        let bound = Duration::from_millis(self.inner.cfg.commit_timeout_ms);
        if let Leadership::Remote(leader) = self.lead(sh).await? {
            // Read index from the leader, then wait to apply up to it here.
            let bytes = self
                .forward(sh, leader, RaftRpcKind::ReadIndex, Vec::new())
                .await?;
            let index =
                postcard::from_bytes::<Result<u64, EconomyError>>(&bytes).map_err(|e| {
                    EconomyError::unavailable(format!("shard {}: bad read-index reply: {e}", sh.id))
                })??;
            return sh
                .raft
                .wait(Some(bound))
                .applied_index_at_least(Some(index), "economy read index")
                .await
                .map(|_| ())
                .map_err(|e| {
                    EconomyError::unavailable(format!(
                        "shard {}: not caught up to the leader's read index: {e}",
                        sh.id
                    ))
                });
        }
        match tokio::time::timeout(bound, sh.raft.ensure_linearizable()).await {
            Err(_) => Err(EconomyError::unavailable(format!(
                "shard {}: read barrier timed out",
                sh.id
            ))),
            Ok(Err(e)) => Err(map_read_err(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Buy `quantity` of a catalog item, paying in `currency`: debit and
    /// grant in one log entry. Same `idempotency_key` + same body returns
    /// the first receipt (`replayed: true`); another body is
    /// [`EconomyError::IdempotencyConflict`].
    pub async fn purchase(
        &self,
        player: &str,
        item_id: &str,
        quantity: i64,
        currency: &str,
        idempotency_key: &str,
    ) -> Result<Receipt, EconomyError> {
        validate_player_id("player_id", player)?;
        validate_idempotency_key(idempotency_key)?;
        let item = self
            .inner
            .catalog
            .get(item_id)
            .ok_or_else(|| EconomyError::UnknownItem(item_id.to_string()))?;
        let q = positive_quantity("quantity", quantity)?;
        let price = *item
            .prices
            .get(currency)
            .ok_or_else(|| EconomyError::CurrencyMismatch {
                item_id: item_id.to_string(),
                currency: currency.to_string(),
            })?;
        let cmd = Command::Purchase {
            player: player.to_string(),
            item_id: item_id.to_string(),
            quantity: q,
            currency: currency.to_string(),
            price_each: price,
            max_per_purchase: item.max_per_purchase,
            stack_limit: item.stack_limit,
            purchase_limit: item.purchase_limit_per_player,
            tx_id: new_id(),
            item_instance_id: new_id(),
            idem: IdemTag {
                key: idempotency_key.to_string(),
                body_hash: body_hash(&("purchase", item_id, quantity, currency)),
            },
        };
        self.write(self.shard(player), cmd).await
    }

    /// Grant currency and/or an item (match rewards, support, payments).
    pub async fn grant(&self, req: GrantRequest) -> Result<Receipt, EconomyError> {
        validate_player_id("player_id", &req.player_id)?;
        validate_idempotency_key(&req.idempotency_key)?;
        if let Some(r) = &req.payment_gateway_ref {
            validate_token("payment_gateway_ref", r)?;
        }
        if req.reason.len() > REASON_BYTES_MAX {
            return Err(EconomyError::invalid("reason", "too long"));
        }
        let currency = match (&req.currency, req.amount) {
            (Some(c), Some(a)) => {
                validate_name("currency", c, NAME_BYTES_MAX)?;
                if a <= 0 {
                    return Err(EconomyError::quantity("amount"));
                }
                Some((c.clone(), a))
            }
            (None, None) => None,
            (None, Some(_)) => {
                return Err(EconomyError::invalid("currency", "amount needs a currency"))
            }
            (Some(_), None) => {
                return Err(EconomyError::invalid("amount", "currency needs an amount"))
            }
        };
        let item = match &req.item_id {
            Some(id) => {
                let it = self
                    .inner
                    .catalog
                    .get(id)
                    .ok_or_else(|| EconomyError::UnknownItem(id.clone()))?;
                let q = positive_quantity("quantity", req.quantity.unwrap_or(1))?;
                Some((id.clone(), q, it.stack_limit))
            }
            None if req.quantity.is_some() => {
                return Err(EconomyError::invalid(
                    "item_id",
                    "quantity needs an item_id",
                ))
            }
            None => None,
        };
        if currency.is_none() && item.is_none() {
            return Err(EconomyError::invalid(
                "amount",
                "grant needs a currency amount or an item",
            ));
        }
        let hash = body_hash(&(
            "grant",
            &req.currency,
            req.amount,
            &req.item_id,
            req.quantity,
            &req.reason,
            &req.payment_gateway_ref,
        ));
        let cmd = Command::Grant {
            player: req.player_id.clone(),
            currency,
            item,
            reason: req.reason.clone(),
            payment_gateway_ref: req.payment_gateway_ref.clone(),
            tx_id: new_id(),
            item_instance_id: new_id(),
            idem: IdemTag {
                key: req.idempotency_key.clone(),
                body_hash: hash,
            },
        };
        self.write(self.shard(&req.player_id), cmd).await
    }

    /// Consume `quantity` units of an inventory stack (by its instance id).
    pub async fn consume(
        &self,
        player: &str,
        item_instance_id: &str,
        quantity: i64,
        idempotency_key: &str,
    ) -> Result<Receipt, EconomyError> {
        validate_player_id("player_id", player)?;
        validate_idempotency_key(idempotency_key)?;
        validate_name("item_id", item_instance_id, NAME_BYTES_MAX)?;
        let q = positive_quantity("quantity", quantity)?;
        let cmd = Command::Consume {
            player: player.to_string(),
            item_instance_id: item_instance_id.to_string(),
            quantity: q,
            tx_id: new_id(),
            idem: IdemTag {
                key: idempotency_key.to_string(),
                body_hash: body_hash(&("consume", item_instance_id, quantity)),
            },
        };
        self.write(self.shard(player), cmd).await
    }

    /// Equip or unequip an inventory stack. Naturally idempotent.
    pub async fn equip(
        &self,
        player: &str,
        item_instance_id: &str,
        equipped: bool,
    ) -> Result<Receipt, EconomyError> {
        validate_player_id("player_id", player)?;
        validate_name("item_id", item_instance_id, NAME_BYTES_MAX)?;
        let cmd = Command::Equip {
            player: player.to_string(),
            item_instance_id: item_instance_id.to_string(),
            equipped,
        };
        self.write(self.shard(player), cmd).await
    }

    /// Move `amount` of `currency` from one player to another. One log
    /// entry inside a shard; the two-phase protocol across shards. The
    /// receipt is the sender's; `status` is `completed`, or `pending` if the
    /// receiver's shard was unavailable (the recovery task, or a retry with
    /// the same key, finishes it), or `failed` (refunded).
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        currency: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<Receipt, EconomyError> {
        validate_player_id("from", from)?;
        validate_player_id("to", to)?;
        validate_name("currency", currency, NAME_BYTES_MAX)?;
        validate_idempotency_key(idempotency_key)?;
        if amount <= 0 {
            return Err(EconomyError::quantity("amount"));
        }
        if from == to {
            return Err(EconomyError::invalid("to", "cannot transfer to yourself"));
        }
        let idem = IdemTag {
            key: idempotency_key.to_string(),
            body_hash: body_hash(&("transfer", to, currency, amount)),
        };
        let (sa, sb) = (self.shard_of(from), self.shard_of(to));
        if sa == sb {
            let cmd = Command::Transfer {
                from: from.to_string(),
                to: to.to_string(),
                currency: currency.to_string(),
                amount,
                tx_id: new_id(),
                idem,
            };
            return self.write(self.shard(from), cmd).await;
        }
        let prepare = Command::TransferPrepare {
            transfer_id: new_id(),
            from: from.to_string(),
            to: to.to_string(),
            to_shard: sb,
            currency: currency.to_string(),
            amount,
            idem,
        };
        let receipt = self.write(self.shard(from), prepare).await?;
        if receipt.status != TxStatus::Pending {
            return Ok(receipt);
        }
        match self.resolve_hold(sa, &receipt.transaction_id).await {
            Ok(Some(r)) => Ok(r),
            // Resolved concurrently (by the recovery task): report the
            // stored final receipt.
            Ok(None) => {
                let sh = &self.inner.shards[sa as usize];
                let st = sh.state.read();
                Ok(st
                    .idem_record(from, idempotency_key)
                    .map(|r| r.receipt.clone())
                    .unwrap_or(receipt))
            }
            Err(e) if e.is_retryable() => Ok(receipt),
            Err(e) => Err(e),
        }
    }

    /// Drive one hold of shard `sa` to its end: credit on the receiver's
    /// shard (idempotent by transfer id), then commit; abort (refund) only
    /// when the receiver's shard recorded a rejection. `Ok(None)` if there is
    /// no such hold (already resolved). A retryable error leaves the hold
    /// for a later attempt.
    async fn resolve_hold(
        &self,
        sa: u16,
        transfer_id: &str,
    ) -> Result<Option<Receipt>, EconomyError> {
        let sh_a = &self.inner.shards[sa as usize];
        let hold = sh_a.state.read().hold(transfer_id).cloned();
        let Some(hold) = hold else { return Ok(None) };
        let sh_b = self
            .inner
            .shards
            .get(hold.to_shard as usize)
            .ok_or_else(|| {
                EconomyError::Storage(format!("hold for unknown shard {}", hold.to_shard))
            })?;
        let credit = Command::TransferCredit {
            transfer_id: hold.transfer_id.clone(),
            from: hold.from.clone(),
            to: hold.to.clone(),
            currency: hold.currency.clone(),
            amount: hold.amount,
        };
        let credited = self.write(sh_b, credit).await;
        let finish = match &credited {
            Ok(_) => Command::TransferCommit {
                transfer_id: hold.transfer_id.clone(),
            },
            Err(e) if e.is_retryable() => return Err(e.clone()),
            Err(EconomyError::Storage(s)) => return Err(EconomyError::Storage(s.clone())),
            Err(_) => Command::TransferAbort {
                transfer_id: hold.transfer_id.clone(),
            },
        };
        let done = self.write(sh_a, finish).await?;
        match credited {
            Ok(_) => Ok(Some(done)),
            Err(e) => Err(e),
        }
    }

    /// Resolve every hold on shards this node leads that is older than
    /// `min_age_ms`. Returns how many holds remain open.
    async fn recover_holds(&self, min_age_ms: i64) -> usize {
        let mut open = 0;
        let me = self.inner.cfg.node_id;
        for sh in &self.inner.shards {
            if sh.raft.metrics().borrow().current_leader != Some(me) {
                continue;
            }
            let cut = now_ms().saturating_sub(min_age_ms);
            let ids: Vec<String> = sh
                .state
                .read()
                .holds()
                .filter(|h| h.created_ms <= cut)
                .map(|h| h.transfer_id.clone())
                .collect();
            for id in ids {
                match self.resolve_hold(sh.id, &id).await {
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => {
                        open += 1;
                        tracing::info!(shard = sh.id, transfer = %id, error = %e, "hold stays open");
                    }
                    Err(e) => {
                        // A rejected credit is reported by resolve_hold after
                        // the abort went through; the hold is resolved.
                        tracing::info!(shard = sh.id, transfer = %id, error = %e, "hold resolved");
                    }
                }
            }
        }
        open
    }

    /// Resolve every open hold now (the recovery task does this
    /// periodically). Returns how many remain open.
    pub async fn recover(&self) -> usize {
        self.recover_holds(0).await
    }

    /// Claim a globally unique name (a normalized username or email) for
    /// `owner` in the directory: the name's shard is
    /// `shard_of("name:" + name)`, so a claim is one Raft commit, linearizable
    /// across regions. Claiming one's own name again succeeds; another
    /// owner's is [`EconomyError::NameTaken`]; no quorum is
    /// [`EconomyError::Unavailable`].
    pub async fn claim_name(&self, name: &str, owner: &str) -> Result<(), EconomyError> {
        Self::check_name_args(name, owner)?;
        let cmd = Command::ClaimName {
            name: name.to_string(),
            owner: owner.to_string(),
        };
        self.write(self.shard(&format!("name:{name}")), cmd)
            .await
            .map(|_| ())
    }

    /// Release a name held by `owner` (no-op when someone else holds it).
    pub async fn release_name(&self, name: &str, owner: &str) -> Result<(), EconomyError> {
        Self::check_name_args(name, owner)?;
        let cmd = Command::ReleaseName {
            name: name.to_string(),
            owner: owner.to_string(),
        };
        self.write(self.shard(&format!("name:{name}")), cmd)
            .await
            .map(|_| ())
    }

    fn check_name_args(name: &str, owner: &str) -> Result<(), EconomyError> {
        if name.is_empty() || name.len() > DIRECTORY_NAME_BYTES_MAX {
            return Err(EconomyError::invalid("name", "must be 1-320 bytes"));
        }
        validate_player_id("owner", owner)
    }

    /// A player's balances (linearizable).
    pub async fn wallet(&self, player: &str) -> Result<BTreeMap<String, i64>, EconomyError> {
        validate_player_id("player_id", player)?;
        let sh = self.shard(player);
        self.linearize(sh).await?;
        let st = sh.state.read();
        Ok(st
            .player(player)
            .map(|p| p.wallet.clone())
            .unwrap_or_default())
    }

    /// A player's inventory stacks (linearizable).
    pub async fn inventory(&self, player: &str) -> Result<Vec<InventoryItem>, EconomyError> {
        validate_player_id("player_id", player)?;
        let sh = self.shard(player);
        self.linearize(sh).await?;
        let st = sh.state.read();
        Ok(st
            .player(player)
            .map(|p| p.items.values().cloned().collect())
            .unwrap_or_default())
    }

    /// A player's transactions, newest first, at most
    /// [`TRANSACTIONS_PAGE_MAX`] per page (linearizable).
    pub async fn transactions(
        &self,
        player: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<TransactionPage, EconomyError> {
        validate_player_id("player_id", player)?;
        let limit = limit.clamp(1, TRANSACTIONS_PAGE_MAX);
        let sh = self.shard(player);
        self.linearize(sh).await?;
        let prefix = tx_prefix(sh.id, player);
        let end = match cursor {
            Some(c) => {
                let seq: u64 = c
                    .parse()
                    .map_err(|_| EconomyError::invalid("cursor", "not a cursor from this API"))?;
                tx_key(sh.id, player, seq)
            }
            None => crate::store::prefix_end(&prefix).unwrap_or_default(),
        };
        let kvs = self
            .inner
            .storage
            .range_rev(&prefix, Some(&end), limit + 1)?;
        let mut out = Vec::with_capacity(limit);
        let mut next = None;
        for (i, (k, v)) in kvs.iter().enumerate() {
            if i == limit {
                break;
            }
            let tx: Transaction = postcard::from_bytes(v)
                .map_err(|e| EconomyError::Storage(format!("decode transaction: {e}")))?;
            out.push(tx);
            if i + 1 == limit && kvs.len() > limit {
                let seq = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let seq: u64 = seq
                    .parse()
                    .map_err(|_| EconomyError::Storage(format!("bad transaction key {seq}")))?;
                next = Some(seq.to_string());
            }
        }
        Ok(TransactionPage {
            transactions: out,
            next_cursor: next,
        })
    }

    /// Raft state of every shard as seen by this node (`/admin/shards`).
    pub fn shards(&self) -> Vec<ShardInfo> {
        self.inner
            .shards
            .iter()
            .map(|sh| {
                let m = sh.raft.metrics().borrow().clone();
                let mem = m.membership_config.membership();
                let voters: Vec<NodeId> = mem.voter_ids().collect();
                ShardInfo {
                    shard: sh.id,
                    leader: m.current_leader,
                    voter_names: voters
                        .iter()
                        .map(|id| mem.get_node(id).map(|n| n.addr.clone()).unwrap_or_default())
                        .collect(),
                    learners: mem.learner_ids().collect(),
                    voters,
                    term: m.current_term,
                    last_log_index: m.last_log_index,
                    last_applied_index: m.last_applied.map(|l| l.index),
                    snapshot_index: m.snapshot.map(|l| l.index),
                    open_holds: sh.state.read().holds().count(),
                }
            })
            .collect()
    }

    /// The receiving side for a transport: register it with an
    /// [`InProcessNetwork`] or call it from the mesh's RPC server.
    pub fn rpc_handler(&self) -> Arc<dyn RaftRpcHandler> {
        Arc::new(RpcHandler(Arc::downgrade(&self.inner)))
    }

    /// Serve a Raft RPC that a transport received for this node.
    pub async fn handle_raft_rpc(&self, rpc: RaftRpc) -> Result<Vec<u8>, String> {
        let sh = self
            .inner
            .shards
            .get(rpc.shard as usize)
            .ok_or_else(|| format!("no shard {}", rpc.shard))?;
        fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
            postcard::to_allocvec(v).map_err(|e| e.to_string())
        }
        match rpc.kind {
            RaftRpcKind::ClientWrite => {
                let fwd: Forwarded =
                    postcard::from_bytes(&rpc.payload).map_err(|e| e.to_string())?;
                let res = match self.lead(sh).await {
                    Ok(Leadership::Local) => self.commit_local(sh, fwd.req, fwd.origin).await,
                    Ok(Leadership::Remote(l)) => Err(EconomyError::unavailable(format!(
                        "shard {}: {LEADERSHIP_MOVED} {l}",
                        sh.id
                    ))),
                    Err(e) => Err(e),
                };
                enc(&res)
            }
            RaftRpcKind::ReadIndex => {
                let res = match self.lead(sh).await {
                    Ok(Leadership::Local) => {
                        let bound = Duration::from_millis(self.inner.cfg.commit_timeout_ms);
                        match tokio::time::timeout(bound, sh.raft.get_read_log_id()).await {
                            Err(_) => Err(EconomyError::unavailable("read index timed out")),
                            Ok(Err(e)) => Err(map_read_err(e)),
                            Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
                        }
                    }
                    Ok(Leadership::Remote(l)) => Err(EconomyError::unavailable(format!(
                        "shard {}: {LEADERSHIP_MOVED} {l}",
                        sh.id
                    ))),
                    Err(e) => Err(e),
                };
                enc(&res)
            }
            RaftRpcKind::Campaign => {
                if self
                    .inner
                    .refuse_leadership
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return Err("this node is being replaced: it takes no leadership".into());
                }
                let delay: u64 = postcard::from_bytes(&rpc.payload).map_err(|e| e.to_string())?;
                let raft = sh.raft.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay.min(HANDOVER_DELAY_MAX_MS)))
                        .await;
                    let _ = raft.trigger().elect().await;
                });
                enc(&())
            }
            RaftRpcKind::HoldElections => {
                let hold: u64 = postcard::from_bytes(&rpc.payload).map_err(|e| e.to_string())?;
                let raft = sh.raft.clone();
                raft.runtime_config().elect(false);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(hold.min(HANDOVER_DELAY_MAX_MS)))
                        .await;
                    raft.runtime_config().elect(true);
                });
                enc(&())
            }
            _ => serve_rpc(&sh.raft, &rpc).await,
        }
    }

    /// While set, a hand-over to this node (`hand_over` from another
    /// leader, e.g. leadership following the writes) is refused: an
    /// in-place replacement moves its leadership away and must not get it
    /// back before it exits. Raft elections are unaffected.
    pub fn refuse_leadership(&self, refuse: bool) {
        self.inner
            .refuse_leadership
            .store(refuse, std::sync::atomic::Ordering::Release);
    }

    /// Hand the leadership of `shard` (led here) to voter `to`, which must
    /// have replicated the whole log: this leader holds new requests
    /// and stops its heartbeats, the other voters hold their elections, and `to`
    /// campaigns once this leader's lease ran out, so it wins the next term.
    /// Raft's safety never depends on this; if `to` does not win within
    /// `within`, everything is switched back and a normal election follows.
    pub async fn hand_over(
        &self,
        shard: u16,
        to: NodeId,
        within: Duration,
    ) -> Result<(), EconomyError> {
        let me = self.inner.cfg.node_id;
        let sh = self
            .inner
            .shards
            .get(shard as usize)
            .ok_or_else(|| EconomyError::invalid("shard", "no such shard"))?;
        let m = sh.raft.metrics().borrow().clone();
        if m.current_leader != Some(me) || m.state != ServerState::Leader {
            return Err(EconomyError::unavailable("not the leader"));
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if to == me || !voters.contains(&to) {
            return Err(EconomyError::invalid(
                "to",
                "not another voter of the shard",
            ));
        }
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&to).cloned().flatten())
            .map(|l| l.index);
        if matched < m.last_log_index {
            return Err(EconomyError::unavailable("the target has not caught up"));
        }
        // The lease a voter grants a leader: the longest election timeout.
        let lease = self.inner.cfg.heartbeat_interval_ms.saturating_mul(6);
        sh.handing_off
            .store(true, std::sync::atomic::Ordering::Release);
        for v in voters.iter().filter(|v| **v != me && **v != to) {
            let rpc = RaftRpc {
                shard,
                kind: RaftRpcKind::HoldElections,
                payload: postcard::to_allocvec(&(lease * 4)).unwrap_or_default(),
            };
            let _ = self.inner.net.send(*v, rpc).await;
        }
        sh.raft.runtime_config().heartbeat(false);
        sh.raft.runtime_config().elect(false);
        let rpc = RaftRpc {
            shard,
            kind: RaftRpcKind::Campaign,
            payload: postcard::to_allocvec(&(lease + 100)).unwrap_or_default(),
        };
        let sent = self.inner.net.send(to, rpc).await;
        let won = match sent {
            Ok(_) => sh
                .raft
                .wait(Some(within))
                .metrics(|m| m.current_leader == Some(to), "hand-over")
                .await
                .is_ok(),
            Err(_) => false,
        };
        sh.raft.runtime_config().heartbeat(true);
        sh.raft.runtime_config().elect(true);
        sh.handing_off
            .store(false, std::sync::atomic::Ordering::Release);
        sh.origins.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if won {
            Ok(())
        } else {
            Err(EconomyError::unavailable(format!(
                "shard {shard}: node {to} did not take over in time"
            )))
        }
    }

    /// Shards this node leads where most writes came in at another voter:
    /// `(shard, that voter)` for those with at least `min_writes` writes
    /// since the last call, of which that voter brought `share` or more.
    /// The counts restart at every call.
    pub fn leadership_moves(&self, min_writes: u64, share: f64) -> Vec<(u16, NodeId)> {
        let me = self.inner.cfg.node_id;
        let mut out = Vec::new();
        for sh in &self.inner.shards {
            let counts = std::mem::take(&mut *sh.origins.lock().unwrap_or_else(|e| e.into_inner()));
            let m = sh.raft.metrics().borrow().clone();
            if m.current_leader != Some(me) {
                continue;
            }
            let total: u64 = counts.values().sum();
            let Some((top, n)) = counts.iter().max_by_key(|(_, n)| **n) else {
                continue;
            };
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == *top);
            if *top != me && voter && total >= min_writes && (*n as f64) >= share * total as f64 {
                out.push((sh.id, *top));
            }
        }
        out
    }

    /// Whether this node's shards belong to a cluster yet (initialized here,
    /// or joined by a leader's membership change).
    pub async fn is_initialized(&self) -> bool {
        for sh in &self.inner.shards {
            if sh.raft.is_initialized().await.unwrap_or(false) {
                return true;
            }
        }
        false
    }

    /// Initialize every pristine shard with `members` (`node id -> name`) as
    /// voters. Every founding node passes the same map. Returns how many
    /// shards were initialized.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> usize {
        let mut n = 0;
        for sh in &self.inner.shards {
            if sh.raft.is_initialized().await.unwrap_or(true) {
                continue;
            }
            let m: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match sh.raft.initialize(m).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(shard = sh.id, error = %e, "economy shard initialize"),
            }
        }
        n
    }

    /// The shards this node currently leads, with their voters
    /// (`node id -> name`).
    pub fn led_shards(&self) -> Vec<(u16, BTreeMap<NodeId, String>)> {
        let me = self.inner.cfg.node_id;
        self.inner
            .shards
            .iter()
            .filter_map(|sh| {
                let m = sh.raft.metrics().borrow().clone();
                if m.current_leader != Some(me) || m.state != ServerState::Leader {
                    return None;
                }
                let mem = m.membership_config.membership();
                let voters = mem
                    .voter_ids()
                    .map(|id| {
                        let name = mem
                            .get_node(&id)
                            .map(|n| n.addr.clone())
                            .unwrap_or_default();
                        (id, name)
                    })
                    .collect();
                Some((sh.id, voters))
            })
            .collect()
    }

    /// On a shard this node leads, make `voters` (`node id -> name`) the
    /// voter set through openraft membership changes: new nodes join as
    /// learners and catch up first (bounded by `catch_up`), then one joint
    /// change swaps the voters. Committed entries are never lost: a change
    /// commits on the old and the new quorum.
    pub async fn change_voters(
        &self,
        shard: u16,
        voters: &BTreeMap<NodeId, String>,
        catch_up: Duration,
    ) -> Result<(), EconomyError> {
        let sh = self
            .inner
            .shards
            .get(shard as usize)
            .ok_or_else(|| EconomyError::invalid("shard", "no such shard"))?;
        if voters.is_empty() {
            return Err(EconomyError::invalid("voters", "must not be empty"));
        }
        let m = sh.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let current: std::collections::BTreeSet<NodeId> = mem.voter_ids().collect();
        let wanted: std::collections::BTreeSet<NodeId> = voters.keys().copied().collect();
        if current == wanted {
            return Ok(());
        }
        for (id, name) in voters {
            if mem.get_node(id).is_none() {
                let add = sh
                    .raft
                    .add_learner(*id, BasicNode { addr: name.clone() }, true);
                match tokio::time::timeout(catch_up, add).await {
                    Err(_) => {
                        return Err(EconomyError::unavailable(format!(
                            "shard {shard}: learner {name} did not catch up in time"
                        )))
                    }
                    Ok(Err(e)) => return Err(map_write_err(e)),
                    Ok(Ok(_)) => {}
                }
            }
        }
        let bound = Duration::from_millis(self.inner.cfg.commit_timeout_ms).max(catch_up);
        match tokio::time::timeout(bound, sh.raft.change_membership(wanted, false)).await {
            Err(_) => Err(EconomyError::unavailable(format!(
                "shard {shard}: membership change timed out"
            ))),
            Ok(Err(e)) => Err(map_write_err(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Propose a raw command on a shard (tests drive protocol steps).
    #[cfg(test)]
    pub(crate) async fn write_raw(
        &self,
        shard: u16,
        cmd: Command,
    ) -> Result<Receipt, EconomyError> {
        self.write(&self.inner.shards[shard as usize], cmd).await
    }

    #[cfg(test)]
    pub(crate) fn raft(&self, shard: u16) -> &Raft<EconTypeConfig> {
        &self.inner.shards[shard as usize].raft
    }

    #[cfg(test)]
    pub(crate) fn inner_id(&self) -> NodeId {
        self.inner.cfg.node_id
    }

    #[cfg(test)]
    pub(crate) fn state_of(&self, shard: u16) -> super::state::ShardState {
        self.inner.shards[shard as usize].state.read().clone()
    }
}

impl Drop for Inner {
    /// Raft groups run on their own tasks; stop them when the last handle
    /// goes (an explicit [`Economy::shutdown`] waits for it instead).
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for sh in &self.shards {
                let raft = sh.raft.clone();
                rt.spawn(async move {
                    let _ = raft.shutdown().await;
                });
            }
        }
    }
}

struct RpcHandler(Weak<Inner>);

impl RaftRpcHandler for RpcHandler {
    fn handle(&self, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => Economy { inner }.handle_raft_rpc(rpc).await,
                None => Err("economy closed".into()),
            }
        })
    }
}
