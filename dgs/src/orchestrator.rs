//! Fleet orchestration: the [`Orchestrator`] trait the node allocates
//! matches through, and its [`EmbeddedOrchestrator`] backend (matches run
//! as tasks in the node, on its game port).
//!
//! Lifecycle, as in Agones: a match slot is `Starting` then `Ready` (the
//! warm pool), `Allocated` when the node hands it a match, and the fleet
//! moves `Ready → Draining → Shutdown` when the node stops: no new
//! allocations, running matches finish or are stopped at the deadline.
//!
//! Every allocated session ends with exactly one [`SessionReport`] on the
//! channel returned by [`EmbeddedOrchestrator::start`]: `Completed` with
//! the [`MatchResult`] (grant ratings, leaderboards and rewards from it) or
//! `Failed` (crash, stall, drain deadline, nobody came: grant nothing).
//!
//! Not for: matchmaking (the node's `matchmaking` module), rewards.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::game::{GameFactory, MatchSpec, PlayerResult, SpecError};
use crate::protocol::AbortReason;
use crate::server::{run_match, GameServer, GameServerConfig, MatchEnd, MatchEvent, MatchProbe};
use crate::token::{unix_ms_now, SessionToken, TokenSigner};
use crate::{PlayerId, SessionId};

/// Where and how the players of one allocated match connect.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub session_id: SessionId,
    /// Game host as clients should dial it (from config, not the bind address).
    pub host: String,
    pub port: u16,
    /// One token per player, in roster order.
    pub tokens: Vec<(PlayerId, SessionToken)>,
    pub tokens_expire_unix_ms: u64,
}

/// State of the fleet as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetState {
    Ready,
    Draining,
    Shutdown,
}

/// Why a session ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The match task panicked.
    Crashed,
    /// The match task stopped ticking (health check).
    Unhealthy,
    /// The node drained and the match was still running at the deadline.
    DrainDeadline,
    /// No player connected within the join timeout.
    NoPlayersConnected,
}

/// Status of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum SessionStatus {
    /// Allocated, waiting for its players.
    Allocated,
    Running,
    Completed,
    Failed(FailureReason),
}

/// Capacity, for the mesh metadata and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub state: FleetState,
    pub healthy: bool,
    pub sessions_max: usize,
    pub sessions_running: usize,
    /// Warm slots ready to allocate right now.
    pub slots_ready: usize,
    /// `sessions_max - sessions_running` while `Ready`, else 0.
    pub sessions_available: usize,
}

/// The authoritative outcome of a completed match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchResult {
    pub session_id: SessionId,
    pub mode: String,
    pub players: Vec<PlayerResult>,
    /// `None` on a draw.
    pub winner_team: Option<u8>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
}

/// Exactly one per allocated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum SessionReport {
    Completed(MatchResult),
    Failed {
        session_id: SessionId,
        mode: String,
        players: Vec<PlayerId>,
        reason: FailureReason,
    },
}

impl MatchResult {
    /// Player ids per team (team index = position), e.g. for rating updates.
    pub fn teams(&self) -> Vec<Vec<PlayerId>> {
        let n = self
            .players
            .iter()
            .map(|p| p.team as usize + 1)
            .max()
            .unwrap_or(0);
        let mut teams = vec![Vec::new(); n];
        for p in &self.players {
            teams[p.team as usize].push(p.player_id);
        }
        teams
    }
}

impl SessionReport {
    pub fn session_id(&self) -> SessionId {
        match self {
            SessionReport::Completed(r) => r.session_id,
            SessionReport::Failed { session_id, .. } => *session_id,
        }
    }
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("the fleet is draining")]
    Draining,
    #[error("the fleet is shut down")]
    Shutdown,
    #[error("no capacity: {sessions_max} sessions running")]
    NoCapacity { sessions_max: usize },
    #[error("invalid match: {0}")]
    InvalidSpec(#[from] SpecError),
    /// Process backend: the game-server executable could not be started.
    #[error("could not start the game server: {0}")]
    Spawn(String),
    /// Agones backend: the cluster refused or failed the allocation
    /// (contention after retries, API errors, timeouts).
    #[error("game-server cluster unavailable: {0}")]
    Unavailable(String),
}

/// A fleet of game servers the node allocates matches on.
pub trait Orchestrator: Send + Sync {
    /// Takes a ready slot for `spec` and mints one token per player.
    fn allocate(&self, spec: MatchSpec) -> Result<Allocation, AllocateError>;
    /// `None` for unknown sessions and ones older than the history limit.
    fn status(&self, session_id: SessionId) -> Option<SessionStatus>;
    fn capacity(&self) -> Capacity;
    /// Stops allocating; running matches get until `deadline` to finish.
    fn drain(&self, deadline: Duration);
    /// Resolves once the fleet is `Shutdown`.
    fn drained(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Configuration of the embedded backend.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// The game port.
    pub bind: SocketAddr,
    /// Host name or IP that clients dial (put in allocations).
    pub public_host: String,
    /// Matches running at once.
    pub sessions_max: usize,
    /// Ready slots kept pre-built.
    pub warm_pool_slots: usize,
    /// Lifetime of player session tokens.
    pub token_ttl_s: u64,
    /// How often match liveness is checked.
    pub health_interval_ms: u64,
    /// A match that has not ticked for this long is stopped and failed.
    pub match_stall_timeout_ms: u64,
    /// Finished sessions remembered for `status`.
    pub sessions_history_max: usize,
    pub server: GameServerConfig,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 7777)),
            public_host: "127.0.0.1".into(),
            sessions_max: 256,
            warm_pool_slots: 32,
            token_ttl_s: 120,
            health_interval_ms: 1_000,
            match_stall_timeout_ms: 5_000,
            sessions_history_max: 4_096,
            server: GameServerConfig::default(),
        }
    }
}

/// A pre-built match slot: its id and event queue exist before allocation.
struct Slot {
    session_id: SessionId,
    tx: mpsc::Sender<MatchEvent>,
    rx: mpsc::Receiver<MatchEvent>,
}

struct Running {
    probe: Arc<MatchProbe>,
    abort: Option<tokio::task::AbortHandle>,
    abort_reason: Option<FailureReason>,
    /// Set just before the report is sent; the slot is freed after.
    final_status: Option<SessionStatus>,
}

struct Fleet {
    state: FleetState,
    pool: VecDeque<Slot>,
    running: HashMap<SessionId, Running>,
    history: VecDeque<SessionId>,
    finished: HashMap<SessionId, SessionStatus>,
}

struct Inner {
    cfg: EmbeddedConfig,
    server: GameServer,
    signer: TokenSigner,
    factory: GameFactory,
    fleet: Mutex<Fleet>,
    reports: mpsc::Sender<SessionReport>,
    state_tx: watch::Sender<FleetState>,
    refill: tokio::sync::Notify,
}

impl Inner {
    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_slot(&self) -> Slot {
        let (tx, rx) = mpsc::channel(self.cfg.server.match_queue_events_max.max(1));
        Slot {
            session_id: uuid::Uuid::new_v4(),
            tx,
            rx,
        }
    }
}

/// Matches as tasks inside the node, on one UDP game port.
#[derive(Clone)]
pub struct EmbeddedOrchestrator {
    inner: Arc<Inner>,
    _tasks: Arc<BackgroundTasks>,
}

/// Background tasks aborted when the last handle of an orchestrator drops.
pub(crate) struct BackgroundTasks(pub(crate) Vec<tokio::task::JoinHandle<()>>);
impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl EmbeddedOrchestrator {
    /// Binds the game port, fills the warm pool and starts health checks.
    /// Returns the orchestrator and the channel of session reports (bounded
    /// by `sessions_max`: a slot is freed only after its report is taken).
    pub async fn start(
        cfg: EmbeddedConfig,
        signer: TokenSigner,
        factory: GameFactory,
    ) -> io::Result<(Self, mpsc::Receiver<SessionReport>)> {
        let server = GameServer::bind(cfg.bind, signer.clone(), cfg.server.clone()).await?;
        let (reports, reports_rx) = mpsc::channel(cfg.sessions_max.max(1));
        let (state_tx, _) = watch::channel(FleetState::Ready);
        let inner = Arc::new(Inner {
            cfg,
            server,
            signer,
            factory,
            fleet: Mutex::new(Fleet {
                state: FleetState::Ready,
                pool: VecDeque::new(),
                running: HashMap::new(),
                history: VecDeque::new(),
                finished: HashMap::new(),
            }),
            reports,
            state_tx,
            refill: tokio::sync::Notify::new(),
        });
        refill_pool(&inner);
        let tasks = vec![
            tokio::spawn(refill_loop(inner.clone())),
            tokio::spawn(health_loop(inner.clone())),
        ];
        Ok((
            Self {
                inner,
                _tasks: Arc::new(BackgroundTasks(tasks)),
            },
            reports_rx,
        ))
    }

    /// The game server (local address, counters).
    pub fn server(&self) -> &GameServer {
        &self.inner.server
    }
}

fn refill_pool(inner: &Inner) {
    let mut fleet = inner.fleet();
    if fleet.state != FleetState::Ready {
        return;
    }
    let room = inner.cfg.sessions_max.saturating_sub(fleet.running.len());
    let want = inner.cfg.warm_pool_slots.min(room);
    while fleet.pool.len() < want {
        let slot = inner.new_slot();
        fleet.pool.push_back(slot);
    }
}

async fn refill_loop(inner: Arc<Inner>) {
    loop {
        inner.refill.notified().await;
        refill_pool(&inner);
    }
}

async fn health_loop(inner: Arc<Inner>) {
    let period = Duration::from_millis(inner.cfg.health_interval_ms.max(1));
    let stall_ms = inner.cfg.match_stall_timeout_ms;
    loop {
        tokio::time::sleep(period).await;
        let now = unix_ms_now();
        let mut fleet = inner.fleet();
        for r in fleet.running.values_mut() {
            let beat = r.probe.heartbeat_unix_ms.load(Relaxed);
            if beat != 0 && now.saturating_sub(beat) > stall_ms && r.abort_reason.is_none() {
                r.abort_reason = Some(FailureReason::Unhealthy);
                if let Some(a) = &r.abort {
                    a.abort();
                }
            }
        }
    }
}

async fn supervise(
    inner: Arc<Inner>,
    session_id: SessionId,
    spec: MatchSpec,
    runner: tokio::task::JoinHandle<MatchEnd>,
) {
    let started_unix_ms = unix_ms_now();
    let outcome = runner.await;
    let aborted_for = inner
        .fleet()
        .running
        .get(&session_id)
        .and_then(|r| r.abort_reason);
    let players: Vec<PlayerId> = spec.teams.iter().flatten().copied().collect();
    let failed = |reason| SessionReport::Failed {
        session_id,
        mode: spec.mode.clone(),
        players: players.clone(),
        reason,
    };
    let report = match outcome {
        Ok(MatchEnd::Completed(result)) => SessionReport::Completed(MatchResult {
            session_id,
            mode: spec.mode.clone(),
            players: result.players,
            winner_team: result.winner_team,
            started_unix_ms,
            ended_unix_ms: unix_ms_now(),
        }),
        Ok(MatchEnd::NoPlayers) => failed(FailureReason::NoPlayersConnected),
        Err(e) if e.is_panic() => failed(FailureReason::Crashed),
        Err(_) => failed(aborted_for.unwrap_or(FailureReason::Crashed)),
    };
    let addrs = inner.server.unregister(session_id);
    let status = match &report {
        SessionReport::Completed(_) => SessionStatus::Completed,
        SessionReport::Failed { reason, .. } => {
            let wire = match reason {
                FailureReason::DrainDeadline => AbortReason::DrainDeadline,
                _ => AbortReason::Crashed,
            };
            inner.server.send_aborted(&addrs, wire).await;
            SessionStatus::Failed(*reason)
        }
    };
    if let SessionReport::Failed { reason, .. } = &report {
        tracing::warn!(%session_id, ?reason, "game session failed");
    }
    if let Some(r) = inner.fleet().running.get_mut(&session_id) {
        r.final_status = Some(status);
    }
    // The only send for this session: exactly once. A closed receiver means
    // the node is shutting down; nothing left to deliver to.
    let _ = inner.reports.send(report).await;
    let mut fleet = inner.fleet();
    let removed = fleet.running.remove(&session_id);
    assert!(removed.is_some(), "session {session_id} finished twice");
    fleet.finished.insert(session_id, status);
    fleet.history.push_back(session_id);
    while fleet.history.len() > inner.cfg.sessions_history_max {
        if let Some(old) = fleet.history.pop_front() {
            fleet.finished.remove(&old);
        }
    }
    if fleet.state == FleetState::Draining && fleet.running.is_empty() {
        fleet.state = FleetState::Shutdown;
        inner.state_tx.send_replace(FleetState::Shutdown);
    }
    drop(fleet);
    inner.refill.notify_one();
}

impl Orchestrator for EmbeddedOrchestrator {
    fn allocate(&self, spec: MatchSpec) -> Result<Allocation, AllocateError> {
        spec.validate()?;
        let inner = &self.inner;
        let mut fleet = inner.fleet();
        match fleet.state {
            FleetState::Ready => {}
            FleetState::Draining => return Err(AllocateError::Draining),
            FleetState::Shutdown => return Err(AllocateError::Shutdown),
        }
        if fleet.running.len() >= inner.cfg.sessions_max {
            return Err(AllocateError::NoCapacity {
                sessions_max: inner.cfg.sessions_max,
            });
        }
        // Warm path: take a slot. Cold path (pool empty): build one inline.
        let slot = match fleet.pool.pop_front() {
            Some(s) => s,
            None => inner.new_slot(),
        };
        let session_id = slot.session_id;
        let expires = unix_ms_now() + inner.cfg.token_ttl_s * 1000;
        let tokens = spec
            .teams
            .iter()
            .flatten()
            .map(|p| (*p, inner.signer.issue(session_id, *p, expires)))
            .collect();
        inner.server.register(session_id, &spec, slot.tx);
        let probe = Arc::new(MatchProbe::default());
        let game = (inner.factory)(&spec);
        let runner = tokio::spawn(run_match(
            inner.server.clone(),
            session_id,
            spec.clone(),
            game,
            slot.rx,
            probe.clone(),
        ));
        fleet.running.insert(
            session_id,
            Running {
                probe,
                abort: Some(runner.abort_handle()),
                abort_reason: None,
                final_status: None,
            },
        );
        drop(fleet);
        tokio::spawn(supervise(inner.clone(), session_id, spec, runner));
        inner.refill.notify_one();
        Ok(Allocation {
            session_id,
            host: inner.cfg.public_host.clone(),
            port: inner.server.local_addr().map(|a| a.port()).unwrap_or(0),
            tokens,
            tokens_expire_unix_ms: expires,
        })
    }

    fn status(&self, session_id: SessionId) -> Option<SessionStatus> {
        let fleet = self.inner.fleet();
        if let Some(r) = fleet.running.get(&session_id) {
            if let Some(s) = r.final_status {
                return Some(s);
            }
            return Some(if r.probe.started.load(Relaxed) {
                SessionStatus::Running
            } else {
                SessionStatus::Allocated
            });
        }
        fleet.finished.get(&session_id).copied()
    }

    fn capacity(&self) -> Capacity {
        let fleet = self.inner.fleet();
        let max = self.inner.cfg.sessions_max;
        Capacity {
            state: fleet.state,
            healthy: self.inner.server.is_healthy() && fleet.state != FleetState::Shutdown,
            sessions_max: max,
            sessions_running: fleet.running.len(),
            slots_ready: fleet.pool.len(),
            sessions_available: if fleet.state == FleetState::Ready {
                max.saturating_sub(fleet.running.len())
            } else {
                0
            },
        }
    }

    fn drain(&self, deadline: Duration) {
        let inner = self.inner.clone();
        let mut fleet = inner.fleet();
        if fleet.state != FleetState::Ready {
            return;
        }
        fleet.pool.clear();
        if fleet.running.is_empty() {
            fleet.state = FleetState::Shutdown;
            inner.state_tx.send_replace(FleetState::Shutdown);
            return;
        }
        fleet.state = FleetState::Draining;
        inner.state_tx.send_replace(FleetState::Draining);
        drop(fleet);
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep_until((started + deadline).into()).await;
            let mut fleet = inner.fleet();
            for r in fleet.running.values_mut() {
                if r.abort_reason.is_none() {
                    r.abort_reason = Some(FailureReason::DrainDeadline);
                }
                if let Some(a) = &r.abort {
                    a.abort();
                }
            }
        });
    }

    fn drained(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.inner.state_tx.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s == FleetState::Shutdown).await;
        })
    }
}
