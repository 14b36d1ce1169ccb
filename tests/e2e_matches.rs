//! Full matches through the real binary: 100 players queue in three modes,
//! are matched into the right team sizes, connect to the node's game port
//! over UDP with their session tokens, play the arena game to the end, and
//! the results reach leaderboards, XP/stats and wallets exactly once.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const MATCH_S: f32 = 3.0;

async fn get(url: String, token: &str) -> (u16, Value) {
    let (s, _, b) = call(
        client()
            .get(url)
            .header("authorization", format!("Bearer {token}")),
    )
    .await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_bots_play_full_matches_and_results_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("MERIDIAN_DGS__MATCH_DURATION_S", "3")]);
    let base = node.url();
    let (_, _, modes) = call(client().get(format!("{base}/matchmaking/modes"))).await;
    let size_of: BTreeMap<String, u64> = modes
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["players_per_match"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        (size_of["duel"], size_of["squad"], size_of["ffa8"]),
        (2, 4, 8)
    );

    // 44 duel + 40 squad + 16 ffa8 = 100 players.
    let plan: Vec<&str> = std::iter::repeat_n("duel", 44)
        .chain(std::iter::repeat_n("squad", 40))
        .chain(std::iter::repeat_n("ffa8", 16))
        .collect();
    let mut players = Vec::new();
    for (i, mode) in plan.iter().enumerate() {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/auth/device"))
                .json(&json!({"device_id": format!("match-bot-{i:04}")})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        players.push((
            b["player_id"].as_str().unwrap().to_string(),
            b["access_token"].as_str().unwrap().to_string(),
            *mode,
        ));
    }
    let mut tickets = Vec::new();
    for (_, token, mode) in &players {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/matchmaking/join"))
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({
                    "game_mode": mode, "latencies": {"eu-west": 20.0, "us-east": 90.0}
                })),
        )
        .await;
        assert_eq!(s, 202, "{b}");
        tickets.push(b["ticket_id"].as_str().unwrap().to_string());
    }
    // A second ticket for a queued player is refused.
    let (s, _, b) = call(
        client()
            .post(format!("{base}/matchmaking/join"))
            .header("authorization", format!("Bearer {}", players[0].1))
            .json(&json!({
                "game_mode": "duel", "latencies": {"eu-west": 20.0}
            })),
    )
    .await;
    match s {
        409 => assert_eq!(error_code(&b), "already_queued"),
        // The first ticket was already matched: this one is a new search; withdraw it.
        202 => {
            let (s, _, _) = call(
                client()
                    .delete(format!(
                        "{base}/matchmaking/tickets/{}",
                        b["ticket_id"].as_str().unwrap()
                    ))
                    .header("authorization", format!("Bearer {}", players[0].1)),
            )
            .await;
            assert_eq!(s, 204);
        }
        other => panic!("{other}: {b}"),
    }

    // Everyone matched, into whole matches of the right size.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut matches: Vec<Value> = vec![Value::Null; players.len()];
    while matches.iter().any(Value::is_null) {
        assert!(Instant::now() < deadline, "not everyone was matched");
        for (i, (_, token, _)) in players.iter().enumerate() {
            if matches[i].is_null() {
                let (s, b) = get(
                    format!("{base}/matchmaking/status?ticket_id={}", tickets[i]),
                    token,
                )
                .await;
                assert_eq!(s, 200, "{b}");
                if b["status"] == "matched" {
                    matches[i] = b["match"].clone();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sessions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, m) in matches.iter().enumerate() {
        let members: BTreeSet<String> = m["players"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            members.len() as u64,
            size_of[players[i].2],
            "team size for {}: {m}",
            players[i].2
        );
        assert!(members.contains(&players[i].0));
        let prev = sessions.insert(
            m["session_id"].as_str().unwrap().to_string(),
            members.clone(),
        );
        assert!(
            prev.is_none() || prev == Some(members),
            "a session with two rosters"
        );
    }
    assert_eq!(sessions.len(), 22 + 10 + 2);

    // Play: every bot connects with its token over UDP and plays to the end.
    let cfg = meridian_dgs::bot::BotConfig {
        arena: meridian_dgs::arena::ArenaConfig {
            duration_s: MATCH_S,
            ..Default::default()
        },
        match_timeout_ms: 30_000,
        ..Default::default()
    };
    let outcomes: Vec<_> = futures::stream::iter(matches.iter().enumerate())
        .map(|(i, m)| {
            let cfg = cfg.clone();
            let addr: std::net::SocketAddr =
                format!("{}:{}", m["host"].as_str().unwrap(), m["port"])
                    .parse()
                    .unwrap();
            let token =
                meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap())
                    .unwrap();
            async move { (i, meridian_dgs::bot::run_bot(addr, &token, &cfg).await) }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut won = vec![false; players.len()];
    for (i, o) in outcomes {
        let o = o.unwrap_or_else(|e| panic!("bot {i}: {e}"));
        match o.end {
            meridian_dgs::bot::BotEnd::Ended { winner_team, .. } => {
                won[i] = winner_team == Some(o.team)
            }
            other => panic!("bot {i} did not finish: {other:?}"),
        }
    }

    // Results applied: sessions completed, then XP, stats, coins and board entries exactly once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = get(format!("{base}/admin/sessions?limit=1000"), ADMIN_TOKEN).await;
        let done = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "completed")
            .count();
        if done == sessions.len() {
            break;
        }
        assert!(Instant::now() < deadline, "sessions not completed: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (pid, token, _)) in players.iter().enumerate() {
        let (_, prof) = get(format!("{base}/player/{pid}/profile"), token).await;
        let expected_xp = 50 + if won[i] { 100 } else { 0 };
        assert_eq!(prof["xp"], expected_xp, "player {i} xp: {prof}");
        assert_eq!(
            prof["stats"]["counters"]["matches_played"], 1,
            "player {i}: {prof}"
        );
        let (_, w) = get(format!("{base}/wallet/me"), token).await;
        assert_eq!(
            w["balances"]["coins"],
            10 + if won[i] { 25 } else { 0 },
            "player {i} coins: {w}"
        );
        let (s, e) = get(format!("{base}/leaderboards/arena/players/{pid}"), token).await;
        assert_eq!(s, 200, "player {i} not on the results board: {e}");
    }
    // Admin views of the seed's entities.
    let (s, q) = get(format!("{base}/admin/matchmaking"), ADMIN_TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(q.as_array().unwrap().len(), 0, "queue should be empty: {q}");
}

#[tokio::test]
async fn ticket_errors_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let a = register(&base, "queue_a1", "queue password a").await;
    let b = register(&base, "queue_b2", "queue password b").await;
    let (ta, tb) = (
        a["access_token"].as_str().unwrap(),
        b["access_token"].as_str().unwrap(),
    );
    let join = |token: &str, body: Value| {
        client()
            .post(format!("{base}/matchmaking/join"))
            .header("authorization", format!("Bearer {token}"))
            .json(&body)
    };
    let cases = [
        (
            json!({"game_mode": "nope", "latencies": {"eu-west": 10}}),
            404,
            "unknown_mode",
        ),
        (
            json!({"game_mode": "duel", "latencies": {"eu-west": -5}}),
            400,
            "invalid_field",
        ),
        (
            json!({"game_mode": "duel", "latencies": {"eu-west": 1e12}}),
            400,
            "invalid_field",
        ),
        (
            json!({"game_mode": "duel", "latencies": {}}),
            400,
            "invalid_field",
        ),
        (
            json!({"game_mode": "duel", "latencies": {"eu-west": 900}}),
            422,
            "no_region_within_latency",
        ),
        (
            json!({"game_mode": "duel", "latencies": {"eu-west": "fast"}}),
            400,
            "invalid_field",
        ),
        (json!({"game_mode": "duel"}), 400, "invalid_field"),
        (
            json!({"game_mode": "duel", "latencies": {"eu-west": 10}, "party": ["not-a-uuid"]}),
            400,
            "invalid_field",
        ),
    ];
    for (i, (body, status, code)) in cases.into_iter().enumerate() {
        let (s, _, e) = call(join(ta, body)).await;
        assert_eq!(
            (s, error_code(&e)),
            (status, code.to_string()),
            "case {i}: {e}"
        );
    }
    let (s, _, t) = call(join(
        ta,
        json!({"game_mode": "ffa8", "latencies": {"eu-west": 10}}),
    ))
    .await;
    assert_eq!(s, 202, "{t}");
    let ticket = t["ticket_id"].as_str().unwrap();
    let (s, _, e) = call(join(
        ta,
        json!({"game_mode": "duel", "latencies": {"eu-west": 10}}),
    ))
    .await;
    assert_eq!((s, error_code(&e).as_str()), (409, "already_queued"));
    // Someone else's ticket: not visible, not cancellable.
    let (s, _) = get(format!("{base}/matchmaking/status?ticket_id={ticket}"), tb).await;
    assert_eq!(s, 404);
    let (s, _, _) = call(
        client()
            .delete(format!("{base}/matchmaking/tickets/{ticket}"))
            .header("authorization", format!("Bearer {tb}")),
    )
    .await;
    assert!(s == 403 || s == 404, "{s}");
    let (s, st) = get(format!("{base}/matchmaking/status?ticket_id={ticket}"), ta).await;
    assert_eq!((s, st["status"].as_str()), (200, Some("searching")));
    let (s, _, _) = call(
        client()
            .delete(format!("{base}/matchmaking/tickets/{ticket}"))
            .header("authorization", format!("Bearer {ta}")),
    )
    .await;
    assert_eq!(s, 204);
    let (_, st) = get(format!("{base}/matchmaking/status?ticket_id={ticket}"), ta).await;
    assert_eq!(st["status"], "cancelled");
    // Servers cannot queue; unknown ticket ids are 400/404.
    let (s, _, _) = call(join(
        SERVER_TOKEN,
        json!({"game_mode": "duel", "latencies": {"eu-west": 10}}),
    ))
    .await;
    assert_eq!(s, 403);
    let (s, _) = get(format!("{base}/matchmaking/status?ticket_id=zzz"), ta).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn websocket_pushes_match_found() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("MERIDIAN_DGS__MATCH_DURATION_S", "2")]);
    let base = node.url();
    let a = register(&base, "ws_a1", "ws password aa").await;
    let b = register(&base, "ws_b2", "ws password bb").await;
    let ta = a["access_token"].as_str().unwrap();
    let url = format!("ws://{}/ws?access_token={ta}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("hello"));
    for t in [ta, b["access_token"].as_str().unwrap()] {
        let (s, _, e) = call(
            client()
                .post(format!("{base}/matchmaking/join"))
                .header("authorization", format!("Bearer {t}"))
                .json(&json!({"game_mode": "duel", "latencies": {"eu-west": 10}})),
        )
        .await;
        assert_eq!(s, 202, "{e}");
    }
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("push in time")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "match_found", "{v}");
    assert!(v["match"]["token"].is_string());
    let _ = ws.close(None).await;
    // Without a token: refused.
    let res = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr)).await;
    assert!(res.is_err());
}

/// `dgs.backend = "process"`: the node spawns `meridian game-server` (the
/// reference external game server speaking the local SDK) per match. A duel
/// plays to the end over UDP and its result is applied once; the squad
/// server aborts mid-match (`--crash-in-mode squad`): the session is failed,
/// the players are told over `/ws`, and nothing is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_backend_plays_a_match_and_a_crash_fails_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let port_start = unique_ports(5);
    let args = r#"["game-server", "--duration-s", "2", "--crash-in-mode", "squad", "--crash-after-ms", "400"]"#;
    let node = Node::start(
        dir.path(),
        &[
            ("MERIDIAN_DGS__BACKEND", "process"),
            (
                "MERIDIAN_DGS__PROCESS__COMMAND",
                env!("CARGO_BIN_EXE_meridian"),
            ),
            ("MERIDIAN_DGS__PROCESS__ARGS", args),
            (
                "MERIDIAN_DGS__PROCESS__PORT_RANGE_START",
                &port_start.to_string(),
            ),
            (
                "MERIDIAN_DGS__PROCESS__PORT_RANGE_END",
                &(port_start + 4).to_string(),
            ),
        ],
    );
    let base = node.url();
    let mut players = Vec::new();
    for (i, mode) in ["duel", "duel", "squad", "squad", "squad", "squad"]
        .iter()
        .enumerate()
    {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/auth/device"))
                .json(&json!({"device_id": format!("process-bot-{i}")})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        players.push((
            b["player_id"].as_str().unwrap().to_string(),
            b["access_token"].as_str().unwrap().to_string(),
            *mode,
        ));
    }
    // A squad player listens on /ws for the failure.
    let url = format!("ws://{}/ws?access_token={}", node.addr, players[2].1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut tickets = Vec::new();
    for (_, token, mode) in &players {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/matchmaking/join"))
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({"game_mode": mode, "latencies": {"eu-west": 20.0}})),
        )
        .await;
        assert_eq!(s, 202, "{b}");
        tickets.push(b["ticket_id"].as_str().unwrap().to_string());
    }
    let mut matches = vec![Value::Null; players.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches.iter().any(Value::is_null) {
        assert!(Instant::now() < deadline, "not matched: {matches:?}");
        for (i, (_, token, _)) in players.iter().enumerate() {
            if matches[i].is_null() {
                let (_, b) = get(
                    format!("{base}/matchmaking/status?ticket_id={}", tickets[i]),
                    token,
                )
                .await;
                if b["status"] == "matched" {
                    matches[i] = b["match"].clone();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duel_session = matches[0]["session_id"].as_str().unwrap().to_string();
    let squad_session = matches[2]["session_id"].as_str().unwrap().to_string();
    assert_ne!(duel_session, squad_session);
    assert_ne!(
        matches[0]["port"], matches[2]["port"],
        "one process, one port"
    );
    let cfg = meridian_dgs::bot::BotConfig {
        arena: meridian_dgs::arena::ArenaConfig {
            duration_s: 2.0,
            ..Default::default()
        },
        connect_timeout_ms: 15_000,
        match_timeout_ms: 8_000,
        ..Default::default()
    };
    let outcomes: Vec<_> = futures::stream::iter(matches.iter().enumerate())
        .map(|(i, m)| {
            let cfg = cfg.clone();
            let addr: std::net::SocketAddr =
                format!("{}:{}", m["host"].as_str().unwrap(), m["port"])
                    .parse()
                    .unwrap();
            let token =
                meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap())
                    .unwrap();
            async move { (i, meridian_dgs::bot::run_bot(addr, &token, &cfg).await) }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let mut won = vec![false; players.len()];
    for (i, o) in outcomes {
        if players[i].2 == "duel" {
            let o = o.unwrap_or_else(|e| panic!("duel bot {i}: {e}"));
            match o.end {
                meridian_dgs::bot::BotEnd::Ended { winner_team, .. } => {
                    won[i] = winner_team == Some(o.team)
                }
                other => panic!("duel bot {i} did not finish: {other:?}"),
            }
        } else {
            // The server died mid-match: no end on the game port.
            assert!(
                !matches!(
                    o,
                    Ok(meridian_dgs::bot::BotOutcome {
                        end: meridian_dgs::bot::BotEnd::Ended { .. },
                        ..
                    })
                ),
                "squad bot {i} saw an end"
            );
        }
    }
    // The squad player is told.
    let told = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["type"] == "match_ended" {
                return v;
            }
        }
        Value::Null
    })
    .await
    .expect("match_ended push");
    assert_eq!(told["session_id"], squad_session.as_str(), "{told}");
    assert_eq!(told["status"], "failed", "{told}");
    assert_eq!(told["reason"], "Crashed", "{told}");
    // Sessions: the duel completed, the squad failed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = get(format!("{base}/admin/sessions?limit=10"), ADMIN_TOKEN).await;
        let status = |id: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .map(|s| s["status"].as_str().unwrap().to_string())
        };
        if status(&duel_session).as_deref() == Some("completed")
            && status(&squad_session).as_deref() == Some("failed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "sessions: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (pid, token, mode)) in players.iter().enumerate() {
        let (_, prof) = get(format!("{base}/player/{pid}/profile"), token).await;
        let (_, w) = get(format!("{base}/wallet/me"), token).await;
        let coins = w["balances"]["coins"].as_i64().unwrap_or(0);
        let xp = prof["xp"].as_u64().unwrap_or(0);
        if *mode == "duel" {
            assert_eq!(xp, 50 + if won[i] { 100 } else { 0 }, "player {i}: {prof}");
            assert_eq!(prof["stats"]["counters"]["matches_played"], 1, "{prof}");
            assert_eq!(coins, 10 + if won[i] { 25 } else { 0 }, "player {i}: {w}");
        } else {
            assert_eq!((xp, coins), (0, 0), "crashed match granted: {prof} {w}");
        }
    }
    assert!(
        won.iter().filter(|w| **w).count() <= 1,
        "one duel winner at most"
    );
}

/// `dgs.backend = "agones"` through the real binary. No cluster can run
/// here: the test is the Kubernetes API (a scripted server answering the
/// `GameServerAllocation` kube-rs sends) and the fleet (for each allocation
/// it starts the reference game server in-process from the allocation's
/// `meridian.dev/*` annotations, as an Agones game server would read them).
/// A duel is allocated, played over UDP and its result applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agones_backend_against_a_scripted_api_server_plays_a_match() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, Value)>>>;
    async fn allocate(
        axum::extract::State(seen): axum::extract::State<Seen>,
        uri: axum::http::Uri,
        axum::Json(mut body): axum::Json<Value>,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        seen.lock()
            .unwrap()
            .push((uri.path().to_string(), body.clone()));
        let meta = body["spec"]["metadata"].clone();
        let ann = |k: &str| meta["annotations"][k].as_str().map(str::to_string);
        let port = free_udp_port();
        let vars: BTreeMap<&str, Option<String>> = BTreeMap::from([
            (
                "MERIDIAN_SESSION_ID",
                meta["labels"]["meridian.dev/session-id"]
                    .as_str()
                    .map(str::to_string),
            ),
            ("MERIDIAN_GAME_PORT", Some(port.to_string())),
            ("MERIDIAN_SDK_URL", ann("meridian.dev/sdk-url")),
            ("MERIDIAN_SDK_TOKEN", ann("meridian.dev/sdk-token")),
            ("MERIDIAN_MODE", ann("meridian.dev/mode")),
            ("MERIDIAN_PLAYERS", ann("meridian.dev/players")),
        ]);
        let env =
            meridian_dgs::refserver::RefServerEnv::from_lookup(|k| vars.get(k).cloned().flatten())
                .expect("annotations carry the session");
        let mut opts = meridian_dgs::refserver::RefServerOptions::default();
        opts.arena.duration_s = 2.0;
        tokio::spawn(async move {
            if let Err(e) = meridian_dgs::refserver::run(env, opts).await {
                eprintln!("reference game server: {e}");
            }
        });
        body["metadata"]["name"] = json!("meridian-abcde");
        body["status"] = json!({"state": "Allocated", "gameServerName": "arena-fleet-x1",
            "address": "127.0.0.1", "ports": [{"name": "default", "port": port}],
            "nodeName": "node-1", "source": "local"});
        (axum::http::StatusCode::CREATED, axum::Json(body))
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/apis/allocation.agones.dev/v1/namespaces/games/gameserverallocations",
            axum::routing::post(allocate),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let sdk = format!("127.0.0.1:{}", free_port());
    let node = Node::start(
        dir.path(),
        &[
            ("MERIDIAN_DGS__BACKEND", "agones"),
            ("MERIDIAN_DGS__AGONES__API_URL", &format!("http://{api}")),
            ("MERIDIAN_DGS__AGONES__NAMESPACE", "games"),
            ("MERIDIAN_DGS__AGONES__FLEET", "arena-fleet"),
            ("MERIDIAN_DGS__AGONES__SDK_BIND", &sdk),
            (
                "MERIDIAN_DGS__AGONES__SDK_PUBLIC_URL",
                &format!("http://{sdk}"),
            ),
        ],
    );
    let base = node.url();
    let mut players = Vec::new();
    for i in 0..2 {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/auth/device"))
                .json(&json!({"device_id": format!("agones-bot-{i}")})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let token = b["access_token"].as_str().unwrap().to_string();
        let (s, _, t) = call(
            client()
                .post(format!("{base}/matchmaking/join"))
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({"game_mode": "duel", "latencies": {"eu-west": 20.0}})),
        )
        .await;
        assert_eq!(s, 202, "{t}");
        players.push((
            b["player_id"].as_str().unwrap().to_string(),
            token,
            t["ticket_id"].as_str().unwrap().to_string(),
        ));
    }
    let mut matches = vec![Value::Null; 2];
    wait_for("both matched", Duration::from_secs(20), async || {
        for (i, (_, token, ticket)) in players.iter().enumerate() {
            let (_, b) = get(
                format!("{base}/matchmaking/status?ticket_id={ticket}"),
                token,
            )
            .await;
            if b["status"] == "matched" {
                matches[i] = b["match"].clone();
            }
        }
        matches.iter().all(|m| !m.is_null())
    })
    .await;
    assert_eq!(matches[0]["session_id"], matches[1]["session_id"]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one allocation per match");
        assert_eq!(
            seen[0].1["spec"]["selectors"][0]["matchLabels"]["agones.dev/fleet"],
            "arena-fleet"
        );
        assert_eq!(
            seen[0].1["spec"]["metadata"]["labels"]["meridian.dev/session-id"],
            matches[0]["session_id"]
        );
    }
    let cfg = meridian_dgs::bot::BotConfig {
        arena: meridian_dgs::arena::ArenaConfig {
            duration_s: 2.0,
            ..Default::default()
        },
        match_timeout_ms: 20_000,
        ..Default::default()
    };
    let outcomes: Vec<_> = futures::stream::iter(matches.iter())
        .map(|m| {
            let cfg = cfg.clone();
            let addr: std::net::SocketAddr =
                format!("{}:{}", m["host"].as_str().unwrap(), m["port"])
                    .parse()
                    .unwrap();
            let token =
                meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap())
                    .unwrap();
            async move { meridian_dgs::bot::run_bot(addr, &token, &cfg).await }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    let mut won = [false; 2];
    for (i, o) in outcomes.into_iter().enumerate() {
        let o = o.unwrap_or_else(|e| panic!("bot {i}: {e}"));
        match o.end {
            meridian_dgs::bot::BotEnd::Ended { winner_team, .. } => {
                won[i] = winner_team == Some(o.team)
            }
            other => panic!("bot {i}: {other:?}"),
        }
    }
    let sid = matches[0]["session_id"].as_str().unwrap().to_string();
    wait_for("session completed", Duration::from_secs(20), async || {
        let (_, list) = get(format!("{base}/admin/sessions?limit=10"), ADMIN_TOKEN).await;
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sid.as_str() && s["status"] == "completed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `won` follows stream completion order, so check the totals: one
    // match's XP and coins, granted once per player.
    let (mut xp, mut coins) = (0, 0);
    for (pid, token, _) in &players {
        let (_, prof) = get(format!("{base}/player/{pid}/profile"), token).await;
        assert_eq!(prof["stats"]["counters"]["matches_played"], 1, "{prof}");
        xp += prof["xp"].as_u64().unwrap();
        let (_, w) = get(format!("{base}/wallet/me"), token).await;
        coins += w["balances"]["coins"].as_i64().unwrap();
    }
    let winners = won.iter().filter(|w| **w).count() as u64;
    assert_eq!(xp, 2 * 50 + winners * 100);
    assert_eq!(coins, 2 * 10 + winners as i64 * 25);
}
