//! In-place blue/green upgrade: `meridian up --takeover` replaces a running
//! node on the same data dir and port while clients keep their load on it.
//! Real processes, real binary: every request is counted (no client-side
//! retries), every acknowledged purchase must be in the ledger afterwards,
//! a match running at the takeover must finish, old tokens must still work.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKERS: usize = 12;
const GRANT: i64 = 1_000_000;

/// Start `meridian up --takeover` with the node's settings (and `extra` on top).
fn spawn_takeover(node: &Node, extra: &[(&str, &str)], http: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let region = node.env("MERIDIAN_REGION").unwrap_or("eu-west").to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meridian"));
    cmd.args([
        "up",
        "--takeover",
        "--region",
        &region,
        "--log-format",
        "json",
    ])
    .args(["--http", http])
    .arg("--data-dir")
    .arg(&node.data_dir)
    .env_remove("MERIDIAN_LOG")
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in &node.envs {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn meridian up --takeover")
}

async fn healthz(base: &str) -> Option<Value> {
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

#[derive(Default)]
struct Record {
    ok: u64,
    failures: Vec<String>,
    /// (start, end) of every answered request.
    spans: Vec<(Instant, Instant)>,
    /// (worker, transaction id) of every acknowledged purchase.
    purchases: Vec<(usize, String)>,
}

struct Player {
    id: String,
    token: String,
}

async fn device(base: &str, name: &str) -> Player {
    let (s, _, b) = call(
        client()
            .post(format!("{base}/auth/device"))
            .json(&json!({ "device_id": name })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    Player {
        id: b["player_id"].as_str().unwrap().into(),
        token: b["access_token"].as_str().unwrap().into(),
    }
}

/// One closed-loop player on its own keep-alive client: profile read and
/// edit, score submit, purchase and consume, each with its own key.
async fn worker(
    w: usize,
    base: String,
    me: Player,
    others: Vec<String>,
    stop: Arc<AtomicBool>,
    rec: Arc<Mutex<Record>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let other = &others[n as usize % others.len()];
        let steps: Vec<(&str, reqwest::RequestBuilder)> = vec![
            (
                "profile_read",
                http.get(format!("{base}/player/{other}/profile"))
                    .bearer_auth(&me.token),
            ),
            (
                "profile_edit",
                http.patch(format!("{base}/player/me/profile"))
                    .bearer_auth(&me.token)
                    .json(&json!({"settings": {"n": n}})),
            ),
            (
                "score",
                http.post(format!("{base}/leaderboards/arena/scores"))
                    .bearer_auth(SERVER_TOKEN)
                    .json(&json!({"player_id": me.id, "score": n})),
            ),
            (
                "purchase",
                http.post(format!("{base}/store/purchase"))
                    .bearer_auth(&me.token)
                    .json(
                        &json!({"item_id": "potion", "quantity": 1, "currency": "coins",
                                  "idempotency_key": format!("w{w}-{n}")}),
                    ),
            ),
        ];
        for (op, req) in steps {
            let start = Instant::now();
            let res = req.send().await;
            let (status, body) = match res {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => {
                    let mut r = rec.lock().unwrap();
                    r.failures
                        .push(format!("{op} w{w}#{n}: transport error: {e:?}"));
                    continue;
                }
            };
            let end = Instant::now();
            let stack = {
                let mut r = rec.lock().unwrap();
                r.spans.push((start, end));
                if !(200..300).contains(&status) {
                    r.failures.push(format!("{op} w{w}#{n}: {status} {body}"));
                    continue;
                }
                r.ok += 1;
                if op != "purchase" {
                    continue;
                }
                r.purchases
                    .push((w, body["transaction_id"].as_str().unwrap_or("").to_string()));
                body["items"][0]["id"].as_str().unwrap_or("").to_string()
            };
            {
                // Use it, so the stack stays under its limit.
                let start = Instant::now();
                let res = match http
                    .post(format!("{base}/inventory/me/items/{stack}/consume"))
                    .bearer_auth(&me.token)
                    .json(&json!({"quantity": 1, "idempotency_key": format!("w{w}-{n}-use")}))
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        Ok((status, body))
                    }
                    Err(e) => Err(e),
                };
                let mut r = rec.lock().unwrap();
                match res {
                    Ok((status, _)) if status.is_success() => {
                        r.ok += 1;
                        r.spans.push((start, Instant::now()));
                    }
                    Ok((status, body)) => r
                        .failures
                        .push(format!("consume w{w}#{n}: {status} {body}")),
                    Err(e) => r
                        .failures
                        .push(format!("consume w{w}#{n}: transport error: {e:?}")),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        dir.path(),
        &[
            ("MERIDIAN_RELEASE", "0.1.0"),
            ("MERIDIAN_DGS__MATCH_DURATION_S", "4"),
            ("MERIDIAN_TAKEOVER__CLOSE_WINDOW_MS", "500"),
        ],
    );
    let base = node.url();
    let blue_pid = node.child.as_ref().unwrap().id();
    let h = healthz(&base).await.unwrap();
    assert_eq!(h["release"], "0.1.0", "{h}");

    // Players with coins.
    let mut players = Vec::new();
    for i in 0..WORKERS {
        let p = device(&base, &format!("upgrade-device-{i}")).await;
        let (s, _, b) = call(
            client()
                .post(format!("{base}/economy/grant"))
                .bearer_auth(SERVER_TOKEN)
                .json(
                    &json!({"player_id": p.id, "currency": "coins", "amount": GRANT,
                              "reason": "test", "idempotency_key": format!("grant-{i}")}),
                ),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        players.push(p);
    }
    let ids: Vec<String> = players.iter().map(|p| p.id.clone()).collect();
    let tokens: Vec<String> = players.iter().map(|p| p.token.clone()).collect();

    // A duel that is running when the takeover starts.
    let duelists = [
        device(&base, "duel-device-a").await,
        device(&base, "duel-device-b").await,
    ];
    let mut tickets = Vec::new();
    for d in &duelists {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/matchmaking/join"))
                .bearer_auth(&d.token)
                .json(&json!({"game_mode": "duel", "latencies": {"eu-west": 20.0}})),
        )
        .await;
        assert_eq!(s, 202, "{b}");
        tickets.push(b["ticket_id"].as_str().unwrap().to_string());
    }
    let mut assignments = Vec::new();
    for (d, t) in duelists.iter().zip(&tickets) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (s, _, b) = call(
                client()
                    .get(format!("{base}/matchmaking/status?ticket_id={t}"))
                    .bearer_auth(&d.token),
            )
            .await;
            assert_eq!(s, 200, "{b}");
            if b["status"] == "matched" {
                assignments.push(b["match"].clone());
                break;
            }
            assert!(Instant::now() < deadline, "duel not matched: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let bot_cfg = meridian_dgs::bot::BotConfig {
        arena: meridian_dgs::arena::ArenaConfig {
            duration_s: 4.0,
            ..Default::default()
        },
        match_timeout_ms: 30_000,
        ..Default::default()
    };
    let mut bots = Vec::new();
    for m in &assignments {
        let addr: std::net::SocketAddr = format!("{}:{}", m["host"].as_str().unwrap(), m["port"])
            .parse()
            .unwrap();
        let token =
            meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap()).unwrap();
        let cfg = bot_cfg.clone();
        bots.push(tokio::spawn(async move {
            meridian_dgs::bot::run_bot(addr, &token, &cfg).await
        }));
    }

    // Load, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let rec = Arc::new(Mutex::new(Record::default()));
    let mut workers = Vec::new();
    for (w, p) in players.into_iter().enumerate() {
        workers.push(tokio::spawn(worker(
            w,
            base.clone(),
            p,
            ids.clone(),
            stop.clone(),
            rec.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The takeover: a new release on the same data dir and port.
    let green_log = dir.path().join("green.log");
    let t0 = Instant::now();
    let http = node.addr.to_string();
    let mut green = spawn_takeover(&node, &[("MERIDIAN_RELEASE", "0.2.0")], &http, &green_log);
    let green_pid = green.id();
    let deadline = Instant::now() + Duration::from_secs(40);
    let blue_status = loop {
        if let Some(s) = node.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        if let Some(s) = green.try_wait().unwrap() {
            panic!(
                "the new node exited ({s}); log:\n{}\nold node log:\n{}",
                std::fs::read_to_string(&green_log).unwrap_or_default(),
                node.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the old node did not exit; log:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let blue_exit = t0.elapsed();
    assert!(blue_status.success(), "old node exit: {blue_status}");
    let switched = loop {
        if let Some(h) = healthz(&base).await {
            if h["release"] == "0.2.0" {
                break t0.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "the new release never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Keep the load on the new process for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(green.try_wait().unwrap().is_none(), "the new node died");
    assert!(
        !std::path::Path::new(&format!("/proc/{blue_pid}")).exists(),
        "old pid {blue_pid} still exists"
    );

    // Zero failed requests, and what clients saw.
    let rec = std::mem::take(&mut *rec.lock().unwrap());
    let mut spans = rec.spans.clone();
    spans.sort_by_key(|s| s.1);
    let max_latency = spans.iter().map(|(a, b)| *b - *a).max().unwrap();
    let gap = spans
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    let after_t0 = spans.iter().filter(|(a, _)| *a >= t0).count();
    eprintln!(
        "takeover: {} ok requests ({} started after the takeover began), {} failed; \
         old node exited after {blue_exit:?}, new release answered after {switched:?}; \
         longest gap between answers {gap:?}, max request latency {max_latency:?}",
        rec.ok,
        after_t0,
        rec.failures.len()
    );
    assert!(
        rec.failures.is_empty(),
        "{} failed requests: {:#?}\nold node log:\n{}",
        rec.failures.len(),
        &rec.failures[..rec.failures.len().min(20)],
        node.log_tail()
    );
    assert!(rec.ok > 200, "too little load: {}", rec.ok);
    assert!(
        spans.iter().any(|(a, _)| *a > t0 + switched),
        "no request served by the new node"
    );

    // The new process serves, with the new release, on the same port.
    let h = healthz(&base).await.unwrap();
    assert_eq!(
        (h["release"].as_str(), h["status"].as_str()),
        (Some("0.2.0"), Some("ok"))
    );
    let green_text = std::fs::read_to_string(&green_log).unwrap();
    assert!(green_text.contains("takeover complete"), "{green_text}");
    assert!(
        green_text.contains(&format!("\"old_pid\":{blue_pid}")),
        "green log does not name the old pid"
    );
    let _ = green_pid;

    // The match that ran across the takeover finished and was applied.
    for b in bots {
        let o = b.await.unwrap().expect("duel bot");
        assert!(
            matches!(o.end, meridian_dgs::bot::BotEnd::Ended { .. }),
            "duel did not end: {:?}",
            o.end
        );
    }
    for d in &duelists {
        let (s, _, prof) = call(
            client()
                .get(format!("{base}/player/{}/profile", d.id))
                .bearer_auth(&d.token),
        )
        .await;
        assert_eq!(s, 200, "old token refused: {prof}");
        assert_eq!(
            prof["stats"]["counters"]["matches_played"], 1,
            "duel result not applied: {prof}"
        );
    }

    // Every acknowledged purchase is in the ledger; balances add up; the
    // tokens issued by the old process still work.
    for (w, token) in tokens.iter().enumerate() {
        let mine: Vec<&String> = rec
            .purchases
            .iter()
            .filter(|(pw, _)| *pw == w)
            .map(|(_, id)| id)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{base}/transactions/me?limit=100&cursor={c}"),
                None => format!("{base}/transactions/me?limit=100"),
            };
            let (s, _, page) = call(client().get(url).bearer_auth(token)).await;
            assert_eq!(s, 200, "worker {w}: {page}");
            for t in page["transactions"].as_array().unwrap() {
                if t["kind"] == "purchase" {
                    seen.insert(t["id"].as_str().unwrap().to_string());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        for id in &mine {
            assert!(seen.contains(*id), "worker {w}: purchase {id} lost");
        }
        assert_eq!(seen.len(), mine.len(), "worker {w}: purchases");
        let (s, _, wallet) =
            call(client().get(format!("{base}/wallet/me")).bearer_auth(token)).await;
        assert_eq!(s, 200);
        assert_eq!(
            wallet["balances"]["coins"],
            GRANT - 10 * mine.len() as i64,
            "worker {w}: {wallet}"
        );
    }

    // Stop the new node cleanly.
    unsafe { libc::kill(green.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = green.try_wait().unwrap() {
            assert!(s.success(), "new node exit: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "new node did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--takeover` with no node on the data dir: a clear error and exit code 3,
/// nothing started (also with a stale socket file left by a killed node).
#[test]
fn takeover_without_a_running_node_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([
                "up",
                "--takeover",
                "--region",
                "eu-west",
                "--log-format",
                "text",
            ])
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir)
            .env(
                "MERIDIAN_REGIONS_DIR",
                repo_root().join("regions").display().to_string(),
            )
            .env("MERIDIAN_MESH__ENABLED", "false")
            .env_remove("MERIDIAN_LOG")
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(dir.path());
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no running node to take over"), "{err}");
    assert!(err.contains("no takeover socket"), "{err}");
    assert!(!dir.path().join("store").exists(), "a store was created");
    // A stale socket (its node was killed): nobody listens.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("takeover.sock")).unwrap());
    let (code, err) = run(dir.path());
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("stale socket"), "{err}");
}

/// A takeover that cannot work is refused before the running node gives
/// anything up: it keeps serving, with its release.
#[tokio::test]
async fn refused_takeover_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[("MERIDIAN_RELEASE", "0.1.0")]);
    let base = node.url();
    // Another HTTP address: a takeover keeps the address.
    let other = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("green.log");
    let mut green = spawn_takeover(&node, &[("MERIDIAN_RELEASE", "0.2.0")], &other, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = green.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "refused takeover did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(4), "{text}");
    assert!(
        text.contains("refused") && text.contains("keeps the address"),
        "{text}"
    );
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let h = healthz(&base).await.unwrap();
    assert_eq!(h["release"], "0.1.0");
    let p = device(&base, "after-refusal").await;
    assert!(!p.token.is_empty());
}

/// The new process dies in the middle of a takeover (during the close
/// window): the running node aborts, keeps serving with keep-alive again,
/// and a later takeover still works.
#[tokio::test]
async fn a_takeover_whose_new_process_dies_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        dir.path(),
        &[
            ("MERIDIAN_RELEASE", "0.1.0"),
            ("MERIDIAN_TAKEOVER__CLOSE_WINDOW_MS", "3000"),
        ],
    );
    let base = node.url();
    let http = node.addr.to_string();
    let log = dir.path().join("green.log");
    let mut green = spawn_takeover(&node, &[("MERIDIAN_RELEASE", "0.2.0")], &http, &log);
    // Wait for the close window: responses now say `Connection: close`.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        if r.headers().get("connection").is_some_and(|v| v == "close") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no close window; log:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    green.kill().unwrap();
    green.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&node.log)
        .unwrap()
        .contains("takeover aborted")
    {
        assert!(
            Instant::now() < deadline,
            "no abort; log:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["release"], "0.1.0");
    let p = device(&base, "after-abort-device").await;
    // A later takeover works.
    let mut green = spawn_takeover(&node, &[("MERIDIAN_RELEASE", "0.2.0")], &http, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = healthz(&base).await {
            if h["release"] == "0.2.0" {
                break;
            }
        }
        assert!(
            green.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "second takeover did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _, me) = call(
        client()
            .get(format!("{base}/player/me"))
            .bearer_auth(&p.token),
    )
    .await;
    assert_eq!(s, 200, "{me}");
    let _ = green.kill();
    let _ = green.wait();
}
