//! Cross-region replication with three real `meridian` processes on
//! loopback (regions eu-west, us-east, ap-south): accounts, keys, profiles and
//! scores replicate; the economy's shards have a voter in each region, writes
//! anywhere are forwarded to the leader, and a Jepsen-style bank workload
//! survives a `kill -9` of the leader with money conserved and every
//! acknowledged transfer applied exactly once.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

/// The stated replication bound on loopback: a change is visible in every
/// region within this (push on change; anti-entropy every second).
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
const CLUSTER_WITHIN: Duration = Duration::from_secs(30);
const NAMES: [&str; 3] = ["eu-west", "us-east", "ap-south"];
const SHARDS: usize = 16;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Three regions, each seeding the ones started before it; the economy is
/// founded once all three see each other.
fn start_three(dir: &Path) -> Vec<Node> {
    let ca = dir.join("ca");
    let mut nodes: Vec<Node> = Vec::new();
    for name in NAMES {
        let seeds: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"{}\"", n.env("MERIDIAN_MESH_ADDR").unwrap()))
            .collect();
        let seeds = format!("[{}]", seeds.join(","));
        nodes.push(Node::start(
            &dir.join(name),
            &[
                ("MERIDIAN_REGION", name),
                ("MERIDIAN_NODE_NAME", name),
                ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
                ("MERIDIAN_MESH__SEEDS", &seeds),
                ("MERIDIAN_ECONOMY__BOOTSTRAP_EXPECT", "3"),
            ],
        ));
    }
    nodes
}

async fn shards(n: &Node) -> Option<Vec<Value>> {
    let resp = client()
        .get(format!("{}/admin/shards", n.url()))
        .header("authorization", bearer(ADMIN_TOKEN))
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    v["shards"].as_array().cloned()
}

/// Every shard has the three regions as voters and a leader among them.
async fn cluster_formed(n: &Node) -> bool {
    let Some(sh) = shards(n).await else {
        return false;
    };
    sh.len() == SHARDS
        && sh.iter().all(|s| {
            let mut v: Vec<&str> = s["voter_names"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            v.sort();
            v == ["ap-south", "eu-west", "us-east"]
                && s["leader"].as_u64().is_some_and(|l| {
                    s["voters"]
                        .as_array()
                        .is_some_and(|vs| vs.iter().any(|x| x.as_u64() == Some(l)))
                })
                && s["term"].as_u64().is_some_and(|t| t >= 1)
                && s["last_applied_index"].as_u64().is_some()
        })
}

/// The node name leading shard 0, as node `n` sees it.
async fn leader_of_shard0(n: &Node) -> Option<String> {
    let sh = shards(n).await?;
    let s = sh.first()?;
    let leader = s["leader"].as_u64()?;
    let voters = s["voters"].as_array()?;
    let names = s["voter_names"].as_array()?;
    voters
        .iter()
        .position(|v| v.as_u64() == Some(leader))
        .and_then(|i| names.get(i))
        .and_then(|n| n.as_str())
        .map(str::to_string)
}

async fn login(base: &str, username: &str, password: &str) -> (u16, Value) {
    let (s, _, b) = call(
        client()
            .post(format!("{base}/auth/login"))
            .json(&json!({"username": username, "password": password})),
    )
    .await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_registered_in_one_region_plays_and_pays_in_every_region() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_three(dir.path());
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let t = wait_for(
        "economy cluster with a voter per region",
        CLUSTER_WITHIN,
        async || cluster_formed(a).await && cluster_formed(c).await,
    )
    .await;
    eprintln!("economy cluster formed in {t:?}");

    // Registration in A, login in C from C's own replica.
    let reg = register(&a.url(), "wanderer", "correct horse battery").await;
    let me = reg["player_id"].as_str().unwrap().to_string();
    let token_a = reg["access_token"].as_str().unwrap().to_string();
    let t = wait_for("login in C", VISIBLE_WITHIN, async || {
        login(&c.url(), "wanderer", "correct horse battery").await.0 == 200
    })
    .await;
    eprintln!("registration visible for login in C after {t:?}");
    let (s, body) = login(&c.url(), "wanderer", "wrong password here").await;
    assert_eq!(s, 401, "{body}");
    // The name is taken everywhere.
    let (s, _, body) = call(
        client()
            .post(format!("{}/auth/register", b.url()))
            .json(&json!({"username": "wanderer", "password": "another long password"})),
    )
    .await;
    assert_eq!(s, 409, "{body}");

    // The same new name registered at once in two regions: the Raft name
    // directory lets exactly one win.
    let twin = |n: &Node| {
        client()
            .post(format!("{}/auth/register", n.url()))
            .json(&json!({"username": "twin", "password": "correct horse battery"}))
            .send()
    };
    let (ra, rc) = tokio::join!(twin(a), twin(c));
    let mut codes = [ra.unwrap().status().as_u16(), rc.unwrap().status().as_u16()];
    codes.sort();
    assert_eq!(codes, [201, 409], "one registration of a name wins");

    // A's token is accepted in C (A's public key replicated).
    let (s, _, body) = call(
        client()
            .get(format!("{}/player/me", c.url()))
            .header("authorization", bearer(&token_a)),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // A profile edit in A shows up in C.
    let (s, _, body) = call(
        client()
            .patch(format!("{}/player/me/profile", a.url()))
            .header("authorization", bearer(&token_a))
            .json(&json!({"display_name": "Wanderer of A"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let t = wait_for("profile edit in C", VISIBLE_WITHIN, async || {
        let (_, _, p) = call(
            client()
                .get(format!("{}/player/{me}/profile", c.url()))
                .header("authorization", bearer(&token_a)),
        )
        .await;
        p["display_name"] == "Wanderer of A"
    })
    .await;
    eprintln!("profile edit visible in C after {t:?}");

    // A score in A shows up in C and B.
    let (s, _, body) = call(
        client()
            .post(format!("{}/leaderboards/arena/scores", a.url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&json!({"player_id": me, "score": 4321})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for n in [c, b] {
        let t = wait_for("score in another region", VISIBLE_WITHIN, async || {
            let (_, _, top) =
                call(client().get(format!("{}/leaderboards/arena?limit=5", n.url()))).await;
            top["entries"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|x| x["player_id"] == me.as_str() && x["score"] == 4321)
            })
        })
        .await;
        eprintln!("score visible after {t:?}");
    }

    // Money anywhere: grant in C, buy in B, the same wallet in A.
    let (s, _, body) = call(
        client()
            .post(format!("{}/economy/grant", c.url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&json!({"player_id": me, "currency": "coins", "amount": 100,
                           "reason": "welcome", "idempotency_key": "welcome-1"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = call(
        client()
            .post(format!("{}/store/purchase", b.url()))
            .header("authorization", bearer(&token_a))
            .json(
                &json!({"item_id": "potion", "quantity": 2, "currency": "coins",
                           "idempotency_key": "buy-1"}),
            ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let coins = body["balances"]["coins"].as_i64().unwrap();
    assert!(coins < 100, "{body}");
    for n in &nodes {
        let (s, _, w) = call(
            client()
                .get(format!("{}/wallet/me", n.url()))
                .header("authorization", bearer(&token_a)),
        )
        .await;
        assert_eq!(s, 200, "{w}");
        assert_eq!(w["balances"]["coins"].as_i64(), Some(coins), "{w}");
    }
    // The same purchase retried in another region replays, charging once.
    let (s, _, body) = call(
        client()
            .post(format!("{}/store/purchase", c.url()))
            .header("authorization", bearer(&token_a))
            .json(
                &json!({"item_id": "potion", "quantity": 2, "currency": "coins",
                           "idempotency_key": "buy-1"}),
            ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["replayed"], true, "{body}");
    assert_eq!(body["balances"]["coins"].as_i64(), Some(coins));

    // Refresh-token reuse across regions: rotate in A, replay the old token
    // in C once the rotation replicated: the login is revoked everywhere.
    let r1 = reg["refresh_token"].as_str().unwrap().to_string();
    let (s, _, rot) = call(
        client()
            .post(format!("{}/auth/refresh", a.url()))
            .json(&json!({"refresh_token": r1})),
    )
    .await;
    assert_eq!(s, 200, "{rot}");
    let r2 = rot["refresh_token"].as_str().unwrap().to_string();
    // A later change from A visible in C means C applied the rotation too
    // (a peer's changes are pulled in version order).
    let (s, _, body) = call(
        client()
            .patch(format!("{}/player/me/profile", a.url()))
            .header("authorization", bearer(&token_a))
            .json(&json!({"display_name": "Rotated"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    wait_for("later edit in C", VISIBLE_WITHIN, async || {
        let (_, _, p) = call(
            client()
                .get(format!("{}/player/{me}/profile", c.url()))
                .header("authorization", bearer(&token_a)),
        )
        .await;
        p["display_name"] == "Rotated"
    })
    .await;
    let (s, _, b) = call(
        client()
            .post(format!("{}/auth/refresh", c.url()))
            .json(&json!({"refresh_token": r1})),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(error_code(&b), "refresh_token_reused");
    wait_for(
        "the whole login revoked in A too",
        VISIBLE_WITHIN,
        async || {
            let (s, _, _) = call(
                client()
                    .post(format!("{}/auth/refresh", a.url()))
                    .json(&json!({"refresh_token": r2})),
            )
            .await;
            s == 401
        },
    )
    .await;
}

/// One acknowledged transfer.
#[derive(Debug, Clone)]
struct Acked {
    from: usize,
    tx: String,
}

/// POST a transfer through the given node order, retrying the same key on
/// 503 and connection errors. Returns the receipt's transaction id, or None
/// when every attempt failed (outcome unknown; resolved at the end).
async fn transfer(
    urls: &[String],
    token: &str,
    to: &str,
    amount: i64,
    key: &str,
    attempts: usize,
) -> Result<Option<String>, String> {
    let http = client();
    for i in 0..attempts {
        let url = &urls[i % urls.len()];
        let resp = http
            .post(format!("{url}/economy/transfer"))
            .header("authorization", bearer(token))
            .json(
                &json!({"to_player_id": to, "currency": "coins", "amount": amount,
                           "idempotency_key": key}),
            )
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        // A connection error (a dead region) is retried on the next one.
        if let Ok(r) = resp {
            let s = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            match s {
                200 => return Ok(Some(b["transaction_id"].as_str().unwrap().to_string())),
                // Not enough money: a deterministic refusal, not an ack.
                422 => return Ok(None),
                503 => {}
                _ => return Err(format!("transfer {key}: {s} {b}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(None)
}

/// GET with retries while the economy answers 503 (a client's behaviour
/// during an election).
async fn get_retrying(url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _, b) = call(client().get(url).header("authorization", bearer(token))).await;
        if s == 200 {
            return b;
        }
        assert!(s == 503 && Instant::now() < deadline, "GET {url}: {s} {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn all_transactions(base: &str, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/transactions/me?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let b = get_retrying(&url, token).await;
        out.extend(b["transactions"].as_array().cloned().unwrap_or_default());
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_workload_survives_a_leader_kill_9() {
    const PLAYERS: usize = 6;
    const START: i64 = 1_000;
    const PER_WORKER: usize = 50;
    const WORKERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_three(dir.path());
    wait_for("economy cluster", CLUSTER_WITHIN, async || {
        cluster_formed(&nodes[0]).await
    })
    .await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();

    // Players registered in different regions, each granted START coins.
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let r = register(&urls[i % 3], &format!("bank{i}"), "correct horse battery").await;
        players.push((
            r["player_id"].as_str().unwrap().to_string(),
            r["access_token"].as_str().unwrap().to_string(),
        ));
    }
    for (i, (id, _)) in players.iter().enumerate() {
        let (s, _, b) = call(
            client()
                .post(format!("{}/economy/grant", urls[i % 3]))
                .header("authorization", bearer(SERVER_TOKEN))
                .json(
                    &json!({"player_id": id, "currency": "coins", "amount": START,
                               "reason": "bank", "idempotency_key": format!("seed-{i}")}),
                ),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }

    let leader = leader_of_shard0(&nodes[0]).await.expect("a leader");
    let victim = NAMES.iter().position(|n| *n == leader).unwrap();
    eprintln!("leader of shard 0: {leader}; it will be killed");

    // Workers: random transfers through every region; the leader dies mid-way.
    let players = std::sync::Arc::new(players);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let players = players.clone();
        let all = urls.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<Acked> = Vec::new();
            let mut unknown: Vec<(usize, usize, i64, String)> = Vec::new();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for k in 0..PER_WORKER {
                let from = (next() % PLAYERS as u64) as usize;
                let to = (from + 1 + (next() % (PLAYERS as u64 - 1)) as usize) % PLAYERS;
                let amount = 1 + (next() % 40) as i64;
                let key = format!("w{w}-{k}");
                // Every region, starting at a random one; a dead one is skipped
                // on the retry.
                let mut order = all.clone();
                let len = order.len() as u64;
                order.rotate_left((next() % len) as usize);
                match transfer(&order, &players[from].1, &players[to].0, amount, &key, 40).await {
                    Ok(Some(tx)) => acked.push(Acked { from, tx }),
                    Ok(None) => unknown.push((from, to, amount, key)),
                    Err(e) => panic!("{e}"),
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (acked, unknown)
        }));
    }
    // Kill the leader once about a third of the work is done.
    wait_for(
        "a third of the transfers",
        Duration::from_secs(60),
        async || done.load(std::sync::atomic::Ordering::Relaxed) >= WORKERS * PER_WORKER / 3,
    )
    .await;
    nodes[victim].kill9();
    eprintln!("killed {leader} after {:?}", started.elapsed());
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    for t in tasks {
        let (a, u) = t.await.unwrap();
        acked.extend(a);
        unknown.extend(u);
    }
    eprintln!(
        "{} transfers acknowledged, {} refused or unknown, in {:?}",
        acked.len(),
        unknown.len(),
        started.elapsed()
    );
    assert!(
        acked.len() >= WORKERS * PER_WORKER / 2,
        "too few acknowledged: {}",
        acked.len()
    );

    // The killed node comes back from its store and catches up.
    nodes[victim].spawn();
    wait_for(
        "the killed node back in every shard",
        CLUSTER_WITHIN,
        async || cluster_formed(&nodes[victim]).await,
    )
    .await;
    // Unknown outcomes: retrying the same key resolves them (applied once).
    for (from, to, amount, key) in &unknown {
        if let Some(tx) = transfer(&urls, &players[*from].1, &players[*to].0, *amount, key, 40)
            .await
            .unwrap()
        {
            acked.push(Acked { from: *from, tx });
        }
    }

    // Transfers cut mid-way by the kill leave holds (money in transit);
    // the shard leaders' recovery resolves them (commit or abort).
    let t = wait_for("no open transfer holds", CLUSTER_WITHIN, async || {
        for n in &nodes {
            let Some(sh) = shards(n).await else {
                return false;
            };
            if sh.iter().any(|s| s["open_holds"].as_u64() != Some(0)) {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("holds resolved {t:?} after the workload");
    // Invariants, read through every region.
    for url in &urls {
        let mut total = 0;
        for (id, token) in players.iter() {
            let w = get_retrying(&format!("{url}/wallet/me"), token).await;
            assert!(w["balances"].is_object(), "wallet of {id} via {url}: {w}");
            let coins = w["balances"]["coins"].as_i64().unwrap_or(0);
            assert!(coins >= 0, "negative balance {coins} for {id}");
            total += coins;
        }
        assert_eq!(
            total,
            START * PLAYERS as i64,
            "money not conserved (via {url})"
        );
    }
    let mut history: HashMap<usize, Vec<Value>> = HashMap::new();
    for (i, (_, token)) in players.iter().enumerate() {
        history.insert(i, all_transactions(&urls[i % 3], token).await);
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &acked {
        let n = history[&a.from]
            .iter()
            .filter(|t| t["id"] == a.tx.as_str())
            .count();
        assert_eq!(n, 1, "acknowledged transfer {} present {n} times", a.tx);
        *seen.entry(a.tx.as_str()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "one transaction id acknowledged twice"
    );
    // Each player's ledger explains its balance.
    for (i, (_, token)) in players.iter().enumerate() {
        let sum: i64 = history[&i]
            .iter()
            .filter(|t| t["currency_type"] == "coins" && t["status"] == "completed")
            .map(|t| t["amount"].as_i64().unwrap_or(0))
            .sum();
        let w = get_retrying(&format!("{}/wallet/me", urls[0]), token).await;
        assert_eq!(
            w["balances"]["coins"].as_i64().unwrap_or(0),
            sum,
            "ledger of player {i}"
        );
    }
}

/// `meridian drain` takes a region out of service without stopping it: its
/// voter seats move to the other regions (money keeps flowing), it keeps
/// answering reads, and the SIGTERM afterwards is quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_voter_seats_away_and_keeps_money_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_three(dir.path());
    wait_for("economy cluster", CLUSTER_WITHIN, async || {
        cluster_formed(&nodes[0]).await
    })
    .await;
    let reg = register(&nodes[0].url(), "drainee", "correct horse battery").await;
    let me = reg["player_id"].as_str().unwrap().to_string();
    let token = reg["access_token"].as_str().unwrap().to_string();

    wait_for(
        "the account in the region to drain",
        VISIBLE_WITHIN,
        async || {
            login(&nodes[2].url(), "drainee", "correct horse battery")
                .await
                .0
                == 200
        },
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["drain", "--via", &nodes[2].url(), "--wait-s", "60"])
        .env("MERIDIAN_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meridian drain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Not ready any more, but still serving reads.
    let (s, _, _) = call(client().get(format!("{}/readyz", nodes[2].url()))).await;
    assert_eq!(s, 503);
    let (s, _, p) = call(
        client()
            .get(format!("{}/player/{me}/profile", nodes[2].url()))
            .header("authorization", bearer(&token)),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    // No shard counts the drained region as a voter any more.
    for n in &nodes[..2] {
        let sh = shards(n).await.unwrap();
        assert!(
            sh.iter().all(|s| !s["voter_names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "ap-south")),
            "ap-south still a voter"
        );
    }
    // Money keeps flowing on the two remaining regions.
    let (s, _, b) = call(
        client()
            .post(format!("{}/economy/grant", nodes[1].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&json!({"player_id": me, "currency": "coins", "amount": 5,
                           "reason": "after drain", "idempotency_key": "d-1"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let t = Instant::now();
    assert_eq!(nodes[2].terminate(), Some(0));
    eprintln!("drained node stopped {:?} after SIGTERM", t.elapsed());
    let (s, _, w) = call(
        client()
            .get(format!("{}/wallet/me", nodes[0].url()))
            .header("authorization", bearer(&token)),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["balances"]["coins"], 5);
}

/// What a replica sends in reply to a pull (same field order as the node's).
#[derive(serde::Serialize)]
struct ForgedReply {
    epoch: u64,
    version: u64,
    more: bool,
    kv: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    leaderboards: Vec<u8>,
}

/// A mesh member with a valid cluster certificate but broken or hostile
/// replication: its malformed requests, garbage replies, oversized batches
/// and values that fail their merge rule are refused and counted; the node
/// keeps serving and its data is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_replication_is_refused_and_counted() {
    use meridian_mesh::{Mesh, MeshConfig, NodeMetadata};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let node = Node::start(
        &dir.path().join("eu-west"),
        &[
            ("MERIDIAN_REGION", "eu-west"),
            ("MERIDIAN_NODE_NAME", "eu-west"),
            ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
        ],
    );
    let reg = register(&node.url(), "steady", "correct horse battery").await;
    let me = reg["player_id"].as_str().unwrap().to_string();
    let token = reg["access_token"].as_str().unwrap().to_string();

    let certs = meridian_mesh::pki::ensure_dev_certs(&dir.path().join("rogue"), "rogue", Some(&ca))
        .unwrap();
    let mesh = Mesh::start(MeshConfig {
        node_name: "rogue".into(),
        region: "us-east".into(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        advertise_addr: None,
        seeds: vec![node.env("MERIDIAN_MESH_ADDR").unwrap().parse().unwrap()],
        certs,
        metadata: NodeMetadata {
            api_url: "http://rogue.invalid".into(),
            game_host: "127.0.0.1".into(),
            game_port: 0,
            beacon_addr: None,
            dgs_capacity: 0,
            load: 0.0,
            build_version: "rogue".into(),
            economy_cluster: 0,
            draining: false,
        },
        injected_rtt_by_region: Default::default(),
        incarnation: None,
    })
    .await
    .unwrap();
    // Its pull replies: garbage, too many keys, then values that fail their
    // merge rules (a profile that is not automerge, an account under another
    // player's key, an unknown prefix).
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let victim = me.clone();
    let c = calls.clone();
    mesh.register_rpc_handler(
        "sync.pull",
        std::sync::Arc::new(move |_from, _body: bytes::Bytes| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let victim = victim.clone();
            async move {
                let reply = match n % 3 {
                    0 => return Ok(bytes::Bytes::from_static(b"\xff\xff\xff garbage")),
                    1 => ForgedReply {
                        epoch: 7,
                        version: 1,
                        more: false,
                        kv: (0..5_000)
                            .map(|i| (format!("prof/{i}").into_bytes(), Some(vec![1])))
                            .collect(),
                        leaderboards: Vec::new(),
                    },
                    _ => ForgedReply {
                        epoch: 7,
                        version: 1,
                        more: false,
                        kv: vec![
                            (
                                format!("prof/{victim}").into_bytes(),
                                Some(b"not automerge".to_vec()),
                            ),
                            (
                                format!("acct/{victim}").into_bytes(),
                                Some(br#"{"player_id":"someone-else"}"#.to_vec()),
                            ),
                            (b"keys/sign/eu-west".to_vec(), Some(b"stolen".to_vec())),
                        ],
                        leaderboards: Vec::new(),
                    },
                };
                Ok(bytes::Bytes::from(postcard::to_allocvec(&reply).unwrap()))
            }
        }),
    );
    wait_for(
        "the node pulled from the rogue",
        Duration::from_secs(15),
        async || calls.load(std::sync::atomic::Ordering::Relaxed) >= 6,
    )
    .await;
    // Its requests to the node: malformed Raft RPCs, pulls and pokes.
    let client = mesh.client();
    for service in ["raft", "sync.pull"] {
        let r = client
            .rpc("eu-west", service, b"\x09\xff")
            .await;
        assert!(r.is_err(), "{service} accepted garbage");
    }
    let r = client
        .rpc("eu-west", "sync.poke", &vec![b'x'; 10_000])
        .await;
    assert!(r.is_err(), "oversized poke accepted");

    let (s, _, v) = call(
        client_http()
            .get(format!("{}/admin/replication", node.url()))
            .header("authorization", bearer(ADMIN_TOKEN)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["replies_refused"].as_u64().unwrap() >= 5, "{v}");
    assert!(v["changes_refused"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["changes_applied"].as_u64(), Some(0), "{v}");
    // The node is healthy and the player's data untouched.
    let (s, _, p) = call(
        client_http()
            .get(format!("{}/player/{me}/profile", node.url()))
            .header("authorization", bearer(&token)),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["username"], "steady");
    let (s, _, _) = call(client_http().get(format!("{}/readyz", node.url()))).await;
    assert_eq!(s, 200);
    mesh.shutdown().await;
}

fn client_http() -> reqwest::Client {
    client()
}
