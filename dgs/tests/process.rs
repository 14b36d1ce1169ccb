//! The Process backend against a tiny shell script standing in for a
//! headless game server (needs `sh` and `curl`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use meridian_dgs::game::MatchSpec;
use meridian_dgs::orchestrator::{
    AllocateError, FailureReason, FleetState, Orchestrator, SessionReport, SessionStatus,
};
use meridian_dgs::process::{ProcessConfig, ProcessOrchestrator};
use meridian_dgs::token::TokenSigner;
use tokio::sync::mpsc;

const SCRIPT: &str = r#"#!/bin/sh
DIR="$1"
post() {
  data="$2"; [ -z "$data" ] && data='{}'
  curl -s -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $MERIDIAN_SDK_TOKEN" -H 'content-type: application/json' \
    --data "$data" "$MERIDIAN_SDK_URL$1"
}
post /sdk/ready >/dev/null
case "$MERIDIAN_MODE" in
  crash) exit 3 ;;
  hang) sleep 30; exit 0 ;;
esac
F="$DIR/$MERIDIAN_SESSION_ID"
i=0
while [ ! -f "$F.tokens" ] && [ $i -lt 200 ]; do
  sleep 0.05; i=$((i+1)); post /sdk/health >/dev/null
done
while read -r tok addr; do
  post /sdk/player/connect "{\"token\":\"$tok\",\"client_addr\":\"$addr\"}" >> "$F.codes"
  echo >> "$F.codes"
done < "$F.tokens"
lines=""
for pt in $(echo "$MERIDIAN_PLAYERS" | tr ',' ' '); do
  lines="$lines{\"player_id\":\"${pt%%:*}\",\"score\":100,\"kills\":1},"
done
echo "port $MERIDIAN_GAME_PORT" >> "$F.codes"
echo "result $(post /sdk/result "{\"winner_team\":0,\"players\":[${lines%,}]}")" >> "$F.codes"
echo "again $(post /sdk/result '{"winner_team":0,"players":[]}')" >> "$F.codes"
exit 0
"#;

async fn start(
    dir: &Path,
    tweak: impl FnOnce(&mut ProcessConfig),
) -> (
    ProcessOrchestrator,
    mpsc::Receiver<SessionReport>,
    TokenSigner,
) {
    let script = dir.join("server.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = ProcessConfig::new(&script);
    cfg.args = vec![dir.display().to_string()];
    cfg.health_interval_ms = 50;
    cfg.port_range_start = 41_000;
    cfg.port_range_end = 41_010;
    tweak(&mut cfg);
    let signer = TokenSigner::random();
    let (o, rx) = ProcessOrchestrator::start(cfg, signer.clone())
        .await
        .unwrap();
    (o, rx, signer)
}

fn spec(mode: &str) -> MatchSpec {
    MatchSpec {
        mode: mode.into(),
        teams: vec![vec![uuid::Uuid::new_v4()], vec![uuid::Uuid::new_v4()]],
    }
}

async fn report(rx: &mut mpsc::Receiver<SessionReport>) -> SessionReport {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a report in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_server_validates_tokens_and_reports_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, mut rx, signer) = start(dir.path(), |_| {}).await;
    let s = spec("duel");
    let a = orch.allocate(s.clone()).unwrap();
    assert_eq!(a.port, 41_000);
    let other = orch.allocate(spec("hang")).unwrap();
    assert_eq!(other.port, 41_001);
    let t0 = a.tokens[0].1.to_base64();
    let t1 = a.tokens[1].1.to_base64();
    let forged = TokenSigner::random()
        .issue(a.session_id, s.teams[0][0], u64::MAX)
        .to_base64();
    let wrong_session = other.tokens[0].1.to_base64();
    let stranger = signer
        .issue(a.session_id, uuid::Uuid::new_v4(), u64::MAX)
        .to_base64();
    let lines = format!(
        "{t0} 127.0.0.1:5000\n{t0} 127.0.0.1:5001\n{t1} 127.0.0.1:5002\n{forged} 127.0.0.1:5003\n{wrong_session} 127.0.0.1:5004\n{stranger} 127.0.0.1:5005\n"
    );
    let base = dir.path().join(a.session_id.to_string());
    std::fs::write(base.with_extension("tmp"), lines).unwrap();
    std::fs::rename(base.with_extension("tmp"), base.with_extension("tokens")).unwrap();

    let r = report(&mut rx).await;
    let SessionReport::Completed(result) = r else {
        panic!("expected a result: {r:?}")
    };
    assert_eq!(result.session_id, a.session_id);
    assert_eq!(result.winner_team, Some(0));
    assert_eq!(result.players.len(), 2);
    assert!(result.players.iter().all(|p| p.score == 100 && p.connected));
    let codes = std::fs::read_to_string(base.with_extension("codes")).unwrap();
    assert_eq!(
        codes,
        "200\n403\n200\n403\n403\n403\nport 41000\nresult 204\nagain 409\n"
    );
    assert_eq!(orch.status(a.session_id), Some(SessionStatus::Completed));
    // The hanging one is still there; drain kills it at the deadline.
    orch.drain(Duration::from_millis(200));
    assert_eq!(
        orch.allocate(spec("duel")).unwrap_err(),
        AllocateError::Draining
    );
    let r = report(&mut rx).await;
    assert!(matches!(
        r,
        SessionReport::Failed {
            reason: FailureReason::DrainDeadline,
            ..
        }
    ));
    tokio::time::timeout(Duration::from_secs(5), orch.drained())
        .await
        .unwrap();
    assert_eq!(orch.capacity().state, FleetState::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_silence_fail_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, mut rx, _) = start(dir.path(), |c| c.health_timeout_ms = 300).await;
    let crash = orch.allocate(spec("crash")).unwrap();
    let r = report(&mut rx).await;
    assert_eq!(r.session_id(), crash.session_id);
    assert!(matches!(
        r,
        SessionReport::Failed {
            reason: FailureReason::Crashed,
            ..
        }
    ));
    let hang = orch.allocate(spec("hang")).unwrap();
    let r = report(&mut rx).await;
    assert_eq!(r.session_id(), hang.session_id);
    assert!(matches!(
        r,
        SessionReport::Failed {
            reason: FailureReason::Unhealthy,
            ..
        }
    ));
    assert_eq!(orch.capacity().sessions_running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_rejects_unknown_credentials_and_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, _rx, _) = start(dir.path(), |c| {
        c.sessions_max = 1;
    })
    .await;
    let sdk: SocketAddr = orch.sdk_addr();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{sdk}{p}");
    let r = http.post(url("/sdk/ready")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(url("/sdk/result"))
        .bearer_auth("nope")
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let big = vec![b'x'; meridian_dgs::process::SDK_BODY_BYTES_MAX + 1];
    let r = http
        .post(url("/sdk/player/connect"))
        .bearer_auth("nope")
        .body(big)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    // Capacity edge: one session max.
    orch.allocate(spec("hang")).unwrap();
    assert_eq!(
        orch.allocate(spec("hang")).unwrap_err(),
        AllocateError::NoCapacity { sessions_max: 1 }
    );
}

#[tokio::test]
async fn missing_executable_is_a_spawn_error() {
    let mut cfg = ProcessConfig::new("/nonexistent/meridian-game-server");
    cfg.sdk_bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let (orch, _rx) = ProcessOrchestrator::start(cfg, TokenSigner::random())
        .await
        .unwrap();
    assert!(matches!(
        orch.allocate(spec("duel")),
        Err(AllocateError::Spawn(_))
    ));
    assert_eq!(orch.capacity().sessions_running, 0);
}

/// Process backend: allocation (fork/exec) latency, allocations/s, and
/// allocate → `/sdk/ready` latency, with the shell-script server (curl).
/// Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn allocation_latency() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100usize;
    let (orch, _rx, _) = start(dir.path(), |c| {
        c.sessions_max = n;
        c.port_range_end = c.port_range_start + n as u16;
    })
    .await;
    let mut alloc = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut ready = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let t0 = std::time::Instant::now();
    let mut started = Vec::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        let a = orch.allocate(spec("hang")).unwrap();
        alloc.record(t.elapsed().as_micros() as u64).unwrap();
        started.push((a.session_id, t));
    }
    let spawn_total = t0.elapsed();
    let mut pending = started;
    while !pending.is_empty() {
        pending.retain(|(sid, t)| {
            if orch.status(*sid) == Some(SessionStatus::Running) {
                ready.record(t.elapsed().as_micros() as u64).unwrap();
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "process allocations: n={n} allocate p50={}us p99={}us rate={:.0}/s; allocate->ready p50={}ms p99={}ms",
        alloc.value_at_quantile(0.5),
        alloc.value_at_quantile(0.99),
        n as f64 / spawn_total.as_secs_f64(),
        ready.value_at_quantile(0.5) / 1000,
        ready.value_at_quantile(0.99) / 1000,
    );
    orch.drain(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(30), orch.drained())
        .await
        .unwrap();
}
