//! The Agones backend against a scripted Kubernetes API server (no cluster
//! can run here): an axum server that records each request kube-rs sends
//! and answers with recorded Agones `GameServerAllocation` responses —
//! Allocated, UnAllocated, Contention, HTTP 409 and 500. The allocated
//! "game server" is then played by the test through the node's SDK
//! endpoint, as an Agones game server would.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::Json;
use meridian_dgs::agones::{AgonesConfig, AgonesOrchestrator};
use meridian_dgs::game::MatchSpec;
use meridian_dgs::orchestrator::{
    AllocateError, FailureReason, Orchestrator, SessionReport, SessionStatus,
};
use meridian_dgs::refserver::sdk_post;
use meridian_dgs::token::TokenSigner;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const PATH: &str = "/apis/allocation.agones.dev/v1/namespaces/games/gameserverallocations";

#[derive(Default)]
struct Script {
    answers: VecDeque<(u16, Value)>,
    seen: Vec<(Method, String, Value)>,
}

type Shared = Arc<Mutex<Script>>;

async fn api(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    s.seen.push((method, uri.path().to_string(), body.clone()));
    let (code, mut answer) = s
        .answers
        .pop_front()
        .unwrap_or((500, status_error(500, "InternalError", "script exhausted")));
    if code == 201 {
        // The API server echoes the object with its status filled in.
        let mut obj = body;
        obj["metadata"]["name"] = json!("meridian-x7k2p");
        obj["status"] = answer["status"].take();
        answer = obj;
    }
    (StatusCode::from_u16(code).unwrap(), Json(answer))
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

/// Recorded Agones answers (shape of allocation.agones.dev/v1 status).
fn allocated(port: u16) -> (u16, Value) {
    (
        201,
        json!({"status": {"state": "Allocated", "gameServerName": "arena-fleet-abc12-xyz",
            "ports": [{"name": "metrics", "port": 9100}, {"name": "default", "port": port}],
            "address": "10.4.2.17",
            "addresses": [{"type": "InternalIP", "address": "10.4.2.17"}],
            "nodeName": "gke-pool-1-node-3", "source": "local"}}),
    )
}

fn state_only(state: &str) -> (u16, Value) {
    (201, json!({"status": {"state": state}}))
}

async fn start(
    answers: Vec<(u16, Value)>,
    tweak: impl FnOnce(&mut AgonesConfig),
) -> (AgonesOrchestrator, mpsc::Receiver<SessionReport>, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Script {
        answers: answers.into(),
        seen: Vec::new(),
    }));
    let app = axum::Router::new()
        .route(PATH, axum::routing::post(api))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = AgonesConfig {
        api_url: Some(format!("http://{addr}")),
        namespace: "games".into(),
        fleet: "arena-fleet".into(),
        required_labels: BTreeMap::from([("meridian.dev/region".into(), "eu-west".into())]),
        preferred_labels: vec![BTreeMap::from([("build".into(), "1.4.2".into())])],
        port_name: Some("default".into()),
        sdk_public_url: "http://meridian-eu-west.games.svc:39000".into(),
        sdk_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        health_interval_ms: 50,
        ..Default::default()
    };
    tweak(&mut cfg);
    let (o, rx) = AgonesOrchestrator::start(cfg, TokenSigner::random())
        .await
        .unwrap();
    (o, rx, shared)
}

fn spec(mode: &str) -> MatchSpec {
    MatchSpec {
        mode: mode.into(),
        teams: vec![vec![uuid::Uuid::new_v4()], vec![uuid::Uuid::new_v4()]],
    }
}

async fn report(rx: &mut mpsc::Receiver<SessionReport>) -> SessionReport {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a report in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_request_shape_and_session_through_the_sdk() {
    let (o, mut rx, seen) = start(vec![allocated(7604)], |_| {}).await;
    let s = spec("duel");
    let alloc = o.allocate(s.clone()).unwrap();
    assert_eq!((alloc.host.as_str(), alloc.port), ("10.4.2.17", 7604));
    assert_eq!(alloc.tokens.len(), 2);
    // What kube-rs sent.
    let (method, path, body) = seen.lock().unwrap().seen[0].clone();
    assert_eq!((method, path.as_str()), (Method::POST, PATH));
    assert_eq!(body["apiVersion"], "allocation.agones.dev/v1");
    assert_eq!(body["kind"], "GameServerAllocation");
    let sel = body["spec"]["selectors"].as_array().unwrap();
    assert_eq!(sel.len(), 2, "preferred then required: {body}");
    assert_eq!(
        sel[0]["matchLabels"],
        json!({"agones.dev/fleet": "arena-fleet", "meridian.dev/region": "eu-west", "build": "1.4.2"})
    );
    assert_eq!(
        sel[1]["matchLabels"],
        json!({"agones.dev/fleet": "arena-fleet", "meridian.dev/region": "eu-west"})
    );
    assert_eq!(sel[1]["gameServerState"], "Ready");
    assert_eq!(body["spec"]["scheduling"], "Packed");
    let meta = &body["spec"]["metadata"];
    assert_eq!(
        meta["labels"]["meridian.dev/session-id"],
        alloc.session_id.to_string()
    );
    assert_eq!(
        meta["annotations"]["meridian.dev/sdk-url"],
        "http://meridian-eu-west.games.svc:39000"
    );
    assert_eq!(meta["annotations"]["meridian.dev/mode"], "duel");
    let cred = meta["annotations"]["meridian.dev/sdk-token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(o.status(alloc.session_id), Some(SessionStatus::Allocated));

    // The game server (in the cluster) uses the SDK with the annotated credential.
    let sdk = o.sdk_addr();
    assert_eq!(
        sdk_post(sdk, "wrong", "/sdk/ready", &json!({}))
            .await
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        sdk_post(sdk, &cred, "/sdk/ready", &json!({}))
            .await
            .unwrap()
            .0,
        204
    );
    for (i, (player, token)) in alloc.tokens.iter().enumerate() {
        let (code, body) = sdk_post(
            sdk,
            &cred,
            "/sdk/player/connect",
            &json!({"token": token.to_base64(), "client_addr": format!("10.9.0.{}:5000", i + 1)}),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["player_id"], player.to_string());
    }
    assert_eq!(o.status(alloc.session_id), Some(SessionStatus::Running));
    let players: Vec<Value> = s
        .teams
        .iter()
        .flatten()
        .map(|p| json!({"player_id": p, "score": 30, "kills": 1}))
        .collect();
    let (code, _) = sdk_post(
        sdk,
        &cred,
        "/sdk/result",
        &json!({"winner_team": 1, "players": players}),
    )
    .await
    .unwrap();
    assert_eq!(code, 204);
    match report(&mut rx).await {
        SessionReport::Completed(r) => {
            assert_eq!(r.session_id, alloc.session_id);
            assert_eq!(r.winner_team, Some(1));
            assert!(r.players.iter().all(|p| p.connected && p.score == 30));
        }
        other => panic!("{other:?}"),
    }
    // Exactly once: the credential is dead, no second report.
    let (code, _) = sdk_post(
        sdk,
        &cred,
        "/sdk/result",
        &json!({"winner_team": 0, "players": []}),
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a second report"
    );
    assert_eq!(o.status(alloc.session_id), Some(SessionStatus::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unallocated_contention_409_and_500() {
    let (o, _rx, seen) = start(
        vec![
            state_only("UnAllocated"),
            state_only("Contention"),
            (
                409,
                status_error(409, "Conflict", "the object has been modified"),
            ),
            allocated(7001),
            (409, status_error(409, "Conflict", "c1")),
            state_only("Contention"),
            (409, status_error(409, "Conflict", "c3")),
            (500, status_error(500, "InternalError", "allocator down")),
        ],
        |c| c.contention_retries = 2,
    )
    .await;
    let n = || seen.lock().unwrap().seen.len();
    // UnAllocated: refused at once (no Ready server matched).
    match o.allocate(spec("duel")) {
        Err(AllocateError::Unavailable(m)) => assert!(m.contains("UnAllocated"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n(), 1);
    // Contention, 409, then Allocated: retried within contention_retries = 2.
    let a = o.allocate(spec("duel")).unwrap();
    assert_eq!(a.port, 7001);
    assert_eq!(n(), 4);
    // Three contentions in a row: 1 try + 2 retries, then refused.
    match o.allocate(spec("duel")) {
        Err(AllocateError::Unavailable(m)) => assert!(m.contains("contention after 3"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n(), 7);
    // 500: refused at once, not retried.
    match o.allocate(spec("duel")) {
        Err(AllocateError::Unavailable(m)) => assert!(m.contains("500"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n(), 8);
    // Invalid specs never reach the API server.
    let bad = MatchSpec {
        mode: "duel".into(),
        teams: vec![],
    };
    assert!(matches!(
        o.allocate(bad),
        Err(AllocateError::InvalidSpec(_))
    ));
    assert_eq!(n(), 8);
    assert_eq!(o.capacity().sessions_running, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_game_server_fails_its_session_and_capacity_edge() {
    let (o, mut rx, _) = start(vec![allocated(7002), allocated(7003)], |c| {
        c.ready_timeout_ms = 200;
        c.sessions_max = 1;
    })
    .await;
    let a = o.allocate(spec("duel")).unwrap();
    // At sessions_max: refused before asking the cluster.
    assert!(matches!(
        o.allocate(spec("duel")),
        Err(AllocateError::NoCapacity { sessions_max: 1 })
    ));
    match report(&mut rx).await {
        SessionReport::Failed {
            session_id, reason, ..
        } => {
            assert_eq!(session_id, a.session_id);
            assert_eq!(reason, FailureReason::Unhealthy);
        }
        other => panic!("{other:?}"),
    }
    // The slot is free again.
    assert_eq!(o.allocate(spec("duel")).unwrap().port, 7003);
}

#[tokio::test(flavor = "current_thread")]
async fn current_thread_runtime_is_an_error_not_a_panic() {
    let (o, _rx, seen) = start(vec![allocated(7004)], |_| {}).await;
    match o.allocate(spec("duel")) {
        Err(AllocateError::Unavailable(m)) => assert!(m.contains("multi-threaded"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(seen.lock().unwrap().seen.is_empty());
}

/// Agones backend against the loopback scripted API server: the cost of the
/// kube-rs request path and session registration only (a real cluster's
/// allocator adds its own latency). Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn allocation_latency_against_scripted_api() {
    let n = 1_000usize;
    let answers = (0..n)
        .map(|i| allocated(7000 + (i % 1000) as u16))
        .collect();
    let (o, _rx, _) = start(answers, |c| c.sessions_max = n).await;
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        let t = std::time::Instant::now();
        o.allocate(spec("duel")).unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    println!(
        "agones allocations (scripted loopback API): n={n} p50={}us p99={}us rate={:.0}/s",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        n as f64 / t0.elapsed().as_secs_f64()
    );
}

/// An `https` API server: kube-rs builds its TLS client on rustls with
/// aws-lc-rs (the only provider compiled in); an unreachable server is an
/// `Unavailable` allocation error, not a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_builds_on_aws_lc_rs_and_unreachable_is_unavailable() {
    let (o, _rx) = AgonesOrchestrator::start(
        AgonesConfig {
            api_url: Some(format!("https://127.0.0.1:{}", free_port())),
            fleet: "arena-fleet".into(),
            sdk_public_url: "http://node:39000".into(),
            sdk_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            allocate_timeout_ms: 2_000,
            ..Default::default()
        },
        TokenSigner::random(),
    )
    .await
    .expect("TLS client builds");
    match o.allocate(spec("duel")) {
        Err(AllocateError::Unavailable(m)) => assert!(!m.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(o.capacity().sessions_running, 0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
