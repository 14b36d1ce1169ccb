//! The embedded game server: one UDP socket (the node's game port)
//! multiplexing every running match.
//!
//! A receive loop authenticates datagrams and forwards them to the match
//! they belong to through a bounded queue; each match runs as its own task
//! at its [`GameMode`]'s tick rate and sends snapshots back through the
//! shared socket. Anything that is not a well-formed message from a known
//! peer — oversized or garbage datagrams, forged, expired or replayed
//! tokens, inputs from addresses not in a match — is dropped and counted in
//! [`ServerStats`], never answered and never a panic.
//!
//! Not for: deciding which matches run (see [`crate::orchestrator`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::game::{GameMode, GameResult, MatchSpec};
use crate::protocol::{AbortReason, ClientMsg, ServerMsg, PACKET_BYTES_MAX};
use crate::token::{unix_ms_now, Admission, TokenError, TokenLedger, TokenSigner};
use crate::{PlayerId, SessionId};

/// Limits of the game server.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GameServerConfig {
    /// Events (joins, inputs) queued for one match between ticks; more are dropped.
    pub match_queue_events_max: usize,
    /// A connected player sending no input this long while the match runs is disconnected.
    pub peer_idle_timeout_ms: u64,
    /// How long a match waits for all rostered players before starting
    /// with those present (or failing if nobody came).
    pub join_timeout_ms: u64,
    /// How many times `MatchEnded` is sent (one tick apart), for loss.
    pub match_ended_repeats: u32,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        Self {
            match_queue_events_max: 256,
            peer_idle_timeout_ms: 5_000,
            join_timeout_ms: 10_000,
            match_ended_repeats: 3,
        }
    }
}

macro_rules! stats {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// Counters of the game port (relaxed atomics; read with [`ServerStats::snapshot`]).
        #[derive(Debug, Default)]
        pub struct ServerStats { $($(#[$m])* pub $name: AtomicU64,)* }
        /// A copy of [`ServerStats`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot { $($(#[$m])* pub $name: u64,)* }
        impl ServerStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

stats! {
    packets_received,
    bytes_received,
    packets_sent,
    send_errors,
    recv_errors,
    /// Datagrams above `PACKET_BYTES_MAX`.
    packets_oversize,
    /// Datagrams that are not a valid `ClientMsg`.
    packets_garbage,
    /// Connects with a malformed token or a bad signature.
    tokens_forged,
    tokens_expired,
    /// Valid token for a session not running here.
    tokens_unknown_session,
    /// Token reused after its player disconnected, or from a second address.
    tokens_replayed,
    /// Valid token whose player is not on the session's roster.
    players_not_in_match,
    /// Connect from an address already bound to another player.
    connects_addr_in_use,
    /// Inputs, pings or disconnects from an address not in any match.
    packets_unknown_peer,
    /// Events dropped because a match's queue was full.
    events_dropped_queue_full,
    /// Inputs refused by the game mode (sequence, speed, aim, queue, fire rate).
    inputs_rejected,
    players_connected,
    players_idle_disconnected,
    ticks,
    /// Sum of time spent in `GameMode::tick`, for the mean tick time.
    tick_ns_total,
    tick_ns_max,
}

/// What a match task receives from the receive loop.
#[derive(Debug)]
pub(crate) enum MatchEvent {
    Join {
        player: PlayerId,
        addr: SocketAddr,
    },
    Input {
        player: PlayerId,
        input: crate::game::Input,
    },
    Leave {
        player: PlayerId,
    },
}

struct SessionEntry {
    tx: mpsc::Sender<MatchEvent>,
    roster: HashSet<PlayerId>,
    ledger: TokenLedger,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<SessionId, SessionEntry>,
    peers: HashMap<SocketAddr, (SessionId, PlayerId)>,
}

pub(crate) struct Shared {
    socket: UdpSocket,
    signer: TokenSigner,
    registry: Mutex<Registry>,
    pub(crate) stats: ServerStats,
    pub(crate) cfg: GameServerConfig,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere must not take the game port down with it.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn disconnect(&self, session_id: SessionId, player: PlayerId) {
        let mut reg = self.registry();
        let addr = reg
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.ledger.disconnect(player));
        if let Some(addr) = addr {
            reg.peers.remove(&addr);
        }
    }

    async fn send(&self, msg: &ServerMsg, addrs: &[SocketAddr]) {
        let mut buf = [0u8; PACKET_BYTES_MAX];
        let Ok(n) = msg.encode(&mut buf) else {
            // Every server message fits by construction (tested); never send a partial one.
            self.stats.send_errors.fetch_add(1, Relaxed);
            return;
        };
        for addr in addrs {
            match self.socket.send_to(&buf[..n], addr).await {
                Ok(_) => self.stats.packets_sent.fetch_add(1, Relaxed),
                Err(_) => self.stats.send_errors.fetch_add(1, Relaxed),
            };
        }
    }
}

/// Liveness of one match task, read by the orchestrator's health check.
#[derive(Debug, Default)]
pub(crate) struct MatchProbe {
    pub(crate) heartbeat_unix_ms: AtomicU64,
    pub(crate) started: AtomicBool,
}

/// How a match task ended by itself.
pub(crate) enum MatchEnd {
    Completed(GameResult),
    NoPlayers,
}

/// The game port. Cloning shares the same socket and matches.
#[derive(Clone)]
pub struct GameServer {
    pub(crate) shared: Arc<Shared>,
    recv_task: Arc<RecvTask>,
}

struct RecvTask(tokio::task::JoinHandle<()>);
impl Drop for RecvTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl GameServer {
    /// Binds the game port and starts the receive loop.
    pub async fn bind(
        addr: SocketAddr,
        signer: TokenSigner,
        cfg: GameServerConfig,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let shared = Arc::new(Shared {
            socket,
            signer,
            registry: Mutex::new(Registry::default()),
            stats: ServerStats::default(),
            cfg,
        });
        let recv = tokio::spawn(recv_loop(shared.clone()));
        Ok(Self {
            shared,
            recv_task: Arc::new(RecvTask(recv)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Whether the receive loop is still running.
    pub fn is_healthy(&self) -> bool {
        !self.recv_task.0.is_finished()
    }

    /// Makes `spec`'s players admissible; events for the match go to `tx`.
    pub(crate) fn register(
        &self,
        session_id: SessionId,
        spec: &MatchSpec,
        tx: mpsc::Sender<MatchEvent>,
    ) {
        let roster = spec.teams.iter().flatten().copied().collect();
        let prev = self.shared.registry().sessions.insert(
            session_id,
            SessionEntry {
                tx,
                roster,
                ledger: TokenLedger::default(),
            },
        );
        assert!(prev.is_none(), "session {session_id} registered twice");
    }

    /// Forgets a session; returns the addresses still connected to it.
    pub(crate) fn unregister(&self, session_id: SessionId) -> Vec<SocketAddr> {
        let mut reg = self.shared.registry();
        let Some(entry) = reg.sessions.remove(&session_id) else {
            return Vec::new();
        };
        let addrs: Vec<SocketAddr> = entry.ledger.connected().map(|(_, a)| a).collect();
        for a in &addrs {
            reg.peers.remove(a);
        }
        addrs
    }

    /// Tells `addrs` that their match stopped without a result.
    pub(crate) async fn send_aborted(&self, addrs: &[SocketAddr], reason: AbortReason) {
        let msg = ServerMsg::MatchAborted { reason };
        for _ in 0..self.shared.cfg.match_ended_repeats.max(1) {
            self.shared.send(&msg, addrs).await;
        }
    }
}

async fn recv_loop(shared: Arc<Shared>) {
    // One byte more than the limit so that oversized datagrams are detectable.
    let mut buf = vec![0u8; PACKET_BYTES_MAX + 1];
    loop {
        let (n, addr) = match shared.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // E.g. ICMP port unreachable surfacing on some platforms.
                shared.stats.recv_errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        let s = &shared.stats;
        s.packets_received.fetch_add(1, Relaxed);
        s.bytes_received.fetch_add(n as u64, Relaxed);
        if n > PACKET_BYTES_MAX {
            s.packets_oversize.fetch_add(1, Relaxed);
            continue;
        }
        let msg = match ClientMsg::decode(&buf[..n]) {
            Ok(m) => m,
            Err(_) => {
                s.packets_garbage.fetch_add(1, Relaxed);
                continue;
            }
        };
        match msg {
            ClientMsg::Connect { token } => on_connect(&shared, &token, addr),
            ClientMsg::Input(input) => {
                let reg = shared.registry();
                let Some(&(sid, player)) = reg.peers.get(&addr) else {
                    s.packets_unknown_peer.fetch_add(1, Relaxed);
                    continue;
                };
                if let Some(entry) = reg.sessions.get(&sid) {
                    if entry
                        .tx
                        .try_send(MatchEvent::Input { player, input })
                        .is_err()
                    {
                        s.events_dropped_queue_full.fetch_add(1, Relaxed);
                    }
                }
            }
            ClientMsg::Ping { nonce } => {
                let known = shared.registry().peers.contains_key(&addr);
                if known {
                    shared.send(&ServerMsg::Pong { nonce }, &[addr]).await;
                } else {
                    s.packets_unknown_peer.fetch_add(1, Relaxed);
                }
            }
            ClientMsg::Disconnect => {
                let mut reg = shared.registry();
                let Some((sid, player)) = reg.peers.remove(&addr) else {
                    s.packets_unknown_peer.fetch_add(1, Relaxed);
                    continue;
                };
                if let Some(entry) = reg.sessions.get_mut(&sid) {
                    entry.ledger.disconnect(player);
                    if entry.tx.try_send(MatchEvent::Leave { player }).is_err() {
                        s.events_dropped_queue_full.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

fn on_connect(shared: &Shared, token: &[u8], addr: SocketAddr) {
    let s = &shared.stats;
    let claims = match shared.signer.verify(token, unix_ms_now()) {
        Ok(c) => c,
        Err(TokenError::Expired) => {
            s.tokens_expired.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            s.tokens_forged.fetch_add(1, Relaxed);
            return;
        }
    };
    let (sid, player) = (claims.session_id, claims.player_id);
    let mut reg = shared.registry();
    if let Some(&bound) = reg.peers.get(&addr) {
        if bound != (sid, player) {
            s.connects_addr_in_use.fetch_add(1, Relaxed);
            return;
        }
    }
    let Some(entry) = reg.sessions.get_mut(&sid) else {
        s.tokens_unknown_session.fetch_add(1, Relaxed);
        return;
    };
    if !entry.roster.contains(&player) {
        s.players_not_in_match.fetch_add(1, Relaxed);
        return;
    }
    match entry.ledger.admit(player, addr) {
        Err(_) => {
            s.tokens_replayed.fetch_add(1, Relaxed);
        }
        Ok(admission) => {
            // A repeat re-sends the Join so that the match re-sends Welcome.
            if entry
                .tx
                .try_send(MatchEvent::Join { player, addr })
                .is_err()
            {
                s.events_dropped_queue_full.fetch_add(1, Relaxed);
            }
            if admission == Admission::New {
                s.players_connected.fetch_add(1, Relaxed);
                reg.peers.insert(addr, (sid, player));
            }
        }
    }
}

/// Runs one match to its end: waits for players, ticks the game at its
/// rate, sends snapshots and the result.
pub(crate) async fn run_match(
    server: GameServer,
    session_id: SessionId,
    spec: MatchSpec,
    mut game: Box<dyn GameMode>,
    mut rx: mpsc::Receiver<MatchEvent>,
    probe: Arc<MatchProbe>,
) -> MatchEnd {
    let shared = server.shared.clone();
    let roster = spec.roster();
    let slot_of: HashMap<PlayerId, u8> = roster.iter().map(|r| (r.player_id, r.slot)).collect();
    let hz = game.tick_rate_hz().clamp(1, 1000);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / hz as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let created = Instant::now();
    let join_timeout = Duration::from_millis(shared.cfg.join_timeout_ms);
    let idle_timeout = Duration::from_millis(shared.cfg.peer_idle_timeout_ms);
    let mut addrs: HashMap<PlayerId, SocketAddr> = HashMap::new();
    let mut last_heard: HashMap<PlayerId, Instant> = HashMap::new();
    let mut joined_ever: HashSet<PlayerId> = HashSet::new();
    let mut started = false;
    let mut rx_open = true;
    loop {
        tokio::select! {
            biased;
            ev = rx.recv(), if rx_open => {
                let Some(ev) = ev else {
                    rx_open = false;
                    continue;
                };
                match ev {
                    MatchEvent::Join { player, addr } => {
                        let Some(&slot) = slot_of.get(&player) else { continue };
                        addrs.insert(player, addr);
                        last_heard.insert(player, Instant::now());
                        if joined_ever.insert(player) {
                            game.on_join(player);
                        }
                        let welcome = ServerMsg::Welcome {
                            session_id,
                            your_slot: slot,
                            tick_rate_hz: hz,
                            roster: roster.clone(),
                        };
                        shared.send(&welcome, &[addr]).await;
                    }
                    MatchEvent::Input { player, input } => {
                        last_heard.insert(player, Instant::now());
                        if game.on_input(player, input).is_err() {
                            shared.stats.inputs_rejected.fetch_add(1, Relaxed);
                        }
                    }
                    MatchEvent::Leave { player } => {
                        addrs.remove(&player);
                        last_heard.remove(&player);
                        game.on_leave(player);
                    }
                }
            }
            _ = interval.tick() => {
                probe.heartbeat_unix_ms.store(unix_ms_now(), Relaxed);
                let now = Instant::now();
                // Idle means no inputs while the match runs; waiting for
                // the others to join is not idling.
                let idle: Vec<PlayerId> = last_heard
                    .iter()
                    .filter(|(_, t)| started && now.duration_since(**t) > idle_timeout)
                    .map(|(p, _)| *p)
                    .collect();
                for p in idle {
                    shared.disconnect(session_id, p);
                    shared.stats.players_idle_disconnected.fetch_add(1, Relaxed);
                    addrs.remove(&p);
                    last_heard.remove(&p);
                    game.on_leave(p);
                }
                if !started {
                    let all_in = joined_ever.len() == slot_of.len();
                    let timed_out = now.duration_since(created) >= join_timeout;
                    if timed_out && joined_ever.is_empty() {
                        return MatchEnd::NoPlayers;
                    }
                    if !(all_in || timed_out) {
                        continue;
                    }
                    started = true;
                    probe.started.store(true, Relaxed);
                    for t in last_heard.values_mut() {
                        *t = now;
                    }
                }
                let t0 = Instant::now();
                let snapshot = game.tick();
                let ns = t0.elapsed().as_nanos() as u64;
                let st = &shared.stats;
                st.ticks.fetch_add(1, Relaxed);
                st.tick_ns_total.fetch_add(ns, Relaxed);
                st.tick_ns_max.fetch_max(ns, Relaxed);
                st.inputs_rejected.fetch_add(game.take_violations(), Relaxed);
                let to: Vec<SocketAddr> = addrs.values().copied().collect();
                shared.send(&ServerMsg::Snapshot(snapshot), &to).await;
                if let Some(result) = game.is_over() {
                    let msg = ServerMsg::match_ended(&result, &slot_of);
                    for i in 0..shared.cfg.match_ended_repeats.max(1) {
                        if i > 0 {
                            interval.tick().await;
                        }
                        shared.send(&msg, &to).await;
                    }
                    return MatchEnd::Completed(result);
                }
            }
        }
    }
}
