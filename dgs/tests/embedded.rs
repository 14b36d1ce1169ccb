//! End-to-end tests of the embedded backend over real UDP sockets on 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_dgs::arena::{ArenaConfig, ArenaGame};
use meridian_dgs::bot::{run_bot, BotConfig, BotEnd};
use meridian_dgs::game::{
    GameFactory, GameMode, GameResult, Input, InputRejection, MatchSpec, Snapshot,
};
use meridian_dgs::orchestrator::{
    AllocateError, EmbeddedConfig, EmbeddedOrchestrator, FailureReason, FleetState, Orchestrator,
    SessionReport, SessionStatus,
};
use meridian_dgs::protocol::{AbortReason, ClientMsg, ServerMsg, PACKET_BYTES_MAX};
use meridian_dgs::server::GameServerConfig;
use meridian_dgs::token::{unix_ms_now, TokenSigner};
use meridian_dgs::PlayerId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

fn arena(duration_s: f32, hz: u32) -> ArenaConfig {
    ArenaConfig {
        duration_s,
        tick_rate_hz: hz,
        ..ArenaConfig::default()
    }
}

/// Arena games, except mode "crash" which panics on its 5th tick.
fn factory(cfg: ArenaConfig) -> GameFactory {
    Arc::new(move |spec: &MatchSpec| {
        let game = ArenaGame::new(cfg.clone(), spec);
        if spec.mode == "crash" {
            Box::new(Crashing(game, 0)) as Box<dyn GameMode>
        } else {
            Box::new(game)
        }
    })
}

struct Crashing(ArenaGame, u32);
impl GameMode for Crashing {
    fn tick_rate_hz(&self) -> u32 {
        self.0.tick_rate_hz()
    }
    fn on_join(&mut self, p: PlayerId) {
        self.0.on_join(p)
    }
    fn on_leave(&mut self, p: PlayerId) {
        self.0.on_leave(p)
    }
    fn on_input(&mut self, p: PlayerId, i: Input) -> Result<(), InputRejection> {
        self.0.on_input(p, i)
    }
    fn tick(&mut self) -> Snapshot {
        self.1 += 1;
        assert!(self.1 < 5, "simulated game crash");
        self.0.tick()
    }
    fn is_over(&self) -> Option<GameResult> {
        self.0.is_over()
    }
}

fn config(sessions_max: usize) -> EmbeddedConfig {
    EmbeddedConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        sessions_max,
        warm_pool_slots: 16,
        health_interval_ms: 100,
        server: GameServerConfig {
            join_timeout_ms: 3_000,
            ..GameServerConfig::default()
        },
        ..EmbeddedConfig::default()
    }
}

async fn start(
    sessions_max: usize,
    game: ArenaConfig,
) -> (
    EmbeddedOrchestrator,
    mpsc::Receiver<SessionReport>,
    SocketAddr,
) {
    let (orch, rx) =
        EmbeddedOrchestrator::start(config(sessions_max), TokenSigner::random(), factory(game))
            .await
            .unwrap();
    let addr = orch.server().local_addr().unwrap();
    (orch, rx, addr)
}

fn spec(mode: &str, teams: usize, team_size: usize) -> MatchSpec {
    MatchSpec {
        mode: mode.into(),
        teams: (0..teams)
            .map(|_| (0..team_size).map(|_| uuid::Uuid::new_v4()).collect())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_bots_play_and_every_match_reports_once() {
    let game = arena(2.0, 30);
    let (orch, mut reports, addr) = start(64, game.clone()).await;
    // 100 players: 4 × 5v5, 10 × 2v2, 6 × 1v1, 2 × 4-player free-for-all.
    let mut specs = Vec::new();
    specs.extend((0..4).map(|_| spec("5v5", 2, 5)));
    specs.extend((0..10).map(|_| spec("2v2", 2, 2)));
    specs.extend((0..6).map(|_| spec("1v1", 2, 1)));
    specs.extend((0..2).map(|_| spec("ffa4", 4, 1)));
    assert_eq!(
        specs
            .iter()
            .map(|s| s.teams.iter().flatten().count())
            .sum::<usize>(),
        100
    );

    let bot_cfg = BotConfig {
        arena: game.clone(),
        match_timeout_ms: 30_000,
        ..BotConfig::default()
    };
    let mut by_session = HashMap::new();
    let mut bots = Vec::new();
    for s in specs {
        let a = orch.allocate(s.clone()).unwrap();
        assert_eq!(a.tokens.len(), s.teams.iter().flatten().count());
        by_session.insert(a.session_id, s);
        for (_, token) in a.tokens {
            let cfg = bot_cfg.clone();
            bots.push(tokio::spawn(
                async move { run_bot(addr, &token, &cfg).await },
            ));
        }
    }
    let mut ended = 0;
    let mut inputs = 0;
    let mut prediction_error_max = 0f32;
    for b in bots {
        let out = b.await.unwrap().unwrap();
        prediction_error_max = prediction_error_max.max(out.prediction_error_max);
        assert!(matches!(out.end, BotEnd::Ended { .. }), "{:?}", out.end);
        assert!(out.snapshots > 0);
        inputs += out.inputs_sent;
        ended += 1;
    }
    assert_eq!(ended, 100);

    let mut seen = HashSet::new();
    for _ in 0..by_session.len() {
        let r = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(seen.insert(r.session_id()), "two reports for one session");
        let SessionReport::Completed(result) = r else {
            panic!("match failed: {r:?}")
        };
        let s = &by_session[&result.session_id];
        assert_eq!(result.mode, s.mode);
        assert_eq!(result.players.len(), s.teams.iter().flatten().count());
        assert_eq!(result.teams(), s.teams);
        for p in &result.players {
            assert!(p.connected);
            assert!(s.teams[p.team as usize].contains(&p.player_id));
        }
        assert_eq!(
            orch.status(result.session_id),
            Some(SessionStatus::Completed)
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), reports.recv())
            .await
            .is_err(),
        "no extra reports"
    );
    let st = orch.server().stats();
    assert_eq!(st.players_connected, 100);
    assert_eq!(
        st.tokens_forged + st.tokens_replayed + st.packets_garbage,
        0
    );
    let ticks = st.ticks.max(1);
    println!(
        "100 bots: {inputs} inputs, {} ticks, mean tick {} ns, max tick {} ns, inputs rejected {}, max prediction error {prediction_error_max:.3}",
        st.ticks,
        st.tick_ns_total / ticks,
        st.tick_ns_max,
        st.inputs_rejected
    );
    let cap = orch.capacity();
    assert_eq!(cap.sessions_running, 0);
    assert_eq!(cap.state, FleetState::Ready);
}

async fn send(sock: &UdpSocket, msg: &ClientMsg) {
    let mut buf = [0u8; PACKET_BYTES_MAX];
    let n = msg.encode(&mut buf).unwrap();
    sock.send(&buf[..n]).await.unwrap();
}

async fn recv(sock: &UdpSocket, ms: u64) -> Option<ServerMsg> {
    let mut buf = [0u8; PACKET_BYTES_MAX + 1];
    let n = tokio::time::timeout(Duration::from_millis(ms), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    ServerMsg::decode(&buf[..n]).ok()
}

async fn client(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(addr).await.unwrap();
    s
}

async fn wait_stats<F: Fn(&meridian_dgs::server::StatsSnapshot) -> bool>(
    orch: &EmbeddedOrchestrator,
    f: F,
) -> meridian_dgs::server::StatsSnapshot {
    for _ in 0..100 {
        let st = orch.server().stats();
        if f(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    orch.server().stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_forged_expired_replayed_and_strangers_are_dropped_and_counted() {
    let (orch, _reports, addr) = start(4, arena(30.0, 30)).await;
    let s = spec("1v1", 2, 1);
    let a = orch.allocate(s.clone()).unwrap();
    let attacker = client(addr).await;

    // Garbage, oversized and trailing-byte datagrams.
    attacker.send(&[0xff; 7]).await.unwrap();
    attacker.send(&[0u8; PACKET_BYTES_MAX + 1]).await.unwrap();
    attacker.send(&[0x03, 0x00, 0x00]).await.unwrap(); // Disconnect + trailing bytes
                                                       // A token signed with another key, for the real session and player.
    let forged = TokenSigner::random().issue(a.session_id, s.teams[0][0], u64::MAX);
    send(
        &attacker,
        &ClientMsg::Connect {
            token: forged.0.to_vec(),
        },
    )
    .await;
    send(
        &attacker,
        &ClientMsg::Connect {
            token: vec![1, 2, 3],
        },
    )
    .await;
    // Inputs and pings from an address that never connected.
    let input = Input {
        seq: 1,
        move_x: 0.0,
        move_y: 0.0,
        aim_x: 1.0,
        aim_y: 0.0,
        fire: true,
    };
    send(&attacker, &ClientMsg::Input(input)).await;
    send(&attacker, &ClientMsg::Ping { nonce: 1 }).await;
    assert!(recv(&attacker, 200).await.is_none(), "nothing is answered");

    let st = wait_stats(&orch, |st| st.packets_unknown_peer >= 2).await;
    assert_eq!(st.packets_garbage, 2);
    assert_eq!(st.packets_oversize, 1);
    assert_eq!(st.tokens_forged, 2);
    assert_eq!(st.packets_unknown_peer, 2);

    // The real player connects, then the token is replayed from elsewhere.
    let token = a.tokens[0].1.clone();
    let player = client(addr).await;
    send(
        &player,
        &ClientMsg::Connect {
            token: token.0.to_vec(),
        },
    )
    .await;
    assert!(matches!(
        recv(&player, 1000).await,
        Some(ServerMsg::Welcome { your_slot: 0, .. })
    ));
    send(
        &attacker,
        &ClientMsg::Connect {
            token: token.0.to_vec(),
        },
    )
    .await;
    // The same player re-sending Connect from its address is fine (lost Welcome).
    send(
        &player,
        &ClientMsg::Connect {
            token: token.0.to_vec(),
        },
    )
    .await;
    send(&player, &ClientMsg::Ping { nonce: 42 }).await;
    let mut got_pong = false;
    for _ in 0..5 {
        if let Some(ServerMsg::Pong { nonce: 42 }) = recv(&player, 500).await {
            got_pong = true;
            break;
        }
    }
    assert!(got_pong);
    // After a disconnect the token is spent, even from the same address.
    send(&player, &ClientMsg::Disconnect).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(
        &player,
        &ClientMsg::Connect {
            token: token.0.to_vec(),
        },
    )
    .await;
    let st = wait_stats(&orch, |st| st.tokens_replayed >= 2).await;
    assert_eq!(st.tokens_replayed, 2);
    assert_eq!(st.players_connected, 1);

    // A valid token of another node (other key) is a forgery here.
    let (orch2, _r2, _) = start(1, arena(30.0, 30)).await;
    let other = orch2.allocate(spec("1v1", 2, 1)).unwrap();
    send(
        &client(addr).await,
        &ClientMsg::Connect {
            token: other.tokens[0].1 .0.to_vec(),
        },
    )
    .await;
    let st = wait_stats(&orch, |st| st.tokens_forged >= 3).await;
    assert_eq!(st.tokens_forged, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_unknown_session_on_the_port() {
    let signer = TokenSigner::random();
    let (orch, _rx) =
        EmbeddedOrchestrator::start(config(2), signer.clone(), factory(arena(30.0, 30)))
            .await
            .unwrap();
    let addr = orch.server().local_addr().unwrap();
    let s = spec("1v1", 2, 1);
    let a = orch.allocate(s.clone()).unwrap();
    let c = client(addr).await;
    let expired = signer.issue(a.session_id, s.teams[0][0], unix_ms_now() - 1);
    send(
        &c,
        &ClientMsg::Connect {
            token: expired.0.to_vec(),
        },
    )
    .await;
    let unknown = signer.issue(uuid::Uuid::new_v4(), s.teams[0][0], u64::MAX);
    send(
        &c,
        &ClientMsg::Connect {
            token: unknown.0.to_vec(),
        },
    )
    .await;
    let stranger = signer.issue(a.session_id, uuid::Uuid::new_v4(), u64::MAX);
    send(
        &c,
        &ClientMsg::Connect {
            token: stranger.0.to_vec(),
        },
    )
    .await;
    let st = wait_stats(&orch, |st| st.players_not_in_match >= 1).await;
    assert_eq!(st.tokens_expired, 1);
    assert_eq!(st.tokens_unknown_session, 1);
    assert_eq!(st.players_not_in_match, 1);
    assert!(recv(&c, 100).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_match_is_failed_once_and_players_are_told() {
    let game = arena(5.0, 30);
    let (orch, mut reports, addr) = start(4, game.clone()).await;
    let a = orch.allocate(spec("crash", 2, 1)).unwrap();
    let cfg = BotConfig {
        arena: game,
        match_timeout_ms: 10_000,
        ..BotConfig::default()
    };
    let bots: Vec<_> = a
        .tokens
        .into_iter()
        .map(|(_, t)| {
            let cfg = cfg.clone();
            tokio::spawn(async move { run_bot(addr, &t, &cfg).await })
        })
        .collect();
    let r = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            r,
            SessionReport::Failed {
                reason: FailureReason::Crashed,
                ..
            }
        ),
        "{r:?}"
    );
    for b in bots {
        let out = b.await.unwrap().unwrap();
        assert_eq!(out.end, BotEnd::Aborted(AbortReason::Crashed));
    }
    assert_eq!(
        orch.status(a.session_id),
        Some(SessionStatus::Failed(FailureReason::Crashed))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), reports.recv())
            .await
            .is_err()
    );
    // The node keeps serving other matches.
    assert!(orch.allocate(spec("1v1", 2, 1)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_connects_fails_after_join_timeout() {
    let mut cfg = config(2);
    cfg.server.join_timeout_ms = 200;
    let (orch, mut rx) =
        EmbeddedOrchestrator::start(cfg, TokenSigner::random(), factory(arena(5.0, 30)))
            .await
            .unwrap();
    let a = orch.allocate(spec("1v1", 2, 1)).unwrap();
    assert_eq!(orch.status(a.session_id), Some(SessionStatus::Allocated));
    let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        r,
        SessionReport::Failed {
            reason: FailureReason::NoPlayersConnected,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_limit_edge_and_invalid_specs() {
    let (orch, _rx, _) = start(2, arena(30.0, 30)).await;
    let cap = orch.capacity();
    assert_eq!(
        (cap.sessions_available, cap.slots_ready, cap.healthy),
        (2, 2, true)
    );
    orch.allocate(spec("1v1", 2, 1)).unwrap();
    orch.allocate(spec("1v1", 2, 1)).unwrap();
    assert_eq!(
        orch.allocate(spec("1v1", 2, 1)).unwrap_err(),
        AllocateError::NoCapacity { sessions_max: 2 }
    );
    assert_eq!(orch.capacity().sessions_available, 0);
    // The trait is object safe: the node can hold any backend.
    let dynamic: Arc<dyn Orchestrator> = Arc::new(orch.clone());
    assert_eq!(dynamic.capacity().sessions_running, 2);
    assert!(matches!(
        orch.allocate(spec("x", 0, 0)),
        Err(AllocateError::InvalidSpec(_))
    ));
    assert!(matches!(
        orch.allocate(spec("x", 3, 11)),
        Err(AllocateError::InvalidSpec(_))
    ));
    let p = uuid::Uuid::new_v4();
    let dup = MatchSpec {
        mode: "x".into(),
        teams: vec![vec![p], vec![p]],
    };
    assert!(matches!(
        orch.allocate(dup),
        Err(AllocateError::InvalidSpec(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_short_matches_finish_and_stops_long_ones_at_the_deadline() {
    let (orch, mut rx, addr) = start(4, arena(0.5, 30)).await;
    let bot_cfg = BotConfig {
        arena: arena(0.5, 30),
        ..BotConfig::default()
    };
    let short = orch.allocate(spec("1v1", 2, 1)).unwrap();
    let mut bots = Vec::new();
    for (_, t) in short.tokens.clone() {
        let cfg = bot_cfg.clone();
        bots.push(tokio::spawn(async move { run_bot(addr, &t, &cfg).await }));
    }
    // A match whose players never come stays Allocated past the drain deadline.
    let stuck = orch.allocate(spec("1v1", 2, 1)).unwrap();
    orch.drain(Duration::from_millis(1500));
    assert_eq!(orch.capacity().state, FleetState::Draining);
    assert_eq!(
        orch.allocate(spec("1v1", 2, 1)).unwrap_err(),
        AllocateError::Draining
    );
    tokio::time::timeout(Duration::from_secs(10), orch.drained())
        .await
        .unwrap();
    assert_eq!(orch.capacity().state, FleetState::Shutdown);
    let mut got = HashMap::new();
    for _ in 0..2 {
        let r = rx.recv().await.unwrap();
        got.insert(r.session_id(), r);
    }
    assert!(matches!(
        got[&short.session_id],
        SessionReport::Completed(_)
    ));
    assert!(matches!(
        got[&stuck.session_id],
        SessionReport::Failed {
            reason: FailureReason::DrainDeadline,
            ..
        }
    ));
    for b in bots {
        assert!(matches!(
            b.await.unwrap().unwrap().end,
            BotEnd::Ended { .. }
        ));
    }
    assert_eq!(
        orch.allocate(spec("1v1", 2, 1)).unwrap_err(),
        AllocateError::Shutdown
    );
}

/// Allocation latency of the embedded backend (warm pool). Prints numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_latency() {
    let n = 2_000usize;
    let mut cfg = config(n);
    cfg.warm_pool_slots = n;
    let (orch, _rx) =
        EmbeddedOrchestrator::start(cfg, TokenSigner::random(), factory(arena(30.0, 30)))
            .await
            .unwrap();
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let t0 = Instant::now();
    for _ in 0..n {
        let s = spec("5v5", 2, 5);
        let t = Instant::now();
        orch.allocate(s).unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    let total = t0.elapsed();
    println!(
        "allocations (5v5, 10 tokens each): n={n} p50={}us p99={}us max={}us rate={:.0}/s",
        h.value_at_quantile(0.5) / 1000,
        h.value_at_quantile(0.99) / 1000,
        h.max() / 1000,
        n as f64 / total.as_secs_f64()
    );
    assert!(
        h.value_at_quantile(0.5) < 1_000_000,
        "p50 allocation under 1 ms"
    );
    orch.drain(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(30), orch.drained())
        .await
        .unwrap();
}

/// Game tick time at 60 Hz: M matches × N bots. Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn tick_time_60hz() {
    for (matches, team_size) in [(10usize, 5usize), (4, 8)] {
        let game = arena(5.0, 60);
        let (orch, mut rx, addr) = start(64, game.clone()).await;
        let bot_cfg = BotConfig {
            arena: game.clone(),
            ..BotConfig::default()
        };
        let mut bots = Vec::new();
        for _ in 0..matches {
            let a = orch.allocate(spec("tick", 2, team_size)).unwrap();
            for (_, t) in a.tokens {
                let cfg = bot_cfg.clone();
                bots.push(tokio::spawn(async move { run_bot(addr, &t, &cfg).await }));
            }
        }
        for b in bots {
            b.await.unwrap().unwrap();
        }
        for _ in 0..matches {
            assert!(matches!(
                rx.recv().await.unwrap(),
                SessionReport::Completed(_)
            ));
        }
        let st = orch.server().stats();
        println!(
            "60 Hz, {matches} matches x {} players: ticks={} mean tick={} ns max tick={} ns packets in={} out={}",
            team_size * 2,
            st.ticks,
            st.tick_ns_total / st.ticks.max(1),
            st.tick_ns_max,
            st.packets_received,
            st.packets_sent
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_player_is_disconnected_after_idle_timeout() {
    let mut cfg = config(2);
    cfg.server.peer_idle_timeout_ms = 300;
    let (orch, mut rx) =
        EmbeddedOrchestrator::start(cfg, TokenSigner::random(), factory(arena(1.5, 30)))
            .await
            .unwrap();
    let addr = orch.server().local_addr().unwrap();
    let a = orch.allocate(spec("1v1", 2, 1)).unwrap();
    let (active, silent) = (client(addr).await, client(addr).await);
    for (c, (_, t)) in [&active, &silent].into_iter().zip(&a.tokens) {
        send(
            c,
            &ClientMsg::Connect {
                token: t.0.to_vec(),
            },
        )
        .await;
        assert!(matches!(
            recv(c, 1000).await,
            Some(ServerMsg::Welcome { .. })
        ));
    }
    // Waiting for the match to start is not idling; then only `active` plays.
    for seq in 1..=36u32 {
        let input = Input {
            seq,
            move_x: 0.5,
            move_y: 0.0,
            aim_x: 1.0,
            aim_y: 0.0,
            fire: false,
        };
        send(&active, &ClientMsg::Input(input)).await;
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let st = orch.server().stats();
    assert_eq!(st.players_idle_disconnected, 1);
    // The silent player's address is forgotten: its input is a stranger's.
    let input = Input {
        seq: 1,
        move_x: 0.0,
        move_y: 0.0,
        aim_x: 1.0,
        aim_y: 0.0,
        fire: false,
    };
    send(&silent, &ClientMsg::Input(input)).await;
    let st = wait_stats(&orch, |st| st.packets_unknown_peer >= 1).await;
    assert_eq!(st.packets_unknown_peer, 1);
    let SessionReport::Completed(r) = rx.recv().await.unwrap() else {
        panic!("match should complete")
    };
    assert!(r.players.iter().all(|p| p.connected), "both had connected");
}
