//! Matches on this node: the matchmaker ([`crate::matchmaking`]) ticks every
//! `matchmaking.tick_interval_ms`, formed matches are allocated on the
//! game-server fleet `dgs.backend` selects ([`Fleet`]: embedded tasks or one
//! external process per match, `meridian_dgs`), players are told over `/ws`
//! and `/matchmaking/status`, and each session's report is applied once:
//! ratings, the results leaderboard, XP/stats and coin rewards.
//!
//! Placement: a ticket is queued in the region the client joined (its
//! nearest); one whose players have no acceptable latency to it is refused
//! (422). A ticket still waiting after its mode's `offer_after_s` is offered
//! to the neighbour regions within the mode's latency limit
//! ([`crate::offers`]): the home region owns it, a neighbour that forms a
//! match with it must first claim it at home (which takes it out of the home
//! queue atomically), so it is never in two matches.

use crate::api::Shared;
use crate::matchmaking::{
    CancelError, JoinError, Matchmaker, MatchmakingConfig, ProposedMatch, TicketRequest,
    TicketStatus,
};
use meridian_dgs::game::MatchSpec;
use meridian_dgs::orchestrator::{
    EmbeddedConfig, EmbeddedOrchestrator, Orchestrator, SessionReport,
};
use meridian_replication::Batch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;
use uuid::Uuid;

/// Pushes buffered for `/ws` subscribers; a slow subscriber skips ahead.
pub const PUSH_QUEUE_MAX: usize = 4096;
/// Sessions kept for `/admin/sessions` (oldest finished dropped first).
pub const SESSIONS_KEPT_MAX: usize = 10_000;
/// A home region gives up on a claimed ticket whose assignment did not come
/// within this (the player is told the ticket expired).
pub const CLAIM_ASSIGNMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Offered tickets from other regions queued here at once; more are refused.
pub const OFFERS_ADOPTED_MAX: usize = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GamesConfig {
    /// How often the matcher runs (100..=250 ms).
    pub tick_interval_ms: u64,
    /// Game modes (`[[matchmaking.modes]]`); demo modes when empty.
    pub modes: Vec<crate::matchmaking::GameModeConfig>,
    /// Board that receives each player's match score.
    pub results_board: String,
    pub xp_per_match: u64,
    pub xp_per_win: u64,
    pub coins_per_match: i64,
    pub coins_per_win: i64,
}

impl Default for GamesConfig {
    fn default() -> Self {
        Self {
            tick_interval_ms: 200,
            modes: Vec::new(),
            results_board: "arena".into(),
            xp_per_match: 50,
            xp_per_win: 100,
            coins_per_match: 10,
            coins_per_win: 25,
        }
    }
}

/// The game-server fleet (`[dgs]`): which backend runs matches, its size,
/// and the reference arena game's tunables (embedded backend).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DgsConfig {
    /// `embedded` (matches as tasks in the node), `process` (one executable
    /// per match, `[dgs.process]`), `agones` (a Kubernetes fleet, `[dgs.agones]`).
    pub backend: String,
    pub sessions_max: usize,
    pub warm_pool_slots: usize,
    pub token_ttl_s: u64,
    pub match_duration_s: f32,
    pub tick_rate_hz: u32,
    /// On SIGTERM, running matches get this long to finish.
    pub drain_deadline_s: u64,
    /// The Process backend (`backend = "process"`).
    pub process: ProcessSection,
    /// The Agones backend (`backend = "agones"`).
    pub agones: meridian_dgs::agones::AgonesConfig,
}

impl Default for DgsConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            sessions_max: 256,
            warm_pool_slots: 32,
            token_ttl_s: 120,
            match_duration_s: 60.0,
            tick_rate_hz: 30,
            drain_deadline_s: 30,
            process: ProcessSection::default(),
            agones: Default::default(),
        }
    }
}

/// Backends `dgs.backend` accepts.
pub const DGS_BACKENDS: &[&str] = &["embedded", "process", "agones"];

/// `[dgs.process]`: the game-server executable the node spawns per match
/// (see `meridian_dgs::process` for its environment and SDK).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSection {
    /// The executable; required with `backend = "process"`.
    pub command: Option<std::path::PathBuf>,
    pub args: Vec<String>,
    /// The local SDK endpoint (loopback; port 0 = any free port).
    pub sdk_bind: std::net::SocketAddr,
    /// UDP game ports handed to processes: `start..end`, end exclusive.
    pub port_range_start: u16,
    pub port_range_end: u16,
    /// A process that has not called `/sdk/ready` by then is killed.
    pub ready_timeout_ms: u64,
    /// A ready process silent on `/sdk/health` this long is killed.
    pub health_timeout_ms: u64,
}

impl Default for ProcessSection {
    fn default() -> Self {
        let d = meridian_dgs::process::ProcessConfig::new("");
        Self {
            command: None,
            args: Vec::new(),
            sdk_bind: d.sdk_bind,
            port_range_start: d.port_range_start,
            port_range_end: d.port_range_end,
            ready_timeout_ms: d.ready_timeout_ms,
            health_timeout_ms: d.health_timeout_ms,
        }
    }
}

impl DgsConfig {
    /// Errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !DGS_BACKENDS.contains(&self.backend.as_str()) {
            anyhow::bail!(
                "config: dgs.backend must be one of {} (got {:?})",
                DGS_BACKENDS.join(", "),
                self.backend
            );
        }
        if self.sessions_max == 0 {
            anyhow::bail!("config: dgs.sessions_max must be at least 1");
        }
        if self.backend == "agones" {
            let mut a = self.agones.clone();
            a.sessions_max = self.sessions_max;
            a.validate()
                .map_err(|e| anyhow::anyhow!("config: dgs.agones.{e}"))?;
        }
        if self.backend == "process" {
            let p = &self.process;
            if p.command.as_ref().is_none_or(|c| c.as_os_str().is_empty()) {
                anyhow::bail!(
                    "config: dgs.process.command is required with dgs.backend = \"process\""
                );
            }
            if p.port_range_start == 0 || p.port_range_end <= p.port_range_start {
                anyhow::bail!(
                    "config: dgs.process.port_range_start..port_range_end must be a non-empty range of ports"
                );
            }
            if p.ready_timeout_ms == 0 || p.health_timeout_ms == 0 {
                anyhow::bail!(
                    "config: dgs.process.ready_timeout_ms and health_timeout_ms must be at least 1"
                );
            }
        }
        Ok(())
    }
}

/// The node's game-server fleet, whichever backend `dgs.backend` selects.
#[derive(Clone)]
pub struct Fleet {
    backend: &'static str,
    inner: std::sync::Arc<dyn Orchestrator>,
    embedded: Option<EmbeddedOrchestrator>,
}

impl Fleet {
    /// `embedded`, `process` or `agones`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The node's own UDP game port (embedded backend only).
    pub fn game_server(&self) -> Option<&meridian_dgs::server::GameServer> {
        self.embedded.as_ref().map(EmbeddedOrchestrator::server)
    }
}

impl Orchestrator for Fleet {
    fn allocate(
        &self,
        spec: MatchSpec,
    ) -> Result<meridian_dgs::orchestrator::Allocation, meridian_dgs::orchestrator::AllocateError>
    {
        self.inner.allocate(spec)
    }
    fn status(&self, id: Uuid) -> Option<meridian_dgs::orchestrator::SessionStatus> {
        self.inner.status(id)
    }
    fn capacity(&self) -> meridian_dgs::orchestrator::Capacity {
        self.inner.capacity()
    }
    fn drain(&self, deadline: std::time::Duration) {
        self.inner.drain(deadline)
    }
    fn drained(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.inner.drained()
    }
}

pub fn default_modes() -> Vec<crate::matchmaking::GameModeConfig> {
    let toml = r#"
[[modes]]
name = "duel"
teams = 2
team_size = 1
max_latency_ms = 150
skill_window_start = 100.0
skill_window_widen_per_s = 25.0
max_wait_s = 120
allow_remote_region = true

[[modes]]
name = "squad"
teams = 2
team_size = 2
max_latency_ms = 150
skill_window_start = 150.0
skill_window_widen_per_s = 25.0
max_wait_s = 120
allow_remote_region = true

[[modes]]
name = "ffa8"
teams = 8
team_size = 1
max_latency_ms = 200
skill_window_start = 300.0
skill_window_widen_per_s = 50.0
max_wait_s = 120
allow_remote_region = false
"#;
    toml::from_str::<MatchmakingConfig>(toml)
        .expect("built-in modes parse")
        .modes
}

/// Where a matched ticket's players go.
#[derive(Debug, Clone)]
struct Assignment {
    /// Region hosting the match (another one for an offered ticket).
    region: String,
    session_id: Uuid,
    host: String,
    port: u16,
    players: Vec<Uuid>,
    tokens: HashMap<Uuid, String>,
}

/// The seed's GameSession entity, for `/admin/sessions`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GameSession {
    pub id: String,
    pub game_mode: String,
    pub region: String,
    /// allocated, completed, failed
    pub status: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub dedicated_server_ip: String,
    pub port: u16,
    pub players: Vec<String>,
    pub players_connected: usize,
    pub winner_team: Option<u8>,
    pub failure: Option<String>,
}

/// The seed's MatchmakingQueueEntry, for `/admin/matchmaking`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueEntry {
    pub ticket_id: String,
    pub player_id: String,
    pub game_mode: String,
    pub region: String,
    pub elo_rating: f64,
    pub queue_time: String,
}

/// A push to one player over `/ws`.
#[derive(Debug, Clone)]
pub struct Push {
    pub player_id: Uuid,
    pub event: serde_json::Value,
}

/// (requester, game mode, when queued).
type Queued = (Uuid, String, chrono::DateTime<chrono::Utc>);

pub struct Games {
    region: String,
    cfg: GamesConfig,
    mm: Mutex<Matchmaker>,
    orchestrator: Fleet,
    assignments: Mutex<HashMap<Uuid, Assignment>>,
    /// ticket → (requester, mode, queued at), for the admin queue view.
    queued: Mutex<BTreeMap<Uuid, Queued>>,
    sessions: Mutex<BTreeMap<Uuid, GameSession>>,
    pub push: tokio::sync::broadcast::Sender<Push>,
    /// Home side: every region's latency of a queued ticket (for offers).
    latencies: Mutex<HashMap<Uuid, BTreeMap<String, f64>>>,
    /// Home side: tickets a neighbour claimed, until its assignment arrives.
    claimed: Mutex<HashMap<Uuid, (String, Instant)>>,
    /// Neighbour side: local ticket of an offered one → (home node, home ticket).
    remote: Mutex<HashMap<Uuid, (String, Uuid)>>,
}

/// What one tick leaves for the async side ([`crate::offers`]).
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Home tickets to offer.
    pub offers: Vec<TicketOffer>,
    /// Matches with offered tickets: their homes must agree before allocation.
    pub remote_matches: Vec<ProposedMatch>,
}

/// A home ticket to offer to neighbour regions.
#[derive(Debug, Clone)]
pub struct TicketOffer {
    pub ticket: Uuid,
    pub mode: String,
    pub players: Vec<Uuid>,
    /// The client's measured latency to every region.
    pub latencies: BTreeMap<String, f64>,
}

/// An assignment sent to the home region of an offered ticket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteAssignment {
    pub home_ticket: Uuid,
    pub region: String,
    pub session_id: Uuid,
    pub host: String,
    pub port: u16,
    pub players: Vec<Uuid>,
    /// Session tokens of the ticket's players only.
    pub tokens: HashMap<Uuid, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GamesError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Cancel(#[from] CancelError),
    #[error("no such ticket")]
    UnknownTicket,
}

/// A ticket's status as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TicketView {
    pub ticket_id: String,
    /// searching, matched, cancelled, expired
    pub status: String,
    pub game_mode: String,
    pub waited_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub r#match: Option<serde_json::Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Games {
    /// Build the matchmaker and start the embedded fleet on the game port.
    pub async fn start(
        region: &str,
        public_host: &str,
        game_addr: std::net::SocketAddr,
        mut cfg: GamesConfig,
        dgs: &DgsConfig,
    ) -> anyhow::Result<(Games, tokio::sync::mpsc::Receiver<SessionReport>)> {
        if cfg.modes.is_empty() {
            cfg.modes = default_modes();
        }
        if !(100..=250).contains(&cfg.tick_interval_ms) {
            anyhow::bail!("matchmaking.tick_interval_ms must be 100..=250");
        }
        let mm = Matchmaker::new(
            &MatchmakingConfig {
                modes: cfg.modes.clone(),
            },
            &[region.to_string()],
            region,
        )
        .map_err(|e| anyhow::anyhow!("matchmaking.modes: {e}"))?;
        dgs.validate()?;
        let signer = meridian_dgs::token::TokenSigner::random();
        let (orchestrator, reports) = match dgs.backend.as_str() {
            "process" => {
                let p = &dgs.process;
                let mut pcfg = meridian_dgs::process::ProcessConfig::new(
                    p.command.clone().unwrap_or_default(),
                );
                pcfg.args = p.args.clone();
                pcfg.sdk_bind = p.sdk_bind;
                pcfg.public_host = public_host.to_string();
                pcfg.port_range_start = p.port_range_start;
                pcfg.port_range_end = p.port_range_end;
                pcfg.sessions_max = dgs.sessions_max;
                pcfg.token_ttl_s = dgs.token_ttl_s;
                pcfg.ready_timeout_ms = p.ready_timeout_ms;
                pcfg.health_timeout_ms = p.health_timeout_ms;
                let (o, reports) = meridian_dgs::process::ProcessOrchestrator::start(pcfg, signer)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "starting the dgs.process SDK endpoint on {}: {e}",
                            p.sdk_bind
                        )
                    })?;
                tracing::info!(sdk = %o.sdk_addr(), command = ?p.command, "game servers: process backend");
                let fleet = Fleet {
                    backend: "process",
                    inner: std::sync::Arc::new(o),
                    embedded: None,
                };
                (fleet, reports)
            }
            "agones" => {
                let mut acfg = dgs.agones.clone();
                acfg.sessions_max = dgs.sessions_max;
                acfg.token_ttl_s = dgs.token_ttl_s;
                let (o, reports) = meridian_dgs::agones::AgonesOrchestrator::start(acfg, signer)
                    .await
                    .map_err(|e| anyhow::anyhow!("starting the dgs.agones backend: {e}"))?;
                tracing::info!(sdk = %o.sdk_addr(), fleet = %dgs.agones.fleet, "game servers: agones backend");
                let fleet = Fleet {
                    backend: "agones",
                    inner: std::sync::Arc::new(o),
                    embedded: None,
                };
                (fleet, reports)
            }
            _ => {
                let arena = meridian_dgs::arena::ArenaConfig {
                    duration_s: dgs.match_duration_s,
                    tick_rate_hz: dgs.tick_rate_hz,
                    ..Default::default()
                };
                let ecfg = EmbeddedConfig {
                    bind: game_addr,
                    public_host: public_host.to_string(),
                    sessions_max: dgs.sessions_max,
                    warm_pool_slots: dgs.warm_pool_slots,
                    token_ttl_s: dgs.token_ttl_s,
                    ..Default::default()
                };
                let (o, reports) = EmbeddedOrchestrator::start(
                    ecfg,
                    signer,
                    meridian_dgs::arena::ArenaGame::factory(arena),
                )
                .await
                .map_err(|e| anyhow::anyhow!("starting game servers on UDP {game_addr}: {e}"))?;
                let fleet = Fleet {
                    backend: "embedded",
                    inner: std::sync::Arc::new(o.clone()),
                    embedded: Some(o),
                };
                (fleet, reports)
            }
        };
        let (push, _) = tokio::sync::broadcast::channel(PUSH_QUEUE_MAX);
        Ok((
            Games {
                region: region.to_string(),
                cfg,
                mm: Mutex::new(mm),
                orchestrator,
                assignments: Mutex::new(HashMap::new()),
                queued: Mutex::new(BTreeMap::new()),
                sessions: Mutex::new(BTreeMap::new()),
                push,
                latencies: Mutex::new(HashMap::new()),
                claimed: Mutex::new(HashMap::new()),
                remote: Mutex::new(HashMap::new()),
            },
            reports,
        ))
    }

    pub fn modes(&self) -> &[crate::matchmaking::GameModeConfig] {
        &self.cfg.modes
    }

    pub fn config(&self) -> &GamesConfig {
        &self.cfg
    }

    pub fn orchestrator(&self) -> &Fleet {
        &self.orchestrator
    }

    /// Queue a ticket. Only this region's latency is used for placement.
    pub fn join(
        &self,
        players: Vec<Uuid>,
        mode: &str,
        latencies: &BTreeMap<String, f64>,
    ) -> Result<Uuid, GamesError> {
        for (region, ms) in latencies {
            if !ms.is_finite() || *ms < 0.0 || *ms > crate::matchmaking::LATENCY_MS_MAX as f64 {
                return Err(JoinError::InvalidLatency {
                    region: region.clone(),
                }
                .into());
            }
        }
        let local: BTreeMap<String, f64> = latencies
            .iter()
            .filter(|(r, _)| **r == self.region)
            .map(|(r, ms)| (r.clone(), *ms))
            .collect();
        if local.is_empty() {
            return Err(JoinError::UnknownRegion {
                region: self.region.clone(),
            }
            .into());
        }
        let requester = players[0];
        let ticket = lock(&self.mm).submit(
            TicketRequest {
                players,
                mode: mode.to_string(),
                latencies_ms: local,
            },
            Instant::now(),
        )?;
        lock(&self.queued).insert(ticket, (requester, mode.to_string(), chrono::Utc::now()));
        lock(&self.latencies).insert(ticket, latencies.clone());
        Ok(ticket)
    }

    /// Neighbour side: queue a ticket offered by its home region, with this
    /// region's latency. Returns the local ticket id.
    pub fn adopt(
        &self,
        home: &str,
        home_ticket: Uuid,
        players: Vec<Uuid>,
        mode: &str,
        latency_ms: f64,
    ) -> Result<Uuid, GamesError> {
        if lock(&self.remote).len() >= OFFERS_ADOPTED_MAX {
            return Err(JoinError::QueueFull {
                mode: mode.to_string(),
                max: OFFERS_ADOPTED_MAX,
            }
            .into());
        }
        let local = lock(&self.mm).submit(
            TicketRequest {
                players,
                mode: mode.to_string(),
                latencies_ms: BTreeMap::from([(self.region.clone(), latency_ms)]),
            },
            Instant::now(),
        )?;
        lock(&self.remote).insert(local, (home.to_string(), home_ticket));
        Ok(local)
    }

    /// Home side: a neighbour wants `ticket` for a match. Granted only while
    /// it is still searching here, and then it leaves this queue at once (so
    /// it can never be in two matches).
    pub fn claim(&self, ticket: Uuid, claimer: &str) -> bool {
        let Some((requester, _, _)) = lock(&self.queued).get(&ticket).cloned() else {
            return false;
        };
        let mut mm = lock(&self.mm);
        if mm.cancel(ticket, requester, Instant::now()).is_err() {
            return false;
        }
        lock(&self.claimed).insert(ticket, (claimer.to_string(), Instant::now()));
        true
    }

    /// Home side: the neighbour allocated the match of a claimed ticket.
    pub fn remote_assigned(&self, r: RemoteAssignment) {
        if lock(&self.claimed).remove(&r.home_ticket).is_none() {
            return;
        }
        lock(&self.queued).remove(&r.home_ticket);
        lock(&self.latencies).remove(&r.home_ticket);
        let a = Assignment {
            region: r.region,
            session_id: r.session_id,
            host: r.host,
            port: r.port,
            players: r.players,
            tokens: r.tokens,
        };
        lock(&self.assignments).insert(r.home_ticket, a.clone());
        for p in a.tokens.keys() {
            let _ = self.push.send(Push {
                player_id: *p,
                event: serde_json::json!({"type": "match_found", "match": self.match_json(&a, *p)}),
            });
        }
    }

    /// Neighbour side: the homes of a match's offered tickets, `(local
    /// ticket, home node, home ticket)`.
    pub fn remote_tickets(&self, m: &ProposedMatch) -> Vec<(Uuid, String, Uuid)> {
        let remote = lock(&self.remote);
        m.tickets
            .iter()
            .filter_map(|t| remote.get(t).map(|(h, ht)| (*t, h.clone(), *ht)))
            .collect()
    }

    /// Neighbour side: every home agreed; allocate, and return what to tell
    /// each home `(home node, assignment)`.
    pub fn allocate_claimed(&self, m: ProposedMatch) -> Vec<(String, RemoteAssignment)> {
        let homes = self.remote_tickets(&m);
        let players_of: HashMap<Uuid, Vec<Uuid>> = {
            let mm = lock(&self.mm);
            homes
                .iter()
                .filter_map(|(t, _, _)| mm.ticket(*t, Instant::now()).map(|i| (*t, i.players)))
                .collect()
        };
        let Some(a) = self.allocate(m) else {
            return Vec::new();
        };
        let mut remote = lock(&self.remote);
        homes
            .into_iter()
            .map(|(t, home, home_ticket)| {
                remote.remove(&t);
                let mine = players_of.get(&t).cloned().unwrap_or_default();
                (
                    home,
                    RemoteAssignment {
                        home_ticket,
                        region: self.region.clone(),
                        session_id: a.session_id,
                        host: a.host.clone(),
                        port: a.port,
                        players: a.players.clone(),
                        tokens: a
                            .tokens
                            .iter()
                            .filter(|(p, _)| mine.contains(p))
                            .map(|(p, t)| (*p, t.clone()))
                            .collect(),
                    },
                )
            })
            .collect()
    }

    /// Neighbour side: a home refused; the local tickets go back to the queue
    /// and the refused offered tickets are dropped.
    pub fn drop_remote_match(&self, m: &ProposedMatch, refused: &[Uuid]) {
        let mut mm = lock(&self.mm);
        mm.release_match(m);
        let mut remote = lock(&self.remote);
        for t in refused {
            if let Some(info) = mm.ticket(*t, Instant::now()) {
                if let Some(p) = info.players.first() {
                    let _ = mm.cancel(*t, *p, Instant::now());
                }
            }
            remote.remove(t);
        }
    }

    pub fn cancel(&self, ticket: Uuid, requester: Uuid) -> Result<(), GamesError> {
        lock(&self.mm).cancel(ticket, requester, Instant::now())?;
        lock(&self.queued).remove(&ticket);
        Ok(())
    }

    /// A ticket's status, if `player` is on it.
    pub fn status(&self, ticket: Uuid, player: Uuid) -> Result<TicketView, GamesError> {
        let info = lock(&self.mm)
            .ticket(ticket, Instant::now())
            .ok_or(GamesError::UnknownTicket)?;
        if !info.players.contains(&player) {
            return Err(GamesError::UnknownTicket);
        }
        // An offered ticket: matched in another region, or being placed there.
        let remote = lock(&self.assignments).get(&ticket).cloned();
        let status = match (&remote, lock(&self.claimed).contains_key(&ticket)) {
            (Some(a), _) if a.region != self.region => TicketStatus::Matched(a.session_id),
            (None, true) => TicketStatus::Searching,
            _ => info.status,
        };
        let (status, m) = match status {
            TicketStatus::Searching => ("searching", None),
            TicketStatus::Cancelled => ("cancelled", None),
            TicketStatus::Expired => ("expired", None),
            TicketStatus::Matched(_) => {
                let a = lock(&self.assignments).get(&ticket).cloned();
                match a {
                    Some(a) => ("matched", Some(self.match_json(&a, player))),
                    // Formed this tick, allocation under way.
                    None => ("searching", None),
                }
            }
        };
        Ok(TicketView {
            ticket_id: ticket.to_string(),
            status: status.into(),
            game_mode: info.mode,
            waited_ms: info.waited.as_millis() as u64,
            r#match: m,
        })
    }

    fn match_json(&self, a: &Assignment, player: Uuid) -> serde_json::Value {
        serde_json::json!({
            "session_id": a.session_id,
            "region": a.region,
            "host": a.host,
            "port": a.port,
            "token": a.tokens.get(&player),
            "players": a.players,
        })
    }

    /// One matcher pass: allocate every formed match; matches with offered
    /// tickets and tickets to offer are left to [`crate::offers`].
    pub fn tick(&self) -> TickOutcome {
        let report = lock(&self.mm).tick(Instant::now());
        let mut out = TickOutcome::default();
        // Claimed tickets whose assignment never came (the neighbour's match
        // fell through): tell the players, the ticket is over.
        let lost: Vec<Uuid> = lock(&self.claimed)
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= CLAIM_ASSIGNMENT_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in lost {
            lock(&self.claimed).remove(&t);
            lock(&self.latencies).remove(&t);
            if let Some((player, mode, _)) = lock(&self.queued).remove(&t) {
                let _ = self.push.send(Push {
                    player_id: player,
                    event: serde_json::json!({"type": "ticket_expired", "ticket_id": t, "game_mode": mode}),
                });
            }
        }
        for o in &report.offerable {
            if let Some(lat) = lock(&self.latencies).get(&o.ticket_id) {
                out.offers.push(TicketOffer {
                    ticket: o.ticket_id,
                    mode: o.mode.clone(),
                    players: o.players.clone(),
                    latencies: lat.clone(),
                });
            }
        }
        for t in &report.expired {
            lock(&self.remote).remove(t);
            lock(&self.latencies).remove(t);
            if let Some((player, mode, _)) = lock(&self.queued).remove(t) {
                let _ = self.push.send(Push {
                    player_id: player,
                    event: serde_json::json!({"type": "ticket_expired", "ticket_id": t, "game_mode": mode}),
                });
            }
        }
        for m in report.matches {
            if self.remote_tickets(&m).is_empty() {
                self.allocate(m);
            } else {
                out.remote_matches.push(m);
            }
        }
        out
    }

    fn allocate(&self, m: ProposedMatch) -> Option<Assignment> {
        let spec = MatchSpec {
            mode: m.mode.clone(),
            teams: m.teams.clone(),
        };
        match self.orchestrator.allocate(spec) {
            Ok(alloc) => {
                let players: Vec<Uuid> = m.teams.iter().flatten().copied().collect();
                let a = Assignment {
                    region: self.region.clone(),
                    session_id: alloc.session_id,
                    host: alloc.host.clone(),
                    port: alloc.port,
                    players: players.clone(),
                    tokens: alloc
                        .tokens
                        .iter()
                        .map(|(p, t)| (*p, t.to_base64()))
                        .collect(),
                };
                {
                    let mut assignments = lock(&self.assignments);
                    let mut queued = lock(&self.queued);
                    for t in &m.tickets {
                        assignments.insert(*t, a.clone());
                        queued.remove(t);
                        lock(&self.latencies).remove(t);
                    }
                }
                self.record_session(GameSession {
                    id: alloc.session_id.to_string(),
                    game_mode: m.mode.clone(),
                    region: self.region.clone(),
                    status: "allocated".into(),
                    start_time: rfc3339(chrono::Utc::now()),
                    end_time: None,
                    dedicated_server_ip: alloc.host.clone(),
                    port: alloc.port,
                    players: players.iter().map(Uuid::to_string).collect(),
                    players_connected: 0,
                    winner_team: None,
                    failure: None,
                });
                metrics::counter!("matches_allocated_total", "mode" => m.mode.clone()).increment(1);
                for p in &players {
                    let _ = self.push.send(Push {
                        player_id: *p,
                        event: serde_json::json!({"type": "match_found", "match": self.match_json(&a, *p)}),
                    });
                }
                Some(a)
            }
            Err(e) => {
                tracing::warn!(error = %e, mode = %m.mode, "allocation failed; tickets requeued");
                metrics::counter!("matches_allocation_failed_total").increment(1);
                lock(&self.mm).release_match(&m);
                None
            }
        }
    }

    fn record_session(&self, s: GameSession) {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= SESSIONS_KEPT_MAX {
            let done = sessions
                .iter()
                .find(|(_, v)| v.status != "allocated")
                .map(|(k, _)| *k);
            if let Some(k) = done.or_else(|| sessions.keys().next().copied()) {
                sessions.remove(&k);
            }
        }
        if let Ok(id) = Uuid::parse_str(&s.id) {
            sessions.insert(id, s);
        }
    }

    pub fn sessions(&self, limit: usize) -> Vec<GameSession> {
        lock(&self.sessions)
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn queue(&self, limit: usize) -> Vec<QueueEntry> {
        let queued: Vec<_> = lock(&self.queued)
            .iter()
            .take(limit)
            .map(|(t, v)| (*t, v.clone()))
            .collect();
        let mm = lock(&self.mm);
        queued
            .into_iter()
            .filter_map(|(t, (player, mode, at))| {
                let info = mm.ticket(t, Instant::now())?;
                matches!(info.status, TicketStatus::Searching).then(|| QueueEntry {
                    ticket_id: t.to_string(),
                    player_id: player.to_string(),
                    game_mode: mode,
                    region: self.region.clone(),
                    elo_rating: info.rating,
                    queue_time: rfc3339(at),
                })
            })
            .collect()
    }

    /// Apply one session report exactly once (a durable marker per session).
    pub async fn apply_report(&self, state: &Shared, report: SessionReport) {
        let (session_id, players) = match &report {
            SessionReport::Completed(r) => (
                r.session_id,
                r.players.iter().map(|p| p.player_id).collect::<Vec<_>>(),
            ),
            SessionReport::Failed {
                session_id,
                players,
                ..
            } => (*session_id, players.clone()),
        };
        let mut marker = Batch::new();
        let key = format!("match/result/{session_id}");
        marker
            .require_absent(key.clone())
            .put(key, serde_json::to_vec(&report).unwrap_or_default());
        if let Err(e) = state.storage.commit(&marker).await {
            tracing::warn!(%session_id, error = %e, "session report already applied or not recorded; skipped");
            return;
        }
        let now = chrono::Utc::now();
        let ended = rfc3339(now);
        match &report {
            SessionReport::Completed(r) => {
                let teams = r.teams();
                lock(&self.mm).ratings_mut().record(
                    &r.mode,
                    &teams,
                    r.winner_team.map(usize::from),
                );
                for p in &r.players {
                    let won = r.winner_team == Some(p.team);
                    if let Err(e) = state
                        .leaderboards
                        .submit(
                            &self.cfg.results_board,
                            p.player_id,
                            i64::from(p.score),
                            now,
                        )
                        .await
                    {
                        tracing::warn!(player = %p.player_id, error = %e, "results board submit failed");
                    }
                    let mut updates = vec![
                        meridian_replication::leaderboard::StatUpdate::Xp {
                            amount: self.cfg.xp_per_match
                                + if won { self.cfg.xp_per_win } else { 0 },
                        },
                        meridian_replication::leaderboard::StatUpdate::Add {
                            name: "matches_played".into(),
                            delta: 1,
                        },
                        meridian_replication::leaderboard::StatUpdate::Add {
                            name: "kills".into(),
                            delta: i64::from(p.kills),
                        },
                    ];
                    if won {
                        updates.push(meridian_replication::leaderboard::StatUpdate::Add {
                            name: "wins".into(),
                            delta: 1,
                        });
                    }
                    if let Err(e) = state
                        .leaderboards
                        .update_stats(p.player_id, &updates, now)
                        .await
                    {
                        tracing::warn!(player = %p.player_id, error = %e, "stats update failed");
                    }
                    let coins =
                        self.cfg.coins_per_match + if won { self.cfg.coins_per_win } else { 0 };
                    if coins > 0 {
                        let grant = meridian_replication::economy::GrantRequest {
                            player_id: p.player_id.to_string(),
                            currency: Some("coins".into()),
                            amount: Some(coins),
                            item_id: None,
                            quantity: None,
                            reason: format!("match {session_id}"),
                            idempotency_key: format!("match:{session_id}"),
                            payment_gateway_ref: None,
                        };
                        if let Err(e) = state.economy.grant(grant).await {
                            tracing::warn!(player = %p.player_id, error = %e, "match reward failed");
                        }
                    }
                }
                if let Some(s) = lock(&self.sessions).get_mut(&session_id) {
                    s.status = "completed".into();
                    s.end_time = Some(ended.clone());
                    s.players_connected = r.players.iter().filter(|p| p.connected).count();
                    s.winner_team = r.winner_team;
                }
                metrics::counter!("matches_completed_total", "mode" => r.mode.clone()).increment(1);
                for p in &players {
                    let _ = self.push.send(Push {
                        player_id: *p,
                        event: serde_json::json!({"type": "match_ended", "session_id": session_id, "status": "completed", "result": r}),
                    });
                }
            }
            SessionReport::Failed { reason, .. } => {
                if let Some(s) = lock(&self.sessions).get_mut(&session_id) {
                    s.status = "failed".into();
                    s.end_time = Some(ended);
                    s.failure = Some(format!("{reason:?}"));
                }
                metrics::counter!("matches_failed_total").increment(1);
                for p in &players {
                    let _ = self.push.send(Push {
                        player_id: *p,
                        event: serde_json::json!({"type": "match_ended", "session_id": session_id, "status": "failed", "reason": format!("{reason:?}")}),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgs(toml: &str) -> anyhow::Result<DgsConfig> {
        let c: DgsConfig = toml::from_str(toml)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn backend_selection_and_errors_name_the_key() {
        assert_eq!(dgs("").unwrap().backend, "embedded");
        let e = dgs("backend = \"kubernetes\"").unwrap_err().to_string();
        assert!(e.contains("dgs.backend") && e.contains("kubernetes"), "{e}");
        let e = dgs("backend = \"process\"").unwrap_err().to_string();
        assert!(e.contains("dgs.process.command"), "{e}");
        let ok = dgs("backend = \"process\"\n[process]\ncommand = \"/bin/gs\"\nargs = [\"-x\"]")
            .unwrap();
        assert_eq!(ok.process.args, vec!["-x".to_string()]);
        let e = dgs("backend = \"process\"\n[process]\ncommand = \"/bin/gs\"\nport_range_start = 9000\nport_range_end = 9000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dgs.process.port_range_start"), "{e}");
        let e = dgs("backend = \"agones\"").unwrap_err().to_string();
        assert!(e.contains("dgs.agones.fleet"), "{e}");
        let ok = dgs("backend = \"agones\"\n[agones]\nfleet = \"arena\"\nsdk_public_url = \"http://n:39000\"\n[agones.required_labels]\nzone = \"a\"").unwrap();
        assert_eq!(ok.agones.required_labels["zone"], "a");
        let e = dgs("backend = \"agones\"\n[agones]\nfleet = \"arena\"\nsdk_public_url = \"http://n:39000\"\nscheduling = \"Random\"").unwrap_err().to_string();
        assert!(e.contains("dgs.agones.scheduling"), "{e}");
        let e = dgs("[agones]\nsessions_max = 3").unwrap_err().to_string();
        assert!(e.contains("sessions_max"), "{e}");
        let e = dgs("[process]\ncomand = \"x\"").unwrap_err().to_string();
        assert!(e.contains("comand"), "{e}");
    }
}
