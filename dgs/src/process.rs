//! The Process backend: one configured game-server executable per match
//! (e.g. a Unity or Unreal headless build), driven through a local SDK
//! HTTP endpoint, like the Agones SDK sidecar.
//!
//! On [`Orchestrator::allocate`] the node picks a game port from its range
//! and spawns the executable with:
//!
//! | env | value |
//! |---|---|
//! | `MERIDIAN_SESSION_ID` | session id (UUID) |
//! | `MERIDIAN_GAME_PORT` | UDP port the server must bind |
//! | `MERIDIAN_SDK_URL` | e.g. `http://127.0.0.1:39000` |
//! | `MERIDIAN_SDK_TOKEN` | bearer credential of this session on the SDK |
//! | `MERIDIAN_MODE` | game mode name |
//! | `MERIDIAN_PLAYERS` | `player_id:team,player_id:team,...` |
//!
//! SDK (all `POST`, `Authorization: Bearer $MERIDIAN_SDK_TOKEN`, JSON):
//! `/sdk/ready`, `/sdk/health` (at least every `health_timeout_ms`),
//! `/sdk/player/connect {token, client_addr}` → `{player_id, team}` (the
//! node checks the player's session token, so the server never holds the
//! secret), `/sdk/player/disconnect {player_id}`,
//! `/sdk/result {winner_team, players: [{player_id, score, kills, deaths}]}`,
//! `/sdk/shutdown`.
//!
//! A process that exits without posting a result, misses its ready or
//! health deadline, or is still running at the drain deadline ends its
//! session as `Failed`; a posted result makes it `Completed`. Either way
//! exactly one [`SessionReport`] is sent.
//!
//! Not for: a warm pool (a process is started per allocation and is
//! `Allocated` while it starts), Agones/Kubernetes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::game::{MatchSpec, PlayerResult};
use crate::orchestrator::{
    AllocateError, Allocation, Capacity, FailureReason, FleetState, MatchResult, Orchestrator,
    SessionReport, SessionStatus,
};
use crate::token::{unix_ms_now, Admission, SessionToken, TokenLedger, TokenSigner};
use crate::{PlayerId, SessionId};

/// Largest SDK request body, in bytes.
pub const SDK_BODY_BYTES_MAX: usize = 64 * 1024;

/// Configuration of the Process backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The game-server executable.
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Local SDK endpoint (keep it on loopback).
    pub sdk_bind: SocketAddr,
    /// Host name or IP clients dial.
    pub public_host: String,
    /// Game ports handed to processes: `start..end` (end exclusive).
    pub port_range_start: u16,
    pub port_range_end: u16,
    pub sessions_max: usize,
    pub token_ttl_s: u64,
    /// A process that has not called `/sdk/ready` by then is killed.
    pub ready_timeout_ms: u64,
    /// A ready process silent on `/sdk/health` this long is killed.
    pub health_timeout_ms: u64,
    pub health_interval_ms: u64,
    pub sessions_history_max: usize,
}

impl ProcessConfig {
    /// Defaults for everything but the executable.
    pub fn new(command: impl Into<PathBuf>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
            sdk_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_host: "127.0.0.1".into(),
            port_range_start: 27_000,
            port_range_end: 27_256,
            sessions_max: 64,
            token_ttl_s: 120,
            ready_timeout_ms: 10_000,
            health_timeout_ms: 5_000,
            health_interval_ms: 500,
            sessions_history_max: 4_096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
}

struct Session {
    spec: MatchSpec,
    port: u16,
    /// Not a child of the node (the Agones backend): the session ends at
    /// its result or shutdown, and its port is not from the range.
    external: bool,
    credential: String,
    phase: Phase,
    ledger: TokenLedger,
    last_health: Instant,
    created: Instant,
    started_unix_ms: u64,
    result: Option<MatchResult>,
    kill: Option<oneshot::Sender<FailureReason>>,
}

impl Session {
    fn kill(&mut self, reason: FailureReason) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(reason);
        }
    }
}

struct Fleet {
    state: FleetState,
    sessions: HashMap<SessionId, Session>,
    by_credential: HashMap<String, SessionId>,
    ports_used: HashSet<u16>,
    finished: HashMap<SessionId, SessionStatus>,
    history: VecDeque<SessionId>,
}

struct Inner {
    cfg: ProcessConfig,
    signer: TokenSigner,
    sdk_addr: SocketAddr,
    fleet: Mutex<Fleet>,
    reports: mpsc::Sender<SessionReport>,
    state_tx: watch::Sender<FleetState>,
}

impl Inner {
    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Game servers as child processes of the node.
#[derive(Clone)]
pub struct ProcessOrchestrator {
    inner: Arc<Inner>,
    _tasks: Arc<crate::orchestrator::BackgroundTasks>,
}

impl ProcessOrchestrator {
    /// Binds the SDK endpoint and starts health checks. Returns the
    /// orchestrator and the channel of session reports.
    pub async fn start(
        cfg: ProcessConfig,
        signer: TokenSigner,
    ) -> io::Result<(Self, mpsc::Receiver<SessionReport>)> {
        let listener = tokio::net::TcpListener::bind(cfg.sdk_bind).await?;
        let sdk_addr = listener.local_addr()?;
        let (reports, rx) = mpsc::channel(cfg.sessions_max.max(1));
        let (state_tx, _) = watch::channel(FleetState::Ready);
        let inner = Arc::new(Inner {
            cfg,
            signer,
            sdk_addr,
            fleet: Mutex::new(Fleet {
                state: FleetState::Ready,
                sessions: HashMap::new(),
                by_credential: HashMap::new(),
                ports_used: HashSet::new(),
                finished: HashMap::new(),
                history: VecDeque::new(),
            }),
            reports,
            state_tx,
        });
        let app = Router::new()
            .route("/sdk/ready", post(sdk_ready))
            .route("/sdk/health", post(sdk_health))
            .route("/sdk/player/connect", post(sdk_connect))
            .route("/sdk/player/disconnect", post(sdk_disconnect))
            .route("/sdk/result", post(sdk_result))
            .route("/sdk/shutdown", post(sdk_shutdown))
            .layer(DefaultBodyLimit::max(SDK_BODY_BYTES_MAX))
            .with_state(inner.clone());
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let health = tokio::spawn(health_loop(inner.clone()));
        Ok((
            Self {
                inner,
                _tasks: Arc::new(crate::orchestrator::BackgroundTasks(vec![serve, health])),
            },
            rx,
        ))
    }

    /// Address of the local SDK endpoint.
    pub fn sdk_addr(&self) -> SocketAddr {
        self.inner.sdk_addr
    }
}

async fn health_loop(inner: Arc<Inner>) {
    let period = Duration::from_millis(inner.cfg.health_interval_ms.max(1));
    let ready_timeout = Duration::from_millis(inner.cfg.ready_timeout_ms);
    let health_timeout = Duration::from_millis(inner.cfg.health_timeout_ms);
    loop {
        tokio::time::sleep(period).await;
        let now = Instant::now();
        for s in inner.fleet().sessions.values_mut() {
            let late = match s.phase {
                Phase::Starting => now.duration_since(s.created) > ready_timeout,
                Phase::Ready => now.duration_since(s.last_health) > health_timeout,
            };
            if late {
                s.kill(FailureReason::Unhealthy);
            }
        }
    }
}

async fn supervise(
    inner: Arc<Inner>,
    session_id: SessionId,
    child: Option<tokio::process::Child>,
    kill_rx: oneshot::Receiver<FailureReason>,
) {
    let killed_for = match child {
        Some(mut child) => tokio::select! {
            _ = child.wait() => None,
            r = kill_rx => {
                let _ = child.kill().await;
                r.ok()
            }
        },
        None => kill_rx.await.ok(),
    };
    let report = {
        let mut fleet = inner.fleet();
        let Some(mut s) = fleet.sessions.remove(&session_id) else {
            return;
        };
        fleet.by_credential.remove(&s.credential);
        if !s.external {
            fleet.ports_used.remove(&s.port);
        }
        let report = match s.result.take() {
            Some(r) => SessionReport::Completed(r),
            None => SessionReport::Failed {
                session_id,
                mode: s.spec.mode.clone(),
                players: s.spec.teams.iter().flatten().copied().collect(),
                reason: killed_for.unwrap_or(FailureReason::Crashed),
            },
        };
        let status = match &report {
            SessionReport::Completed(_) => SessionStatus::Completed,
            SessionReport::Failed { reason, .. } => SessionStatus::Failed(*reason),
        };
        fleet.finished.insert(session_id, status);
        fleet.history.push_back(session_id);
        while fleet.history.len() > inner.cfg.sessions_history_max {
            if let Some(old) = fleet.history.pop_front() {
                fleet.finished.remove(&old);
            }
        }
        if fleet.state == FleetState::Draining && fleet.sessions.is_empty() {
            fleet.state = FleetState::Shutdown;
            inner.state_tx.send_replace(FleetState::Shutdown);
        }
        report
    };
    // The only send for this session: the entry was removed above.
    let _ = inner.reports.send(report).await;
}

pub(crate) fn random_credential() -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("system RNG failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records a started session, mints its players' tokens and supervises it
/// (`child: None` for an external game server).
fn register(
    inner: &Arc<Inner>,
    mut fleet: MutexGuard<'_, Fleet>,
    spec: MatchSpec,
    session_id: SessionId,
    credential: String,
    (host, port): (String, u16),
    child: Option<tokio::process::Child>,
) -> Allocation {
    let expires = unix_ms_now() + inner.cfg.token_ttl_s * 1000;
    let tokens = spec
        .teams
        .iter()
        .flatten()
        .map(|p| (*p, inner.signer.issue(session_id, *p, expires)))
        .collect();
    let (kill_tx, kill_rx) = oneshot::channel();
    fleet.by_credential.insert(credential.clone(), session_id);
    fleet.sessions.insert(
        session_id,
        Session {
            spec,
            port,
            external: child.is_none(),
            credential,
            phase: Phase::Starting,
            ledger: TokenLedger::default(),
            last_health: Instant::now(),
            created: Instant::now(),
            started_unix_ms: unix_ms_now(),
            result: None,
            kill: Some(kill_tx),
        },
    );
    drop(fleet);
    tokio::spawn(supervise(inner.clone(), session_id, child, kill_rx));
    Allocation {
        session_id,
        host,
        port,
        tokens,
        tokens_expire_unix_ms: expires,
    }
}

impl ProcessOrchestrator {
    /// Admission check for an external allocation (state and capacity),
    /// before the backend asks its cluster for a server.
    pub(crate) fn check_capacity(&self) -> Result<(), AllocateError> {
        let fleet = self.inner.fleet();
        match fleet.state {
            FleetState::Ready => {}
            FleetState::Draining => return Err(AllocateError::Draining),
            FleetState::Shutdown => return Err(AllocateError::Shutdown),
        }
        if fleet.sessions.len() >= self.inner.cfg.sessions_max {
            return Err(AllocateError::NoCapacity {
                sessions_max: self.inner.cfg.sessions_max,
            });
        }
        Ok(())
    }

    /// Records a session running on an external game server at
    /// `host:port` that reaches the SDK with `credential` (the Agones
    /// backend). It ends at `/sdk/result` or `/sdk/shutdown`, or fails at
    /// the ready/health/drain deadlines like a process.
    pub(crate) fn register_external(
        &self,
        spec: MatchSpec,
        session_id: SessionId,
        credential: String,
        host: String,
        port: u16,
    ) -> Allocation {
        let fleet = self.inner.fleet();
        register(
            &self.inner,
            fleet,
            spec,
            session_id,
            credential,
            (host, port),
            None,
        )
    }
}

impl Orchestrator for ProcessOrchestrator {
    fn allocate(&self, spec: MatchSpec) -> Result<Allocation, AllocateError> {
        spec.validate()?;
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let mut fleet = inner.fleet();
        match fleet.state {
            FleetState::Ready => {}
            FleetState::Draining => return Err(AllocateError::Draining),
            FleetState::Shutdown => return Err(AllocateError::Shutdown),
        }
        let no_capacity = AllocateError::NoCapacity {
            sessions_max: cfg.sessions_max,
        };
        if fleet.sessions.len() >= cfg.sessions_max {
            return Err(no_capacity);
        }
        let port = (cfg.port_range_start..cfg.port_range_end)
            .find(|p| !fleet.ports_used.contains(p))
            .ok_or(no_capacity)?;
        let session_id = uuid::Uuid::new_v4();
        let credential = random_credential();
        let players: Vec<String> = spec
            .roster()
            .iter()
            .map(|r| format!("{}:{}", r.player_id, r.team))
            .collect();
        let child = tokio::process::Command::new(&cfg.command)
            .args(&cfg.args)
            .env("MERIDIAN_SESSION_ID", session_id.to_string())
            .env("MERIDIAN_GAME_PORT", port.to_string())
            .env("MERIDIAN_SDK_URL", format!("http://{}", inner.sdk_addr))
            .env("MERIDIAN_SDK_TOKEN", &credential)
            .env("MERIDIAN_MODE", &spec.mode)
            .env("MERIDIAN_PLAYERS", players.join(","))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AllocateError::Spawn(e.to_string()))?;
        fleet.ports_used.insert(port);
        Ok(register(
            inner,
            fleet,
            spec,
            session_id,
            credential,
            (cfg.public_host.clone(), port),
            Some(child),
        ))
    }

    fn status(&self, session_id: SessionId) -> Option<SessionStatus> {
        let fleet = self.inner.fleet();
        if let Some(s) = fleet.sessions.get(&session_id) {
            return Some(match (s.phase, &s.result) {
                (_, Some(_)) => SessionStatus::Completed,
                (Phase::Starting, None) => SessionStatus::Allocated,
                (Phase::Ready, None) => SessionStatus::Running,
            });
        }
        fleet.finished.get(&session_id).copied()
    }

    fn capacity(&self) -> Capacity {
        let fleet = self.inner.fleet();
        let max = self.inner.cfg.sessions_max;
        Capacity {
            state: fleet.state,
            healthy: fleet.state != FleetState::Shutdown,
            sessions_max: max,
            sessions_running: fleet.sessions.len(),
            slots_ready: 0,
            sessions_available: if fleet.state == FleetState::Ready {
                max.saturating_sub(fleet.sessions.len())
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
        if fleet.sessions.is_empty() {
            fleet.state = FleetState::Shutdown;
            inner.state_tx.send_replace(FleetState::Shutdown);
            return;
        }
        fleet.state = FleetState::Draining;
        inner.state_tx.send_replace(FleetState::Draining);
        drop(fleet);
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            for s in inner.fleet().sessions.values_mut() {
                s.kill(FailureReason::DrainDeadline);
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

// ---- SDK endpoint ----

/// An SDK error: `{"error": {"code", "message"}}` with a 4xx status.
struct SdkError(StatusCode, &'static str, String);

impl IntoResponse for SdkError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.1, "message": self.2}});
        (self.0, Json(body)).into_response()
    }
}

fn session_of(inner: &Inner, headers: &HeaderMap) -> Result<SessionId, SdkError> {
    let unauthorized = || {
        SdkError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown session credential".into(),
        )
    };
    let cred = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    inner
        .fleet()
        .by_credential
        .get(cred)
        .copied()
        .ok_or_else(unauthorized)
}

fn with_session<T>(
    inner: &Inner,
    headers: &HeaderMap,
    f: impl FnOnce(&mut Session) -> Result<T, SdkError>,
) -> Result<T, SdkError> {
    let sid = session_of(inner, headers)?;
    let mut fleet = inner.fleet();
    let s = fleet.sessions.get_mut(&sid).ok_or(SdkError(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "session is over".into(),
    ))?;
    f(s)
}

async fn sdk_ready(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
) -> Result<StatusCode, SdkError> {
    with_session(&inner, &headers, |s| {
        s.phase = Phase::Ready;
        s.last_health = Instant::now();
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn sdk_health(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
) -> Result<StatusCode, SdkError> {
    with_session(&inner, &headers, |s| {
        s.last_health = Instant::now();
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn sdk_shutdown(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
) -> Result<StatusCode, SdkError> {
    with_session(&inner, &headers, |s| {
        s.kill(FailureReason::Crashed);
        Ok(StatusCode::NO_CONTENT)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectReq {
    /// The player's session token, base64 as handed out by the matchmaker.
    token: String,
    /// The client's address as the game server sees it.
    client_addr: String,
}

#[derive(Serialize)]
struct ConnectResp {
    player_id: PlayerId,
    team: u8,
}

async fn sdk_connect(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(req): Json<ConnectReq>,
) -> Result<Json<ConnectResp>, SdkError> {
    let forbidden = |code, msg: String| SdkError(StatusCode::FORBIDDEN, code, msg);
    let sid = session_of(&inner, &headers)?;
    let addr: SocketAddr = req.client_addr.parse().map_err(|_| {
        SdkError(
            StatusCode::BAD_REQUEST,
            "invalid_client_addr",
            "client_addr must be ip:port".into(),
        )
    })?;
    let token = SessionToken::from_base64(&req.token)
        .map_err(|e| forbidden("invalid_token", e.to_string()))?;
    let claims = inner
        .signer
        .verify_for(&token.0, sid, unix_ms_now())
        .map_err(|e| forbidden("invalid_token", e.to_string()))?;
    with_session(&inner, &headers, |s| {
        let team = s
            .spec
            .roster()
            .iter()
            .find(|r| r.player_id == claims.player_id)
            .map(|r| r.team)
            .ok_or_else(|| forbidden("not_in_match", "player is not in this match".into()))?;
        match s.ledger.admit(claims.player_id, addr) {
            Ok(Admission::New | Admission::Repeat) => Ok(Json(ConnectResp {
                player_id: claims.player_id,
                team,
            })),
            Err(e) => Err(forbidden("token_replayed", e.to_string())),
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectReq {
    player_id: PlayerId,
}

async fn sdk_disconnect(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(req): Json<DisconnectReq>,
) -> Result<StatusCode, SdkError> {
    with_session(&inner, &headers, |s| {
        s.ledger.disconnect(req.player_id);
        Ok(StatusCode::NO_CONTENT)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultLine {
    player_id: PlayerId,
    #[serde(default)]
    score: u32,
    #[serde(default)]
    kills: u16,
    #[serde(default)]
    deaths: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultReq {
    winner_team: Option<u8>,
    players: Vec<ResultLine>,
}

async fn sdk_result(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(req): Json<ResultReq>,
) -> Result<StatusCode, SdkError> {
    let sid = session_of(&inner, &headers)?;
    with_session(&inner, &headers, |s| {
        let bad = |m: String| SdkError(StatusCode::BAD_REQUEST, "invalid_result", m);
        if s.result.is_some() {
            return Err(SdkError(
                StatusCode::CONFLICT,
                "result_already_reported",
                "a session has one result".into(),
            ));
        }
        let roster = s.spec.roster();
        if req
            .winner_team
            .is_some_and(|w| w as usize >= s.spec.teams.len())
        {
            return Err(bad("winner_team is not a team of this match".into()));
        }
        let mut lines: HashMap<PlayerId, &ResultLine> = HashMap::new();
        for l in &req.players {
            if !roster.iter().any(|r| r.player_id == l.player_id) {
                return Err(bad(format!("player {} is not in this match", l.player_id)));
            }
            if lines.insert(l.player_id, l).is_some() {
                return Err(bad(format!("player {} appears twice", l.player_id)));
            }
        }
        let connected: HashSet<PlayerId> = s.ledger_players();
        let players = roster
            .iter()
            .map(|r| {
                let l = lines.get(&r.player_id);
                PlayerResult {
                    player_id: r.player_id,
                    team: r.team,
                    score: l.map_or(0, |l| l.score),
                    kills: l.map_or(0, |l| l.kills),
                    deaths: l.map_or(0, |l| l.deaths),
                    connected: connected.contains(&r.player_id),
                }
            })
            .collect();
        s.result = Some(MatchResult {
            session_id: sid,
            mode: s.spec.mode.clone(),
            players,
            winner_team: req.winner_team,
            started_unix_ms: s.started_unix_ms,
            ended_unix_ms: unix_ms_now(),
        });
        if s.external {
            // No process to exit: the result ends the session (the reason
            // is unused when a result is there).
            s.kill(FailureReason::Crashed);
        }
        Ok(StatusCode::NO_CONTENT)
    })
}

impl Session {
    fn ledger_players(&self) -> HashSet<PlayerId> {
        self.ledger.seen().collect()
    }
}
