//! The deterministic partition simulator: N region nodes on a turmoil
//! network, each running the real economy (openraft shards on sled), the
//! real leaderboard engine and an LWW credential/profile map, driven by a
//! seeded workload while a seeded fault schedule partitions, crashes and
//! degrades the network. See `docs/simulations.md`.
//!
//! Layout of one seed: `n0..nN` hosts (one UDP port each, carrying Raft
//! RPCs, API calls and CRDT anti-entropy as postcard frames) and one
//! `client` host running the workload. The driver ([`run_seed`]) steps the
//! simulation tick by tick, injects faults between steps and checks the
//! invariants from its observer's view of every node.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_replication::crdt::{Crdt, Hlc, HlcClock, LwwRegister};
use meridian_replication::economy::raft::BoxFuture;
use meridian_replication::economy::{
    Catalog, Economy, EconomyConfig, EconomyError, GrantRequest, NodeId, RaftRpc, RaftTransport,
    ShardNetwork, TxStatus,
};
use meridian_replication::leaderboard::{
    BoardDef, Delta, LeaderboardConfig, LeaderboardEngine, Operator,
};
use meridian_replication::{Batch, Storage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use turmoil::net::UdpSocket;

use crate::checks::{linearizable, percentile, HistKind, HistOp, LinResult, SimRng};
pub use crate::membership::SWIM_PORT;
use crate::membership::{identity, run_swim, SimFoca, SwimHost};
use meridian_mesh::membership::{swim_config, NodeIdentity};

/// The one UDP port of every simulated host.
pub const PORT: u16 = 7000;
/// The leaderboard board the workload submits to.
const BOARD: &str = "best";
/// The currency of the bank workload.
const COINS: &str = "coins";
/// Fixed wall-clock epoch of simulated clocks (2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Price of one potion, in coins.
const POTION_PRICE: i64 = 10;
/// Budget of the linearizability search per account.
const LIN_BUDGET: usize = 200_000;

// ------------------------------------------------------------ config ----

/// A deliberate bug the simulation must catch (`--inject-bug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The API applies every successful transfer a second time.
    ApplyTransferTwice,
    /// The API replaces the client's idempotency key with a fresh one per
    /// delivery, so retries and duplicated messages apply again.
    SkipIdempotency,
    /// The API acknowledges a write before the economy call commits (and
    /// does not retry if that call then fails).
    AckBeforeCommit,
    /// Wallet reads are served from a per-node cache (up to 1 s old).
    StaleReadCache,
    /// The LWW merge of the credential map lets the older stamp win.
    StaleDeltaWins,
    /// Every third score submission is acknowledged without being written.
    DropAckedScore,
    /// n0's Raft log store is off by one: each newly applied entry is also
    /// written into the slot before it, overwriting a committed entry.
    OverwriteCommitted,
    /// The SWIM driver keeps its down list by node name instead of identity
    /// (name + incarnation): a member once declared down stays out of the
    /// node's alive view after it restarts or rejoins with a new incarnation.
    DownListByName,
}

impl Bug {
    pub const ALL: [Bug; 8] = [
        Bug::ApplyTransferTwice,
        Bug::SkipIdempotency,
        Bug::AckBeforeCommit,
        Bug::StaleReadCache,
        Bug::StaleDeltaWins,
        Bug::DropAckedScore,
        Bug::OverwriteCommitted,
        Bug::DownListByName,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Bug::ApplyTransferTwice => "apply-transfer-twice",
            Bug::SkipIdempotency => "skip-idempotency",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::StaleReadCache => "stale-read-cache",
            Bug::StaleDeltaWins => "stale-delta-wins",
            Bug::DropAckedScore => "drop-acked-score",
            Bug::OverwriteCommitted => "overwrite-committed-entry",
            Bug::DownListByName => "down-list-by-name",
        }
    }
    /// The invariant meant to catch it.
    pub fn invariant(self) -> Invariant {
        match self {
            Bug::ApplyTransferTwice | Bug::SkipIdempotency | Bug::AckBeforeCommit => {
                Invariant::Bank
            }
            Bug::StaleReadCache => Invariant::Linearizable,
            // Every replica applies the same wrong merge, so replicas still
            // converge (to the older value): acknowledged writes are lost.
            Bug::StaleDeltaWins => Invariant::LostWrite,
            Bug::DropAckedScore => Invariant::LostWrite,
            Bug::OverwriteCommitted => Invariant::RaftSafety,
            Bug::DownListByName => Invariant::Membership,
        }
    }
    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// Which faults the safety phase injects.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMix {
    /// Two-way, one-way and bridge partitions.
    pub partitions: bool,
    /// Node crashes and restarts from the node's store.
    pub crashes: bool,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram between nodes is sent twice.
    pub dup: f64,
    /// Duplicate client API requests too (exposes the failed-then-applied
    /// finding of docs/simulations.md).
    pub dup_client: bool,
    /// Largest clock skew of a node, in ms (either direction).
    pub skew_ms: u64,
    /// Mean gap between two fault events, in ms.
    pub interval_ms: u64,
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            partitions: true,
            crashes: true,
            loss: 0.02,
            dup: 0.02,
            dup_client: false,
            skew_ms: 250,
            interval_ms: 1_200,
        }
    }
}

/// Relative weights of the workload's operations.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadMix {
    pub register: u32,
    pub login: u32,
    pub profile: u32,
    pub score: u32,
    pub purchase: u32,
    pub transfer: u32,
    /// Linearizable wallet reads (feed the per-account checker).
    pub read: u32,
    /// Grants (money into the bank).
    pub grant: u32,
}

impl Default for WorkloadMix {
    fn default() -> Self {
        Self {
            register: 2,
            login: 1,
            profile: 2,
            score: 3,
            purchase: 2,
            transfer: 5,
            read: 4,
            grant: 3,
        }
    }
}

impl WorkloadMix {
    /// Parse `register=2,transfer=5,...` (names omitted keep their default).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut m = Self::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: want name=weight"))?;
            let v: u32 = v.parse().map_err(|_| format!("`{part}`: bad weight"))?;
            match k {
                "register" => m.register = v,
                "login" => m.login = v,
                "profile" => m.profile = v,
                "score" => m.score = v,
                "purchase" => m.purchase = v,
                "transfer" => m.transfer = v,
                "read" => m.read = v,
                "grant" => m.grant = v,
                _ => return Err(format!("unknown operation `{k}`")),
            }
        }
        Ok(m)
    }
}

/// Everything one seed's run depends on.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub regions: usize,
    /// One-way base latency between regions in ms, `regions x regions`.
    pub latency_ms: Vec<Vec<u64>>,
    /// Extra random latency per datagram, in ms (reorders datagrams).
    pub jitter_ms: u64,
    /// Length of the safety phase (faults on), simulated seconds.
    pub duration_s: u64,
    /// Bound of the liveness phase: everything converges within it.
    pub liveness_bound_s: u64,
    pub shards: u16,
    pub players: usize,
    /// Concurrent workload clients.
    pub clients: usize,
    pub faults: FaultMix,
    pub workload: WorkloadMix,
    pub bug: Option<Bug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 3,
            regions: 3,
            latency_ms: default_latency(3),
            jitter_ms: 10,
            duration_s: 10,
            liveness_bound_s: 30,
            shards: 2,
            players: 6,
            clients: 4,
            faults: FaultMix::default(),
            workload: WorkloadMix::default(),
            bug: None,
        }
    }
}

/// Default matrix: 2 ms inside a region, 20/40/60... ms between regions.
pub fn default_latency(regions: usize) -> Vec<Vec<u64>> {
    (0..regions)
        .map(|a| {
            (0..regions)
                .map(|b| {
                    if a == b {
                        2
                    } else {
                        20 * (a.abs_diff(b) as u64)
                    }
                })
                .collect()
        })
        .collect()
}

/// Parse `2,20,40;20,2,20;40,20,2` (rows by `;`).
pub fn parse_latency(s: &str) -> Result<Vec<Vec<u64>>, String> {
    let m: Vec<Vec<u64>> = s
        .split(';')
        .map(|row| {
            row.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("bad latency `{v}`"))
                })
                .collect::<Result<Vec<u64>, String>>()
        })
        .collect::<Result<_, _>>()?;
    if m.iter().any(|r| r.len() != m.len()) {
        return Err("the latency matrix must be square".into());
    }
    Ok(m)
}

// ------------------------------------------------------------ report ----

/// The invariants, one row each in the summary table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Invariant {
    /// Total conserved, no negative balance, acknowledged = applied once.
    Bank,
    /// Per-account histories linearizable.
    Linearizable,
    /// One leader per term per shard; committed entries never change.
    RaftSafety,
    /// Every replica's CRDT state byte-identical after liveness.
    CrdtConvergence,
    /// Every live node sees every other live node (see docs: approximated).
    Membership,
    /// No acknowledged profile, score or account lost.
    LostWrite,
    /// Everything resolves within the liveness bound.
    Liveness,
}

impl Invariant {
    pub const ALL: [Invariant; 7] = [
        Invariant::Bank,
        Invariant::Linearizable,
        Invariant::RaftSafety,
        Invariant::CrdtConvergence,
        Invariant::Membership,
        Invariant::LostWrite,
        Invariant::Liveness,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Bank => "bank (conserved, >= 0, exactly once)",
            Invariant::Linearizable => "per-account linearizability",
            Invariant::RaftSafety => "raft safety (leader/term, committed)",
            Invariant::CrdtConvergence => "crdt convergence (digest)",
            Invariant::Membership => "membership (live sees live)",
            Invariant::LostWrite => "no lost acknowledged write",
            Invariant::Liveness => "liveness within bound",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_ms: u64,
    pub detail: String,
}

/// What one seed produced.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub trace_hash: String,
    pub violations: Vec<Violation>,
    /// Acknowledged write to visible on every live node, in sim ms.
    pub staleness_ms: Vec<u64>,
    /// Liveness phase start to converged, in sim ms.
    pub convergence_ms: Option<u64>,
    pub ops: u64,
    pub acked: u64,
    pub lin_unknown: u64,
    pub faults: u64,
    /// Raft terms in which two nodes led one shard (allowed by openraft's
    /// (term, node) leader ids; not a violation).
    pub shared_terms: u64,
    /// SWIM failure detection: crash to "not alive" on every live node, ms.
    pub detection_ms: Vec<u64>,
    /// Liveness start to every node seeing every other alive, ms.
    pub membership_ms: Option<u64>,
    pub sim_ms: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
}

impl SeedReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
    /// The readable trace: faults, operations and violations.
    pub fn trace_text(&self) -> String {
        let mut s = String::new();
        for l in &self.trace {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

// ------------------------------------------------------------- wire -----

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Req { id: u64, body: Req },
    Resp { id: u64, body: Vec<u8> },
}

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Raft(RaftRpc),
    Api(ApiReq),
    Repl(ReplMsg),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ApiReq {
    Grant {
        player: String,
        amount: i64,
        key: String,
    },
    Purchase {
        player: String,
        qty: i64,
        key: String,
    },
    Transfer {
        from: String,
        to: String,
        amount: i64,
        key: String,
    },
    Wallet {
        player: String,
    },
    /// Credential (`cred/{user}`) or profile (`profile/{user}`) write.
    SetLww {
        key: String,
        value: String,
    },
    GetLww {
        key: String,
    },
    Score {
        player: u32,
        score: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ApiResp {
    /// status: 0 pending, 1 completed, 2 failed.
    Receipt {
        status: u8,
        balance: i64,
    },
    Balance(i64),
    Stamp(Hlc),
    Value(Option<String>),
    Done,
    Err {
        retryable: bool,
        code: String,
        leader: Option<u64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ReplMsg {
    lb: Vec<u8>,
    lww: Vec<(String, LwwRegister<String>)>,
    hlc: Hlc,
}

// ---------------------------------------------------------- endpoint ----

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Vec<u8>>>>>;
/// A node's LWW map (credentials, profiles), shared with the observer.
type LwwMap = Rc<RefCell<BTreeMap<String, LwwRegister<String>>>>;

/// One host's request/response layer over its UDP socket.
#[derive(Clone)]
struct Endpoint {
    out: mpsc::UnboundedSender<(IpAddr, Vec<u8>)>,
    pending: Pending,
    next: Arc<AtomicU64>,
}

impl Endpoint {
    async fn call(&self, to: IpAddr, body: Req, timeout: Duration) -> Result<Vec<u8>, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let frame = postcard::to_allocvec(&Wire::Req { id, body }).map_err(|e| e.to_string())?;
        let _ = self.out.send((to, frame));
        let res = tokio::time::timeout(timeout, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match res {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(_)) => Err("endpoint closed".into()),
            Err(_) => Err("timeout".into()),
        }
    }

    fn reply(&self, to: IpAddr, id: u64, body: Vec<u8>) {
        if let Ok(frame) = postcard::to_allocvec(&Wire::Resp { id, body }) {
            let _ = self.out.send((to, frame));
        }
    }
}

/// Bind the port, start the send pump (loss and duplication happen here,
/// during the safety phase) and return the endpoint and socket.
async fn bind_endpoint(
    shared: &Rc<Shared>,
    rng_seed: u64,
    dup: f64,
) -> std::io::Result<(Endpoint, Rc<UdpSocket>)> {
    let sock = Rc::new(UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?);
    let (out, mut rx) = mpsc::unbounded_channel::<(IpAddr, Vec<u8>)>();
    let ep = Endpoint {
        out,
        pending: Arc::new(Mutex::new(BTreeMap::new())),
        next: Arc::new(AtomicU64::new(1)),
    };
    let s = sock.clone();
    let sh = shared.clone();
    tokio::task::spawn_local(async move {
        let mut rng = SimRng::new(rng_seed);
        while let Some((to, frame)) = rx.recv().await {
            let faulty = sh.phase.get() == Phase::Safety;
            if faulty && rng.chance(sh.cfg.faults.loss) {
                continue;
            }
            let _ = s.send_to(&frame, (to, PORT)).await;
            if faulty && rng.chance(dup) {
                let _ = s.send_to(&frame, (to, PORT)).await;
            }
        }
    });
    Ok((ep, sock))
}

/// Receive loop: responses complete pending calls, requests go to `serve`.
async fn recv_loop<F>(sock: Rc<UdpSocket>, ep: Endpoint, serve: F) -> std::io::Result<()>
where
    F: Fn(IpAddr, u64, Req),
{
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        match postcard::from_bytes::<Wire>(&buf[..n]) {
            Ok(Wire::Resp { id, body }) => {
                let tx = ep
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(body);
                }
            }
            Ok(Wire::Req { id, body }) => serve(from.ip(), id, body),
            Err(_) => {}
        }
    }
}

/// The economy's Raft transport over the simulated network.
struct SimNet {
    ep: Endpoint,
    peers: Vec<IpAddr>,
}

impl ShardNetwork for SimNet {
    fn send(&self, target: NodeId, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let ep = self.ep.clone();
        let to = self.peers.get((target as usize).wrapping_sub(1)).copied();
        Box::pin(async move {
            let to = to.ok_or_else(|| format!("no node {target}"))?;
            let b = ep
                .call(to, Req::Raft(rpc), Duration::from_millis(300))
                .await?;
            postcard::from_bytes::<Result<Vec<u8>, String>>(&b).map_err(|e| e.to_string())?
        })
    }
}

// ------------------------------------------------------------ shared ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
    Done,
}

/// What the driver can see of a node (the observer's view; cleared on crash
/// so no handle keeps a crashed node's store open).
#[derive(Default)]
struct NodeSlot {
    eco: Option<Economy>,
    lb: Option<Arc<LeaderboardEngine>>,
    lww: Option<LwwMap>,
    storage: Option<Storage>,
    /// Names of the members this node's SWIM (foca) sees alive.
    alive: Option<Rc<RefCell<BTreeSet<String>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    /// Definitely no effect.
    Failed,
    /// Cross-shard transfer aborted after its debit (refunded).
    Aborted,
    Unknown,
}

#[derive(Debug, Clone)]
enum EcoKind {
    Grant { player: usize, amount: i64 },
    Purchase { player: usize, qty: i64 },
    Transfer { from: usize, to: usize, amount: i64 },
    Read { player: usize, value: i64 },
}

#[derive(Debug, Clone)]
struct EcoOp {
    kind: EcoKind,
    key: String,
    invoke_us: u64,
    complete_us: u64,
    outcome: Outcome,
}

/// An acknowledged CRDT write, waiting to be visible everywhere.
#[derive(Debug, Clone)]
enum AckedCrdt {
    Lww { key: String, stamp: Hlc },
    Score { player: u32, score: i64 },
}

struct Shared {
    cfg: SimConfig,
    dirs: Vec<PathBuf>,
    phase: Cell<Phase>,
    nodes: RefCell<Vec<NodeSlot>>,
    incarnation: RefCell<Vec<u64>>,
    skew_ms: Vec<i64>,
    trace: RefCell<Vec<String>>,
    eco_ops: RefCell<Vec<EcoOp>>,
    acked_crdt: RefCell<Vec<(u64, AckedCrdt)>>,
    ops: Cell<u64>,
    /// Set by the driver when the liveness checks are done.
    converged: Cell<bool>,
    final_wallets: RefCell<BTreeMap<usize, i64>>,
    workers_done: Cell<usize>,
    /// Debug: Raft RPCs received per (node, sender/kind).
    raft_rx: RefCell<BTreeMap<(usize, String), u64>>,
    /// Scheduled operations not finished yet.
    inflight: Cell<usize>,
    /// The seeded schedule (faults, operations): what the trace hash covers.
    schedule: RefCell<Vec<String>>,
}

impl Shared {
    /// A line of the seeded schedule: in the readable trace and the hash.
    fn sched(&self, line: String) {
        self.trace.borrow_mut().push(line.clone());
        self.schedule.borrow_mut().push(line);
    }
    fn log(&self, line: String) {
        let t = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        self.trace.borrow_mut().push(format!("{t:>7}ms {line}"));
    }
}

fn player_name(i: usize) -> String {
    format!("p{i}")
}

fn player_uuid(i: u32) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 + u128::from(i) + 1)
}

fn catalog() -> Catalog {
    serde_json::from_str(
        r#"{"items":[{"item_id":"potion","name":"Potion","prices":{"coins":10},
            "max_per_purchase":5,"stack_limit":100000}]}"#,
    )
    .expect("catalog")
}

fn lb_config() -> LeaderboardConfig {
    LeaderboardConfig {
        boards: vec![BoardDef {
            name: BOARD.into(),
            sort: Default::default(),
            operator: Operator::Best,
            reset: Default::default(),
            cron: None,
            scope: Default::default(),
            min_score: None,
            max_score: None,
        }],
        level_curve: Default::default(),
    }
}

fn lww_key(key: &str) -> Vec<u8> {
    format!("sim/lww/{key}").into_bytes()
}

// -------------------------------------------------------------- node ----

/// One incarnation of a node (rebuilt on every restart).
struct Node {
    idx: usize,
    shared: Rc<Shared>,
    ep: Endpoint,
    peers: Vec<IpAddr>,
    eco: RefCell<Option<Economy>>,
    lb: Arc<LeaderboardEngine>,
    lww: LwwMap,
    storage: Storage,
    clock: RefCell<HlcClock>,
    cursors: RefCell<Vec<u64>>,
    read_cache: RefCell<BTreeMap<String, (u64, i64)>>,
    deliveries: Cell<u64>,
    scores: Cell<u64>,
}

impl Node {
    /// This node's (skewed) physical clock, Unix ms.
    fn phys_ms(&self) -> u64 {
        let t = EPOCH_MS as i64
            + turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64
            + self.shared.skew_ms[self.idx];
        t.max(0) as u64
    }
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.phys_ms() as i64).unwrap_or_default()
    }
    fn bug(&self, b: Bug) -> bool {
        self.shared.cfg.bug == Some(b)
    }
}

fn eco_err(e: &EconomyError, eco: &Economy, player: &str) -> ApiResp {
    let leader = eco
        .shards()
        .get(eco.shard_of(player) as usize)
        .and_then(|s| s.leader);
    let code = if std::env::var_os("MERIDIAN_SIM_DEBUG").is_some() {
        format!("{}: {e}", e.code())
    } else {
        e.code().to_string()
    };
    ApiResp::Err {
        retryable: e.is_retryable() || matches!(e, EconomyError::Storage(_)),
        code,
        leader,
    }
}

fn status_code(s: &TxStatus) -> u8 {
    match s {
        TxStatus::Pending => 0,
        TxStatus::Completed => 1,
        TxStatus::Failed => 2,
    }
}

async fn serve_api(node: Rc<Node>, req: ApiReq) -> ApiResp {
    let unavailable = ApiResp::Err {
        retryable: true,
        code: "not_ready".into(),
        leader: None,
    };
    let eco = node.eco.borrow().clone();
    let n = node.deliveries.get() + 1;
    node.deliveries.set(n);
    let fresh_key = |key: &str| {
        if node.bug(Bug::SkipIdempotency) {
            format!("{key}-d{}-{n}", node.idx)
        } else {
            key.to_string()
        }
    };
    match req {
        ApiReq::Grant {
            player,
            amount,
            key,
        } => {
            let Some(eco) = eco else { return unavailable };
            let g = GrantRequest {
                player_id: player.clone(),
                currency: Some(COINS.into()),
                amount: Some(amount),
                reason: "sim".into(),
                idempotency_key: fresh_key(&key),
                ..Default::default()
            };
            if node.bug(Bug::AckBeforeCommit) {
                tokio::task::spawn_local(async move {
                    let _ = eco.grant(g).await;
                });
                return ApiResp::Receipt {
                    status: 1,
                    balance: 0,
                };
            }
            match eco.grant(g).await {
                Ok(r) => ApiResp::Receipt {
                    status: status_code(&r.status),
                    balance: r.balances.get(COINS).copied().unwrap_or(0),
                },
                Err(e) => eco_err(&e, &eco, &player),
            }
        }
        ApiReq::Purchase { player, qty, key } => {
            let Some(eco) = eco else { return unavailable };
            match eco
                .purchase(&player, "potion", qty, COINS, &fresh_key(&key))
                .await
            {
                Ok(r) => ApiResp::Receipt {
                    status: status_code(&r.status),
                    balance: r.balances.get(COINS).copied().unwrap_or(0),
                },
                Err(e) => eco_err(&e, &eco, &player),
            }
        }
        ApiReq::Transfer {
            from,
            to,
            amount,
            key,
        } => {
            let Some(eco) = eco else { return unavailable };
            if node.bug(Bug::AckBeforeCommit) {
                let k = fresh_key(&key);
                tokio::task::spawn_local(async move {
                    let _ = eco.transfer(&from, &to, COINS, amount, &k).await;
                });
                return ApiResp::Receipt {
                    status: 1,
                    balance: 0,
                };
            }
            match eco
                .transfer(&from, &to, COINS, amount, &fresh_key(&key))
                .await
            {
                Ok(r) => {
                    if node.bug(Bug::ApplyTransferTwice) && r.status == TxStatus::Completed {
                        let _ = eco
                            .transfer(&from, &to, COINS, amount, &format!("{key}-again"))
                            .await;
                    }
                    ApiResp::Receipt {
                        status: status_code(&r.status),
                        balance: r.balances.get(COINS).copied().unwrap_or(0),
                    }
                }
                Err(e) => eco_err(&e, &eco, &from),
            }
        }
        ApiReq::Wallet { player } => {
            let Some(eco) = eco else { return unavailable };
            let now = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
            if node.bug(Bug::StaleReadCache) {
                if let Some((at, v)) = node.read_cache.borrow().get(&player) {
                    if now.saturating_sub(*at) < 1_000 {
                        return ApiResp::Balance(*v);
                    }
                }
            }
            match eco.wallet(&player).await {
                Ok(w) => {
                    let v = w.get(COINS).copied().unwrap_or(0);
                    node.read_cache.borrow_mut().insert(player, (now, v));
                    ApiResp::Balance(v)
                }
                Err(e) => eco_err(&e, &eco, &player),
            }
        }
        ApiReq::SetLww { key, value } => {
            let at = node.clock.borrow_mut().now(node.phys_ms());
            let reg = {
                let mut m = node.lww.borrow_mut();
                let r = m.entry(key.clone()).or_default();
                r.set(value, at);
                r.clone()
            };
            let mut b = Batch::new();
            b.put(lww_key(&key), reg.to_bytes());
            match node.storage.commit(&b).await {
                Ok(()) => ApiResp::Stamp(at),
                Err(_) => ApiResp::Err {
                    retryable: true,
                    code: "storage".into(),
                    leader: None,
                },
            }
        }
        ApiReq::GetLww { key } => {
            ApiResp::Value(node.lww.borrow().get(&key).and_then(|r| r.value().cloned()))
        }
        ApiReq::Score { player, score } => {
            let c = node.scores.get() + 1;
            node.scores.set(c);
            if node.bug(Bug::DropAckedScore) && c.is_multiple_of(3) {
                return ApiResp::Done;
            }
            match node
                .lb
                .submit(BOARD, player_uuid(player), score, node.now())
                .await
            {
                Ok(_) => ApiResp::Done,
                Err(e) => ApiResp::Err {
                    retryable: false,
                    code: e.to_string(),
                    leader: None,
                },
            }
        }
    }
}

/// Merge a remote LWW register into the local one; true if it changed.
fn merge_lww(
    local: &mut LwwRegister<String>,
    remote: &LwwRegister<String>,
    stale_wins: bool,
) -> bool {
    if stale_wins {
        // The injected bug: the older stamp wins.
        return match (&local.entry, &remote.entry) {
            (Some(l), Some(r)) if r < l => {
                *local = remote.clone();
                true
            }
            (None, Some(_)) => {
                *local = remote.clone();
                true
            }
            _ => false,
        };
    }
    let before = local.clone();
    local.merge(remote);
    *local != before
}

async fn serve_repl(node: Rc<Node>, msg: ReplMsg) -> Result<(), String> {
    let phys = node.phys_ms();
    let _ = node.clock.borrow_mut().observe(msg.hlc, phys);
    let delta = Delta::from_bytes(&msg.lb).map_err(|e| e.to_string())?;
    if !delta.entries.is_empty() {
        node.lb
            .merge_remote(&delta, node.now())
            .await
            .map_err(|e| e.to_string())?;
    }
    let stale = node.bug(Bug::StaleDeltaWins);
    let mut b = Batch::new();
    {
        let mut m = node.lww.borrow_mut();
        for (k, r) in &msg.lww {
            if let Some(s) = r.stamp() {
                let _ = node.clock.borrow_mut().observe(s, phys);
            }
            let local = m.entry(k.clone()).or_default();
            if merge_lww(local, r, stale) {
                b.put(lww_key(k), local.to_bytes());
            }
        }
    }
    if !b.is_empty() {
        node.storage.commit(&b).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Push-based anti-entropy: every 100 ms send each peer the leaderboard
/// delta since its acknowledged cursor and the whole LWW map.
async fn anti_entropy(node: Rc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lww: Vec<(String, LwwRegister<String>)> = node
            .lww
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut calls = Vec::new();
        for (p, &ip) in node.peers.iter().enumerate() {
            if p == node.idx {
                continue;
            }
            let cursor = node.cursors.borrow()[p];
            let Ok(delta) = node.lb.delta_since(cursor, 1_000) else {
                continue;
            };
            let hlc = node.clock.borrow_mut().now(node.phys_ms());
            let msg = ReplMsg {
                lb: delta.to_bytes(),
                lww: lww.clone(),
                hlc,
            };
            let ep = node.ep.clone();
            let n = node.clone();
            calls.push(async move {
                if let Ok(b) = ep
                    .call(ip, Req::Repl(msg), Duration::from_millis(400))
                    .await
                {
                    if postcard::from_bytes::<Result<(), String>>(&b)
                        .map(|r| r.is_ok())
                        .unwrap_or(false)
                    {
                        let mut c = n.cursors.borrow_mut();
                        c[p] = c[p].max(delta.version);
                    }
                }
            });
        }
        futures::future::join_all(calls).await;
    }
}

async fn open_storage(shared: &Shared, idx: usize) -> Storage {
    loop {
        match Storage::open_sled(&shared.dirs[idx]) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The Raft heartbeat interval for a latency matrix. openraft uses the
/// heartbeat interval as the AppendEntries timeout too, so it must exceed the
/// slowest round trip between two nodes (both ways at the largest one-way
/// latency plus jitter), with a margin. A shorter one makes every answer from
/// a far voter time out: a far node that raised its term while cut off is then
/// never heard by the leader, and stays a candidate after the heal.
pub fn heartbeat_ms(cfg: &SimConfig) -> u64 {
    let worst = cfg.latency_ms.iter().flatten().copied().max().unwrap_or(0);
    (2 * (worst + cfg.jitter_ms + 1) + 40).max(50)
}

fn election_timeout(seed: u64, idx: usize, heartbeat: u64) -> u64 {
    // Distinct per node (spread 60 ms apart), shifted by the seed.
    let mut r = SimRng::new(seed ^ 0xe1ec);
    let offset = r.range(0, 60);
    3 * heartbeat + 60 * idx as u64 + offset
}

async fn node_main(shared: Rc<Shared>, idx: usize) -> turmoil::Result {
    let inc = {
        let mut v = shared.incarnation.borrow_mut();
        v[idx] += 1;
        v[idx]
    };
    let (ep, sock) = bind_endpoint(
        &shared,
        shared.cfg.seed ^ ((idx as u64) << 40) ^ inc,
        shared.cfg.faults.dup,
    )
    .await?;
    let peers: Vec<IpAddr> = (0..shared.cfg.nodes)
        .map(|i| turmoil::lookup(format!("n{i}")))
        .collect();
    let storage = open_storage(&shared, idx).await;
    let lb = Arc::new(
        LeaderboardEngine::open(
            storage.clone(),
            &lb_config(),
            idx as u64 + 1,
            &format!("r{}", idx % shared.cfg.regions),
        )
        .map_err(|e| e.to_string())?,
    );
    let mut lww = BTreeMap::new();
    for (k, v) in storage.scan_prefix(b"sim/lww/", usize::MAX)? {
        let key = String::from_utf8_lossy(&k[b"sim/lww/".len()..]).into_owned();
        if let Ok(r) = LwwRegister::<String>::from_bytes(&v) {
            lww.insert(key, r);
        }
    }
    let mut clock = HlcClock::new(idx as u64 + 1);
    let phys = (EPOCH_MS as i64
        + turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64
        + shared.skew_ms[idx])
        .max(0) as u64;
    for r in lww.values() {
        if let Some(s) = r.stamp() {
            let _ = clock.observe(s, phys);
        }
    }
    let alive: Rc<RefCell<BTreeSet<String>>> = Rc::new(RefCell::new(BTreeSet::new()));
    let node = Rc::new(Node {
        idx,
        shared: shared.clone(),
        ep: ep.clone(),
        peers: peers.clone(),
        eco: RefCell::new(None),
        lb: lb.clone(),
        lww: Rc::new(RefCell::new(lww)),
        storage: storage.clone(),
        clock: RefCell::new(clock),
        cursors: RefCell::new(vec![0; shared.cfg.nodes]),
        read_cache: RefCell::new(BTreeMap::new()),
        deliveries: Cell::new(0),
        scores: Cell::new(0),
    });
    {
        let mut slots = shared.nodes.borrow_mut();
        slots[idx] = NodeSlot {
            eco: None,
            lb: Some(lb),
            lww: Some(node.lww.clone()),
            storage: Some(storage.clone()),
            alive: Some(alive.clone()),
        };
    }
    {
        let shared = shared.clone();
        let alive = alive.clone();
        tokio::task::spawn_local(async move {
            let swim = swim_main(shared.clone(), idx, inc, alive);
            let swim =
                tracing::Instrument::instrument(swim, tracing::debug_span!("swim", node = idx));
            if let Err(e) = swim.await {
                shared.log(format!("n{idx} swim stopped: {e}"));
            }
        });
    }
    let members: BTreeMap<NodeId, String> = (0..shared.cfg.nodes)
        .map(|i| (i as NodeId + 1, format!("n{i}")))
        .collect();
    let hb = heartbeat_ms(&shared.cfg);
    let t = election_timeout(shared.cfg.seed, idx, hb);
    let cfg = EconomyConfig {
        shards: shared.cfg.shards,
        catalog: catalog(),
        node_id: idx as NodeId + 1,
        node_addr: format!("n{idx}"),
        bootstrap: true,
        bootstrap_members: members,
        transport: RaftTransport::Custom(Arc::new(SimNet {
            ep: ep.clone(),
            peers,
        })),
        quorum_ack_max_age_ms: (3 * hb).max(400),
        leader_wait_ms: (4 * hb).max(600),
        commit_timeout_ms: 1_500,
        recovery_interval_ms: 300,
        heartbeat_interval_ms: hb,
        election_timeout_ms: Some((t, t + 1)),
        ..Default::default()
    };
    {
        let node = node.clone();
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            match Economy::open(storage, cfg).await {
                Ok(eco) => {
                    *node.eco.borrow_mut() = Some(eco.clone());
                    shared.nodes.borrow_mut()[idx].eco = Some(eco);
                }
                Err(e) => shared.log(format!("n{idx} economy open failed: {e}")),
            }
        });
    }
    tokio::task::spawn_local(anti_entropy(node.clone()));
    let n2 = node.clone();
    recv_loop(sock, ep.clone(), move |from, id, req| {
        let node = n2.clone();
        tokio::task::spawn_local(async move {
            let body = match req {
                Req::Raft(rpc) => {
                    {
                        let mut rx = node.shared.raft_rx.borrow_mut();
                        *rx.entry((node.idx, format!("{from}/{:?}", rpc.kind)))
                            .or_default() += 1;
                    }
                    let eco = node.eco.borrow().clone();
                    let r = match eco {
                        Some(e) => e.handle_raft_rpc(rpc).await,
                        None => Err("economy not open".to_string()),
                    };
                    postcard::to_allocvec(&r).unwrap_or_default()
                }
                Req::Api(a) => {
                    postcard::to_allocvec(&serve_api(node.clone(), a).await).unwrap_or_default()
                }
                Req::Repl(m) => {
                    postcard::to_allocvec(&serve_repl(node.clone(), m).await).unwrap_or_default()
                }
            };
            node.ep.reply(from, id, body);
        });
    })
    .await?;
    Ok(())
}

// -------------------------------------------------------- membership ----

/// The whole-node simulator's side of [`run_swim`]: joins through every
/// peer while it misses one (every 500 ms), loses datagrams only in the
/// safety phase, and publishes the alive set for the membership checker.
struct NodeSwim {
    shared: Rc<Shared>,
    idx: usize,
    loss: SimRng,
    alive: Rc<RefCell<BTreeSet<String>>>,
    /// Injected bug `down-list-by-name`: names of members once seen down.
    down_names: BTreeSet<String>,
}

fn swim_identity(shared: &Shared, i: usize, ip: IpAddr, inc: u64) -> NodeIdentity {
    identity(
        format!("n{i}"),
        format!("r{}", i % shared.cfg.regions.max(1)),
        std::net::SocketAddr::new(ip, SWIM_PORT),
        inc,
    )
}

impl SwimHost for NodeSwim {
    fn join_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn join(&mut self, foca: &SimFoca) -> Vec<NodeIdentity> {
        let n = self.shared.cfg.nodes;
        if foca.num_members() + 1 >= n {
            return Vec::new();
        }
        // Join (and re-join after a restart) through every peer.
        (0..n)
            .filter(|i| *i != self.idx)
            .map(|i| swim_identity(&self.shared, i, turmoil::lookup(format!("n{i}")), 0))
            .collect()
    }

    fn drop_datagram(&mut self) -> bool {
        let faulty = self.shared.phase.get() == Phase::Safety;
        faulty && self.loss.chance(self.shared.cfg.faults.loss)
    }

    fn observe(&mut self, foca: &SimFoca, notes: &[foca::OwnedNotification<NodeIdentity>]) {
        let by_name = self.shared.cfg.bug == Some(Bug::DownListByName);
        for n in notes {
            tracing::debug!(node = self.idx, "swim notification {n:?}");
            if let (true, foca::OwnedNotification::MemberDown(id)) = (by_name, n) {
                self.down_names.insert(id.node_id.clone());
            }
        }
        let down_names = &self.down_names;
        let now: BTreeSet<String> = foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Alive && !down_names.contains(&m.id().node_id))
            .map(|m| m.id().node_id.clone())
            .collect();
        *self.alive.borrow_mut() = now;
    }
}

/// Run foca over the simulated UDP port [`SWIM_PORT`] ([`run_swim`]); the
/// alive set is published for the membership checker.
async fn swim_main(
    shared: Rc<Shared>,
    idx: usize,
    inc: u64,
    alive: Rc<RefCell<BTreeSet<String>>>,
) -> std::io::Result<()> {
    let me = swim_identity(&shared, idx, turmoil::lookup(format!("n{idx}")), inc);
    let rng_seed = shared.cfg.seed ^ ((idx as u64) << 32) ^ inc;
    let host = NodeSwim {
        loss: SimRng::new(shared.cfg.seed ^ 0x5717 ^ ((idx as u64) << 16) ^ inc),
        shared,
        idx,
        alive,
        down_names: BTreeSet::new(),
    };
    run_swim(me, swim_config(), rng_seed, host).await
}

// ------------------------------------------------------------ client ----

struct Client {
    shared: Rc<Shared>,
    ep: Endpoint,
    nodes: Vec<IpAddr>,
}

fn now_us() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_micros() as u64
}

impl Client {
    async fn api(&self, node: usize, req: ApiReq) -> Option<ApiResp> {
        let b = self
            .ep
            .call(
                self.nodes[node],
                Req::Api(req),
                Duration::from_millis(2_000),
            )
            .await
            .ok()?;
        postcard::from_bytes(&b).ok()
    }

    /// Run an economy write with the same key until a definite outcome or
    /// `attempts` run out; follows leader hints.
    async fn eco_write(&self, rng: &mut SimRng, req: ApiReq, attempts: usize) -> (Outcome, String) {
        let mut node = rng.range(0, self.nodes.len() as u64) as usize;
        let mut last = "timeout".to_string();
        for attempt in 0..attempts {
            let res = self.api(node, req.clone()).await;
            self.shared
                .log(format!("  attempt {attempt} at n{node} {req:?}: {res:?}"));
            match res {
                Some(ApiResp::Receipt { status: 1, .. }) => {
                    return (Outcome::Completed, "ok".into())
                }
                Some(ApiResp::Receipt { status: 2, .. }) => {
                    return (Outcome::Aborted, "aborted".into())
                }
                Some(ApiResp::Receipt { .. }) => last = "pending".into(),
                Some(ApiResp::Err {
                    retryable: false,
                    code,
                    ..
                }) => return (Outcome::Failed, code),
                Some(ApiResp::Err { code, leader, .. }) => {
                    last = code;
                    if let Some(l) = leader {
                        node = (l as usize - 1) % self.nodes.len();
                        continue;
                    }
                }
                Some(_) => last = "unexpected".into(),
                None => last = "timeout".into(),
            }
            tokio::time::sleep(Duration::from_millis(rng.range(50, 200))).await;
            node = rng.range(0, self.nodes.len() as u64) as usize;
        }
        (Outcome::Unknown, last)
    }
}

/// One scheduled operation; everything random about it is drawn when the
/// schedule is made, so the schedule depends on the seed only.
#[derive(Debug, Clone)]
struct OpSpec {
    at_ms: u64,
    op: usize,
    p: usize,
    node: usize,
    user: u64,
    score: i64,
    qty: i64,
    to: usize,
    amount: i64,
    grant: i64,
    key: String,
}

const OP_NAMES: [&str; 8] = [
    "register", "login", "profile", "score", "purchase", "transfer", "read", "grant",
];

/// Open-loop workload of one client: the whole schedule is drawn up front
/// (op, parameters, start time), then each op runs at its time whatever
/// the earlier ones are doing.
async fn worker(c: Rc<Client>, w: usize, start_ms: u64, end_ms: u64) {
    let sh = c.shared.clone();
    let cfg = sh.cfg.clone();
    let mut rng = SimRng::new(cfg.seed.wrapping_mul(31) ^ ((w as u64 + 1) << 20));
    let mix = &cfg.workload;
    let weights = [
        mix.register,
        mix.login,
        mix.profile,
        mix.score,
        mix.purchase,
        mix.transfer,
        mix.read,
        mix.grant,
    ];
    let total: u32 = weights.iter().sum();
    let mut at = start_ms;
    let mut seq = 0u64;
    loop {
        if total == 0 {
            break;
        }
        at += rng.range(50, 250);
        if at >= end_ms {
            break;
        }
        seq += 1;
        let mut r = rng.range(0, u64::from(total)) as u32;
        let mut op = 0;
        while r >= weights[op] {
            r -= weights[op];
            op += 1;
        }
        let players = cfg.players;
        let p = rng.range(0, players as u64) as usize;
        let mut to = rng.range(0, players as u64 - 1) as usize;
        if to >= p {
            to += 1;
        }
        let spec = OpSpec {
            at_ms: at,
            op,
            p,
            node: rng.range(0, c.nodes.len() as u64) as usize,
            user: rng.range(0, 6),
            score: rng.range(0, 10_000) as i64,
            qty: rng.range(1, 4) as i64,
            to,
            amount: rng.range(1, 60) as i64,
            grant: rng.range(50, 200) as i64,
            key: format!("w{w}-{seq}"),
        };
        sh.sched(format!(
            "{at:>7}ms schedule {} {} p{} n{} u{} s{} q{} to{} a{} g{}",
            spec.key,
            OP_NAMES[op],
            spec.p,
            spec.node,
            spec.user,
            spec.score,
            spec.qty,
            spec.to,
            spec.amount,
            spec.grant
        ));
        sh.inflight.set(sh.inflight.get() + 1);
        tokio::task::spawn_local(run_op(c.clone(), spec));
    }
    sh.workers_done.set(sh.workers_done.get() + 1);
}

async fn run_op(c: Rc<Client>, spec: OpSpec) {
    let sh = c.shared.clone();
    let now = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(spec.at_ms.saturating_sub(now))).await;
    sh.ops.set(sh.ops.get() + 1);
    let OpSpec {
        op,
        p,
        node,
        user,
        score,
        qty,
        to,
        amount,
        grant,
        key,
        ..
    } = spec;
    let mut rng = SimRng::new(sh.cfg.seed ^ key_hash(&key));
    match op {
        0 | 2 => {
            // Registration (credential) or profile edit: an LWW write.
            let k = if op == 0 {
                format!("cred/u{user}")
            } else {
                format!("profile/u{user}")
            };
            let value = key.to_string();
            let res = c
                .api(
                    node,
                    ApiReq::SetLww {
                        key: k.clone(),
                        value,
                    },
                )
                .await;
            match res {
                Some(ApiResp::Stamp(stamp)) => {
                    sh.log(format!("set {k} at n{node} -> ok"));
                    sh.acked_crdt
                        .borrow_mut()
                        .push((now_us(), AckedCrdt::Lww { key: k, stamp }));
                }
                _ => sh.log(format!("set {k} at n{node} -> unknown")),
            }
        }
        1 => {
            let res = c
                .api(
                    node,
                    ApiReq::GetLww {
                        key: format!("cred/u{user}"),
                    },
                )
                .await;
            let class = match res {
                Some(ApiResp::Value(Some(_))) => "found",
                Some(ApiResp::Value(None)) => "absent",
                _ => "unknown",
            };
            sh.log(format!("login u{user} at n{node} -> {class}"));
        }
        3 => {
            let res = c
                .api(
                    node,
                    ApiReq::Score {
                        player: p as u32,
                        score,
                    },
                )
                .await;
            if let Some(ApiResp::Done) = res {
                sh.log(format!("score p{p}={score} at n{node} -> ok"));
                sh.acked_crdt.borrow_mut().push((
                    now_us(),
                    AckedCrdt::Score {
                        player: p as u32,
                        score,
                    },
                ));
            } else {
                sh.log(format!("score p{p}={score} at n{node} -> unknown"));
            }
        }
        4 | 5 | 7 => {
            let (kind, req) = match op {
                4 => (
                    EcoKind::Purchase { player: p, qty },
                    ApiReq::Purchase {
                        player: player_name(p),
                        qty,
                        key: key.clone(),
                    },
                ),
                5 => (
                    EcoKind::Transfer {
                        from: p,
                        to,
                        amount,
                    },
                    ApiReq::Transfer {
                        from: player_name(p),
                        to: player_name(to),
                        amount,
                        key: key.clone(),
                    },
                ),
                _ => {
                    let amount = grant;
                    (
                        EcoKind::Grant { player: p, amount },
                        ApiReq::Grant {
                            player: player_name(p),
                            amount,
                            key: key.clone(),
                        },
                    )
                }
            };
            let invoke = now_us();
            let (outcome, class) = c.eco_write(&mut rng, req, 3).await;
            sh.log(format!("{kind:?} {key} -> {class}"));
            sh.eco_ops.borrow_mut().push(EcoOp {
                kind,
                key,
                invoke_us: invoke,
                complete_us: now_us(),
                outcome,
            });
        }
        _ => {
            let mut invoke = now_us();
            let req = ApiReq::Wallet {
                player: player_name(p),
            };
            let mut res = c.api(node, req.clone()).await;
            if let Some(ApiResp::Err {
                leader: Some(l), ..
            }) = res
            {
                invoke = now_us();
                res = c.api((l as usize - 1) % c.nodes.len(), req).await;
            }
            if let Some(ApiResp::Balance(v)) = res {
                sh.log(format!("read p{p} at n{node} -> {v}"));
                sh.eco_ops.borrow_mut().push(EcoOp {
                    kind: EcoKind::Read {
                        player: p,
                        value: v,
                    },
                    key,
                    invoke_us: invoke,
                    complete_us: now_us(),
                    outcome: Outcome::Completed,
                });
            } else {
                sh.log(format!("read p{p} at n{node} -> unknown"));
            }
        }
    }
    sh.inflight.set(sh.inflight.get() - 1);
}

fn key_hash(key: &str) -> u64 {
    let d = Sha256::digest(key.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn eco_req(kind: &EcoKind, key: &str) -> Option<ApiReq> {
    Some(match kind {
        EcoKind::Grant { player, amount } => ApiReq::Grant {
            player: player_name(*player),
            amount: *amount,
            key: key.into(),
        },
        EcoKind::Purchase { player, qty } => ApiReq::Purchase {
            player: player_name(*player),
            qty: *qty,
            key: key.into(),
        },
        EcoKind::Transfer { from, to, amount } => ApiReq::Transfer {
            from: player_name(*from),
            to: player_name(*to),
            amount: *amount,
            key: key.into(),
        },
        EcoKind::Read { .. } => return None,
    })
}

async fn client_main(shared: Rc<Shared>) -> turmoil::Result {
    // Client requests travel over HTTP/TCP in production: duplicated only
    // with `dup_client` (see docs/simulations.md, "Findings").
    let dup = if shared.cfg.faults.dup_client {
        shared.cfg.faults.dup
    } else {
        0.0
    };
    let (ep, sock) = bind_endpoint(&shared, shared.cfg.seed ^ 0xc11e, dup).await?;
    let nodes: Vec<IpAddr> = (0..shared.cfg.nodes)
        .map(|i| turmoil::lookup(format!("n{i}")))
        .collect();
    let e2 = ep.clone();
    tokio::task::spawn_local(async move {
        let _ = recv_loop(sock, e2, |_, _, _| {}).await;
    });
    let c = Rc::new(Client {
        shared: shared.clone(),
        ep,
        nodes,
    });
    // Let the first elections finish.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let end_ms = shared.cfg.duration_s * 1_000 + 1_500;
    for w in 0..shared.cfg.clients {
        tokio::task::spawn_local(worker(c.clone(), w, 1_500, end_ms));
    }
    while shared.phase.get() == Phase::Safety
        || shared.workers_done.get() < shared.cfg.clients
        || shared.inflight.get() > 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Liveness: resolve every operation whose outcome is unknown (or a
    // pending cross-shard transfer) by retrying it with the same key.
    let mut rng = SimRng::new(shared.cfg.seed ^ 0x11fe);
    // Passes over the unresolved operations until none is left or the
    // liveness bound (minus time for the final reads) is near.
    let n = shared.eco_ops.borrow().len();
    let resolve_until = now_us() + shared.cfg.liveness_bound_s.saturating_sub(5) * 1_000_000;
    loop {
        let mut left = 0;
        for i in 0..n {
            let (kind, key, outcome) = {
                let ops = shared.eco_ops.borrow();
                (ops[i].kind.clone(), ops[i].key.clone(), ops[i].outcome)
            };
            if outcome != Outcome::Unknown {
                continue;
            }
            let Some(req) = eco_req(&kind, &key) else {
                continue;
            };
            let (out, class) = c.eco_write(&mut rng, req, 10).await;
            shared.log(format!("resolve {key} -> {class}"));
            let mut ops = shared.eco_ops.borrow_mut();
            ops[i].outcome = out;
            ops[i].complete_us = now_us();
            if out == Outcome::Unknown {
                left += 1;
            }
        }
        if left == 0 || now_us() >= resolve_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Final linearizable wallet reads.
    for p in 0..shared.cfg.players {
        for attempt in 0..30 {
            let node = (p + attempt) % c.nodes.len();
            if let Some(ApiResp::Balance(v)) = c
                .api(
                    node,
                    ApiReq::Wallet {
                        player: player_name(p),
                    },
                )
                .await
            {
                shared.final_wallets.borrow_mut().insert(p, v);
                shared.log(format!("final wallet p{p} = {v}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while !shared.converged.get() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.phase.set(Phase::Done);
    Ok(())
}

// ------------------------------------------------------------ driver ----

/// The driver's Raft observations.
#[derive(Default)]
struct RaftObs {
    /// (shard, term) -> leaders seen.
    leaders: BTreeMap<(u16, u64), BTreeSet<NodeId>>,
    /// Terms with more than one leader (see `check_raft`).
    shared_terms: u64,
    /// (shard, index) -> hash of the committed log entry.
    committed: BTreeMap<(u16, u64), [u8; 32]>,
    /// (node, shard) -> highest index already compared.
    cursor: BTreeMap<(usize, u16), u64>,
}

fn raft_log_key(shard: u16, index: u64) -> Vec<u8> {
    format!("raft/{shard:02}/log/{index:020}").into_bytes()
}

fn check_raft(sh: &Shared, obs: &mut RaftObs, out: &mut Vec<Violation>, t_ms: u64) {
    let slots = sh.nodes.borrow();
    for (i, slot) in slots.iter().enumerate() {
        let (Some(eco), Some(st)) = (&slot.eco, &slot.storage) else {
            continue;
        };
        let me = i as NodeId + 1;
        for s in eco.shards() {
            if s.leader == Some(me) {
                // openraft's leader id is (term, node) unless the
                // `single-term-leader` feature is on (it is not in this
                // workspace: with it, elections split so often that 45 of
                // 200 seeds miss the liveness bound), so two leaders of one
                // term are allowed and counted; the safety that matters
                // (committed entries never change) is checked below.
                let set = obs.leaders.entry((s.shard, s.term)).or_default();
                if set.insert(me) && set.len() == 2 {
                    obs.shared_terms += 1;
                }
            }
            let applied = s.last_applied_index.unwrap_or(0);
            if i == 0 && applied >= 2 && sh.cfg.bug == Some(Bug::OverwriteCommitted) {
                if let Ok(Some(last)) = st.get(&raft_log_key(s.shard, applied)) {
                    let mut b = meridian_replication::store::Batch::new();
                    b.put(raft_log_key(s.shard, applied - 1), last);
                    let _ = st.commit_nosync(&b);
                }
            }
            let cur = obs.cursor.entry((i, s.shard)).or_insert(0);
            let from = (*cur + 1).max(applied.saturating_sub(200));
            for idx in from..=applied {
                if let Ok(Some(bytes)) = st.get(&raft_log_key(s.shard, idx)) {
                    let h: [u8; 32] = Sha256::digest(&bytes).into();
                    match obs.committed.get(&(s.shard, idx)) {
                        Some(prev) if *prev != h => out.push(Violation {
                            invariant: Invariant::RaftSafety,
                            at_ms: t_ms,
                            detail: format!(
                                "shard {} committed index {idx} differs on n{i}",
                                s.shard
                            ),
                        }),
                        Some(_) => {}
                        None => {
                            obs.committed.insert((s.shard, idx), h);
                        }
                    }
                }
            }
            *cur = (*cur).max(applied);
        }
    }
}

/// At the end of a seed: every committed entry still in a node's log (not
/// purged by a snapshot) must hash as it did when first seen, so an entry
/// rewritten after the every-10-ms check passed it is caught too.
fn recheck_committed(sh: &Shared, obs: &RaftObs, out: &mut Vec<Violation>, t_ms: u64) {
    let slots = sh.nodes.borrow();
    for (i, slot) in slots.iter().enumerate() {
        let Some(st) = &slot.storage else { continue };
        for ((shard, idx), h) in &obs.committed {
            if let Ok(Some(bytes)) = st.get(&raft_log_key(*shard, *idx)) {
                let now: [u8; 32] = Sha256::digest(&bytes).into();
                if now != *h {
                    out.push(Violation {
                        invariant: Invariant::RaftSafety,
                        at_ms: t_ms,
                        detail: format!("shard {shard} committed index {idx} changed on n{i}"),
                    });
                    return;
                }
            }
        }
    }
}

/// Canonical bytes of a node's CRDT state (leaderboard entries sorted, the
/// LWW map), or `None` if the node is down.
fn crdt_state(slot: &NodeSlot) -> Option<Vec<u8>> {
    let lb = slot.lb.as_ref()?;
    let lww = slot.lww.as_ref()?;
    let d = lb.delta_since(0, 10_000).ok()?;
    let mut entries: Vec<Vec<u8>> = d
        .entries
        .iter()
        .map(|e| postcard::to_allocvec(e).unwrap_or_default())
        .collect();
    entries.sort();
    let mut out = postcard::to_allocvec(&entries).unwrap_or_default();
    out.extend(postcard::to_allocvec(&*lww.borrow()).unwrap_or_default());
    Some(out)
}

fn visible(slot: &NodeSlot, w: &AckedCrdt, now: DateTime<Utc>) -> bool {
    match w {
        AckedCrdt::Lww { key, stamp } => slot.lww.as_ref().is_some_and(|m| {
            m.borrow()
                .get(key)
                .and_then(|r| r.stamp())
                .is_some_and(|s| s >= *stamp)
        }),
        AckedCrdt::Score { player, score } => slot.lb.as_ref().is_some_and(|lb| {
            lb.rank(BOARD, None, player_uuid(*player), now)
                .ok()
                .flatten()
                .is_some_and(|e| e.score >= *score)
        }),
    }
}

/// Every node up and each sees every other node alive in SWIM.
fn membership_ok(slots: &[NodeSlot]) -> bool {
    let n = slots.len();
    slots.iter().enumerate().all(|(i, s)| {
        s.alive.as_ref().is_some_and(|a| {
            let a = a.borrow();
            (0..n)
                .filter(|j| *j != i)
                .all(|j| a.contains(&format!("n{j}")))
        })
    })
}

fn hash_trace(lines: &[String]) -> String {
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

/// Run one seed to completion and check every invariant.
pub fn run_seed(cfg: &SimConfig) -> SeedReport {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = cfg.nodes.max(1);
    let mut frng = SimRng::new(cfg.seed ^ 0xfa17);
    let skew: Vec<i64> = (0..n)
        .map(|_| {
            let s = cfg.faults.skew_ms;
            frng.range(0, 2 * s + 1) as i64 - s as i64
        })
        .collect();
    let shared = Rc::new(Shared {
        cfg: cfg.clone(),
        dirs: (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect(),
        phase: Cell::new(Phase::Safety),
        nodes: RefCell::new((0..n).map(|_| NodeSlot::default()).collect()),
        incarnation: RefCell::new(vec![0; n]),
        skew_ms: skew,
        trace: RefCell::new(Vec::new()),
        eco_ops: RefCell::new(Vec::new()),
        acked_crdt: RefCell::new(Vec::new()),
        ops: Cell::new(0),
        converged: Cell::new(false),
        final_wallets: RefCell::new(BTreeMap::new()),
        workers_done: Cell::new(0),
        inflight: Cell::new(0),
        raft_rx: RefCell::new(BTreeMap::new()),
        schedule: RefCell::new(Vec::new()),
    });
    let safety_end = Duration::from_secs(cfg.duration_s) + Duration::from_millis(1_500);
    let bound = Duration::from_secs(cfg.liveness_bound_s);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(safety_end + bound + Duration::from_secs(30))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1 + cfg.jitter_ms))
        .udp_capacity(4_096)
        .rng_seed(cfg.seed)
        .build();
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let s = shared.clone();
        sim.host(name.as_str(), move || node_main(s.clone(), i));
    }
    sim.client("client", client_main(shared.clone()));
    let region = |i: usize| i % cfg.regions.max(1);
    for a in 0..n {
        for b in (a + 1)..n {
            let base = cfg
                .latency_ms
                .get(region(a))
                .and_then(|r| r.get(region(b)))
                .copied()
                .unwrap_or(20)
                .max(1);
            sim.set_link_latency(
                names[a].as_str(),
                names[b].as_str(),
                Duration::from_millis(base),
            );
            sim.set_link_max_message_latency(
                names[a].as_str(),
                names[b].as_str(),
                Duration::from_millis(base + cfg.jitter_ms),
            );
        }
    }
    let debug = std::env::var_os("MERIDIAN_SIM_DEBUG").is_some();
    let mut violations: Vec<Violation> = Vec::new();
    let mut obs = RaftObs::default();
    let mut crashed = vec![false; n];
    let mut partitioned = false;
    let mut faults = 0u64;
    let mut next_fault = Duration::from_millis(1_500 + frng.range(0, cfg.faults.interval_ms));
    let mut next_check = Duration::ZERO;
    let mut live_start: Option<Duration> = None;
    let mut convergence_ms = None;
    let mut staleness = Vec::new();
    let mut seen_acked = 0usize;
    let mut detecting: Vec<(usize, Duration)> = Vec::new();
    let mut detection_ms: Vec<u64> = Vec::new();
    let mut membership_ms: Option<u64> = None;
    let mut waiting: Vec<(u64, AckedCrdt)> = Vec::new();
    let log = |sh: &Shared, t: Duration, s: String| {
        sh.trace
            .borrow_mut()
            .push(format!("{:>7}ms {s}", t.as_millis()));
    };
    let heal_all = |sim: &mut turmoil::Sim| {
        for a in &names {
            for b in &names {
                if a != b {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    };
    loop {
        let t = sim.elapsed();
        let t_ms = t.as_millis() as u64;
        if shared.phase.get() == Phase::Safety && t >= safety_end {
            shared.phase.set(Phase::Liveness);
            heal_all(&mut sim);
            for (i, c) in crashed.iter_mut().enumerate() {
                if *c {
                    sim.bounce(names[i].as_str());
                    *c = false;
                }
            }
            live_start = Some(t);
            log(&shared, t, "liveness phase: faults off, all healed".into());
        }
        if shared.phase.get() == Phase::Safety && t >= next_fault {
            next_fault = t + Duration::from_millis(
                cfg.faults.interval_ms / 2 + frng.range(0, cfg.faults.interval_ms),
            );
            let down = crashed.iter().filter(|c| **c).count();
            let choice = frng.range(0, 6);
            let line = match choice {
                0 | 1 if cfg.faults.partitions && !partitioned => {
                    // Two-way, one-way or bridge partition.
                    let mut order: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        order.swap(i, frng.range(0, i as u64 + 1) as usize);
                    }
                    let cut = frng.range(1, n.max(2) as u64) as usize;
                    let (a, b) = order.split_at(cut.min(n));
                    let kind = frng.range(0, 3);
                    partitioned = true;
                    match kind {
                        0 => {
                            for x in a {
                                for y in b {
                                    sim.partition(names[*x].as_str(), names[*y].as_str());
                                }
                            }
                            format!("partition two-way {a:?} | {b:?}")
                        }
                        1 => {
                            for x in a {
                                for y in b {
                                    sim.partition_oneway(names[*x].as_str(), names[*y].as_str());
                                }
                            }
                            format!("partition one-way {a:?} -> {b:?} dropped")
                        }
                        _ => {
                            let bridge = order[0];
                            let (a, b) = order[1..].split_at((n - 1) / 2);
                            for x in a {
                                for y in b {
                                    sim.partition(names[*x].as_str(), names[*y].as_str());
                                }
                            }
                            format!("partition bridge {a:?} | {b:?} via n{bridge}")
                        }
                    }
                }
                0..=2 if partitioned => {
                    heal_all(&mut sim);
                    partitioned = false;
                    "heal partitions".to_string()
                }
                3 if cfg.faults.crashes && down < (n - 1) / 2 => {
                    let up: Vec<usize> = (0..n).filter(|i| !crashed[*i]).collect();
                    let v = *frng.pick(&up);
                    shared.nodes.borrow_mut()[v] = NodeSlot::default();
                    sim.crash(names[v].as_str());
                    crashed[v] = true;
                    detecting.push((v, t));
                    format!("crash n{v}")
                }
                4 | 5 if down > 0 => {
                    let dn: Vec<usize> = (0..n).filter(|i| crashed[*i]).collect();
                    let v = *frng.pick(&dn);
                    sim.bounce(names[v].as_str());
                    crashed[v] = false;
                    format!("restart n{v}")
                }
                _ => String::new(),
            };
            if !line.is_empty() {
                faults += 1;
                shared.sched(format!("{:>7}ms FAULT {line}", t.as_millis()));
            }
        }
        if t >= next_check {
            next_check = t + Duration::from_millis(10);
            let before = violations.len();
            check_raft(&shared, &mut obs, &mut violations, t_ms);
            if !detecting.is_empty() {
                let slots = shared.nodes.borrow();
                detecting.retain(|&(v, at)| {
                    if !crashed[v] {
                        return false;
                    }
                    let name = format!("n{v}");
                    let seen_down = slots.iter().enumerate().all(|(i, s)| {
                        crashed[i]
                            || s.alive
                                .as_ref()
                                .is_some_and(|a| !a.borrow().contains(&name))
                    });
                    if seen_down {
                        detection_ms.push((t - at).as_millis() as u64);
                    }
                    !seen_down
                });
            }
            if debug && t_ms % 1_000 < 10 {
                let slots = shared.nodes.borrow();
                let mut line = String::from("DEBUG shards");
                for (i, s) in slots.iter().enumerate() {
                    match &s.eco {
                        Some(e) => {
                            for sh in e.shards() {
                                line.push_str(&format!(
                                    " n{i}/s{}:L{:?}t{}a{:?}",
                                    sh.shard, sh.leader, sh.term, sh.last_applied_index
                                ));
                            }
                        }
                        None => line.push_str(&format!(" n{i}:down")),
                    }
                }
                drop(slots);
                line.push_str(&format!(" rx {:?}", shared.raft_rx.borrow()));
                shared.raft_rx.borrow_mut().clear();
                log(&shared, t, line);
            }
            // Staleness: acknowledged CRDT writes become visible everywhere.
            {
                let acked = shared.acked_crdt.borrow();
                waiting.extend(acked[seen_acked..].iter().cloned());
                seen_acked = acked.len();
            }
            let now = DateTime::<Utc>::from_timestamp_millis((EPOCH_MS + t_ms) as i64)
                .unwrap_or_default();
            {
                let slots = shared.nodes.borrow();
                let live: Vec<&NodeSlot> = slots
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| !crashed[*i] && s.lb.is_some())
                    .map(|(_, s)| s)
                    .collect();
                if live.len() == n - crashed.iter().filter(|c| **c).count() {
                    waiting.retain(|(at, w)| {
                        if live.iter().all(|s| visible(s, w, now)) {
                            staleness.push((t.as_micros() as u64).saturating_sub(*at) / 1_000);
                            false
                        } else {
                            true
                        }
                    });
                }
            }
            if let Some(ls) = live_start {
                if !shared.converged.get() {
                    let slots = shared.nodes.borrow();
                    let states: Vec<Option<Vec<u8>>> = slots.iter().map(crdt_state).collect();
                    let all_up = slots.iter().all(|s| s.eco.is_some());
                    let same = states.iter().all(|s| s.is_some() && *s == states[0]);
                    let client_done = shared.workers_done.get() >= cfg.clients
                        && shared.inflight.get() == 0
                        && shared.final_wallets.borrow().len() == cfg.players;
                    let members = membership_ok(&slots);
                    if members && membership_ms.is_none() {
                        membership_ms = Some((t - ls).as_millis() as u64);
                    }
                    if all_up && same && waiting.is_empty() && client_done && members {
                        convergence_ms = Some((t - ls).as_millis() as u64);
                        shared.converged.set(true);
                        log(&shared, t, "converged".into());
                    } else if t >= ls + bound {
                        shared.converged.set(true);
                        if all_up && !members {
                            violations.push(Violation {
                                invariant: Invariant::Membership,
                                at_ms: t_ms,
                                detail: format!(
                                    "a live node does not see every other live node alive: {}",
                                    slots
                                        .iter()
                                        .enumerate()
                                        .map(|(i, s)| format!(
                                            "n{i} sees {:?}",
                                            s.alive.as_ref().map(|a| a.borrow().clone())
                                        ))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            });
                        }
                        let what = if !all_up {
                            "a node is down"
                        } else if !same {
                            violations.push(Violation {
                                invariant: Invariant::CrdtConvergence,
                                at_ms: t_ms,
                                detail: "replica digests differ after the liveness bound".into(),
                            });
                            "crdt digests differ"
                        } else if !waiting.is_empty() {
                            violations.push(Violation {
                                invariant: Invariant::LostWrite,
                                at_ms: t_ms,
                                detail: format!(
                                    "{} acknowledged writes not visible everywhere, first: {:?}",
                                    waiting.len(),
                                    waiting[0].1
                                ),
                            });
                            "acknowledged writes missing"
                        } else {
                            "client did not finish"
                        };
                        violations.push(Violation {
                            invariant: Invariant::Liveness,
                            at_ms: t_ms,
                            detail: format!(
                                "not converged within {}s: {what}",
                                cfg.liveness_bound_s
                            ),
                        });
                    }
                }
            }
            for v in &violations[before..] {
                log(
                    &shared,
                    t,
                    format!("VIOLATION {:?}: {}", v.invariant, v.detail),
                );
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(Violation {
                    invariant: Invariant::Liveness,
                    at_ms: t_ms,
                    detail: format!("simulation error: {e}"),
                });
                break;
            }
        }
    }
    let end_ms = sim.elapsed().as_millis() as u64;
    // Final digest comparison (byte-identical state on every replica).
    {
        let slots = shared.nodes.borrow();
        let digests: Vec<String> = slots
            .iter()
            .map(|s| {
                crdt_state(s)
                    .map(|b| hex::encode(&Sha256::digest(&b)[..8]))
                    .unwrap_or_default()
            })
            .collect();
        log(
            &shared,
            sim.elapsed(),
            format!("final crdt digests {digests:?}"),
        );
        if digests.iter().any(|d| d != &digests[0])
            && !violations
                .iter()
                .any(|v| v.invariant == Invariant::CrdtConvergence)
        {
            violations.push(Violation {
                invariant: Invariant::CrdtConvergence,
                at_ms: end_ms,
                detail: format!("final digests differ: {digests:?}"),
            });
        }
    }
    recheck_committed(&shared, &obs, &mut violations, end_ms);
    let (bank, lin_unknown) = check_bank(&shared);
    for v in bank {
        log(
            &shared,
            sim.elapsed(),
            format!("VIOLATION {:?}: {}", v.invariant, v.detail),
        );
        violations.push(v);
    }
    // Stop the hosts (and their stores) before the temp dir goes.
    for s in shared.nodes.borrow_mut().iter_mut() {
        *s = NodeSlot::default();
    }
    drop(sim);
    let trace = shared.trace.borrow().clone();
    let trace_hash = hash_trace(&shared.schedule.borrow());
    let acked = shared
        .eco_ops
        .borrow()
        .iter()
        .filter(|o| o.outcome == Outcome::Completed)
        .count() as u64
        + shared.acked_crdt.borrow().len() as u64;
    SeedReport {
        seed: cfg.seed,
        trace_hash,
        violations,
        staleness_ms: staleness,
        convergence_ms,
        ops: shared.ops.get(),
        acked,
        lin_unknown,
        faults,
        shared_terms: obs.shared_terms,
        detection_ms,
        membership_ms,
        sim_ms: end_ms,
        trace,
    }
}

/// Bank invariants and per-account linearizability over the history.
fn check_bank(sh: &Shared) -> (Vec<Violation>, u64) {
    let ops = sh.eco_ops.borrow();
    let wallets = sh.final_wallets.borrow();
    let mut out = Vec::new();
    let v = |inv, detail: String| Violation {
        invariant: inv,
        at_ms: 0,
        detail,
    };
    let players = sh.cfg.players;
    let mut expected = vec![0i64; players];
    let mut hist: Vec<Vec<HistOp>> = vec![Vec::new(); players];
    let mut unresolved = 0;
    let mut created = 0i64;
    for o in ops.iter() {
        let add = |h: &mut Vec<HistOp>, d| {
            h.push(HistOp {
                invoke: o.invoke_us,
                complete: o.complete_us,
                kind: HistKind::Add(d),
            })
        };
        match (&o.kind, o.outcome) {
            (_, Outcome::Unknown) => unresolved += 1,
            (EcoKind::Read { player, value }, _) => {
                if *value < 0 {
                    out.push(v(
                        Invariant::Bank,
                        format!("p{player} read negative {value}"),
                    ));
                }
                hist[*player].push(HistOp {
                    invoke: o.invoke_us,
                    complete: o.complete_us,
                    kind: HistKind::Read(*value),
                });
            }
            (_, Outcome::Failed) => {}
            (EcoKind::Grant { player, amount }, Outcome::Completed) => {
                expected[*player] += amount;
                created += amount;
                add(&mut hist[*player], *amount);
            }
            (EcoKind::Purchase { player, qty }, Outcome::Completed) => {
                expected[*player] -= qty * POTION_PRICE;
                created -= qty * POTION_PRICE;
                add(&mut hist[*player], -qty * POTION_PRICE);
            }
            (EcoKind::Transfer { from, to, amount }, Outcome::Completed) => {
                expected[*from] -= amount;
                expected[*to] += amount;
                add(&mut hist[*from], -amount);
                add(&mut hist[*to], *amount);
            }
            (EcoKind::Transfer { from, amount, .. }, Outcome::Aborted) => {
                // Debited at prepare, refunded at abort: both inside the op.
                add(&mut hist[*from], -amount);
                add(&mut hist[*from], *amount);
            }
            (_, Outcome::Aborted) => {}
        }
    }
    if unresolved > 0 {
        out.push(v(
            Invariant::Liveness,
            format!("{unresolved} economy operations still unresolved after the liveness phase"),
        ));
    }
    let mut lin_unknown = 0;
    if unresolved == 0 {
        let mut total = 0i64;
        for p in 0..players {
            let Some(&actual) = wallets.get(&p) else {
                out.push(v(
                    Invariant::Liveness,
                    format!("final wallet of p{p} unreadable"),
                ));
                continue;
            };
            total += actual;
            if actual < 0 {
                out.push(v(
                    Invariant::Bank,
                    format!("p{p} balance negative: {actual}"),
                ));
            }
            if actual != expected[p] {
                out.push(v(
                    Invariant::Bank,
                    format!(
                        "p{p}: balance {actual}, acknowledged operations give {} (not applied exactly once)",
                        expected[p]
                    ),
                ));
            }
            let mut h = hist[p].clone();
            h.push(HistOp {
                invoke: u64::MAX - 1,
                complete: u64::MAX,
                kind: HistKind::Read(actual),
            });
            match linearizable(&h, LIN_BUDGET) {
                LinResult::Ok => {}
                LinResult::Unknown => lin_unknown += 1,
                LinResult::Violation => out.push(v(
                    Invariant::Linearizable,
                    format!("p{p}: history of {} operations not linearizable", h.len()),
                )),
            }
        }
        if wallets.len() == players && total != created {
            out.push(v(
                Invariant::Bank,
                format!("total {total} != granted - spent {created} (not conserved)"),
            ));
        }
    }
    (out, lin_unknown)
}

/// Percentiles of a batch's staleness samples: (p50, p99, max).
pub fn staleness_summary(reports: &[SeedReport]) -> (u64, u64, u64) {
    let mut all: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.staleness_ms.iter().copied())
        .collect();
    let p50 = percentile(&mut all, 0.5);
    let p99 = percentile(&mut all, 0.99);
    (p50, p99, all.last().copied().unwrap_or(0))
}
