//! Cross-region replication with three real `meridian` processes on
//! loopback (regions eu-west, us-east, ap-south): accounts, keys, profiles and
//! scores replicate; the economy's shards have a voter in each region, writes
//! anywhere are forwarded to the leader, and a Jepsen-style bank workload
//! survives a `kill -9` of the leader with money conserved and every
//! acknowledged transfer applied exactly once.

mod common;
use common::bank::{wait_no_holds, Bank};
use common::*;
use serde_json::{json, Value};
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
    start_three_with(dir, &[])
}

fn start_three_with(dir: &Path, extra: &[(&str, &str)]) -> Vec<Node> {
    let ca = dir.join("ca");
    let mut nodes: Vec<Node> = Vec::new();
    for name in NAMES {
        let seeds: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"{}\"", n.env("MERIDIAN_MESH_ADDR").unwrap()))
            .collect();
        let seeds = format!("[{}]", seeds.join(","));
        let mut env = vec![
            ("MERIDIAN_REGION", name),
            ("MERIDIAN_NODE_NAME", name),
            ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
            ("MERIDIAN_MESH__SEEDS", &seeds),
            ("MERIDIAN_ECONOMY__BOOTSTRAP_EXPECT", "3"),
        ];
        env.extend_from_slice(extra);
        nodes.push(Node::start(&dir.join(name), &env));
    }
    nodes
}

async fn shards(n: &Node) -> Option<Vec<Value>> {
    common::bank::shards(&n.url()).await
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
    common::bank::leader_name(&n.url(), 0).await
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
    let (s, _, body) = call_retrying(|| {
        client()
            .post(format!("{}/economy/grant", c.url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&json!({"player_id": me, "currency": "coins", "amount": 100,
                           "reason": "welcome", "idempotency_key": "welcome-1"}))
    })
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = call_retrying(|| {
        client()
            .post(format!("{}/store/purchase", b.url()))
            .header("authorization", bearer(&token_a))
            .json(
                &json!({"item_id": "potion", "quantity": 2, "currency": "coins",
                           "idempotency_key": "buy-1"}),
            )
    })
    .await;
    assert_eq!(s, 200, "{body}");
    let coins = body["balances"]["coins"].as_i64().unwrap();
    assert!(coins < 100, "{body}");
    for n in &nodes {
        let (s, _, w) = call_retrying(|| {
            client()
                .get(format!("{}/wallet/me", n.url()))
                .header("authorization", bearer(&token_a))
        })
        .await;
        assert_eq!(s, 200, "{w}");
        assert_eq!(w["balances"]["coins"].as_i64(), Some(coins), "{w}");
    }
    // The same purchase retried in another region replays, charging once.
    let (s, _, body) = call_retrying(|| {
        client()
            .post(format!("{}/store/purchase", c.url()))
            .header("authorization", bearer(&token_a))
            .json(
                &json!({"item_id": "potion", "quantity": 2, "currency": "coins",
                           "idempotency_key": "buy-1"}),
            )
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_workload_survives_a_leader_kill_9() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_three(dir.path());
    wait_for("economy cluster", CLUSTER_WITHIN, async || {
        cluster_formed(&nodes[0]).await
    })
    .await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let bank = Bank::open(&urls, 6, 1_000).await;
    let leader = leader_of_shard0(&nodes[0]).await.expect("a leader");
    let victim = NAMES.iter().position(|n| *n == leader).unwrap();

    // Random transfers through every region; the leader dies mid-way.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks = bank.run(&urls, WORKERS, PER_WORKER, done.clone());
    wait_for(
        "a third of the transfers",
        Duration::from_secs(60),
        async || done.load(std::sync::atomic::Ordering::Relaxed) >= WORKERS * PER_WORKER / 3,
    )
    .await;
    nodes[victim].kill9();
    eprintln!("killed the leader {leader} after {:?}", started.elapsed());
    let acked = bank.finish(tasks, &urls).await;
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
    let t = wait_no_holds(&urls, CLUSTER_WITHIN).await;
    eprintln!("holds resolved {t:?} after the workload");
    bank.check(&urls, &acked).await;
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
    let (s, _, b) = call_retrying(|| {
        client()
            .post(format!("{}/economy/grant", nodes[1].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&json!({"player_id": me, "currency": "coins", "amount": 5,
                           "reason": "after drain", "idempotency_key": "d-1"}))
    })
    .await;
    assert_eq!(s, 200, "{b}");
    let t = Instant::now();
    assert_eq!(nodes[2].terminate(), Some(0));
    eprintln!("drained node stopped {:?} after SIGTERM", t.elapsed());
    let (s, _, w) = call_retrying(|| {
        client()
            .get(format!("{}/wallet/me", nodes[0].url()))
            .header("authorization", bearer(&token))
    })
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
        let r = client.rpc("eu-west", service, b"\x09\xff").await;
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
    // ...and the connection to the rogue was cut each time.
    let (s, _, m) = call(
        client_http()
            .get(format!("{}/admin/mesh", node.url()))
            .header("authorization", bearer(ADMIN_TOKEN)),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert!(
        m["stats"]["connections_dropped_for_violation"]
            .as_u64()
            .unwrap()
            >= 3,
        "{m}"
    );
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

/// A shard's leadership follows its writes: when most of them come in at
/// another region, the leader hands the shard over to that region's voter
/// (no write is lost; writes elsewhere are forwarded to the new leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_leadership_moves_to_the_region_where_writes_come_in() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_three_with(
        dir.path(),
        &[
            ("MERIDIAN_ECONOMY__LEADER_BALANCE_INTERVAL_S", "2"),
            ("MERIDIAN_ECONOMY__LEADER_BALANCE_MIN_WRITES", "20"),
        ],
    );
    wait_for("economy cluster", CLUSTER_WITHIN, async || {
        cluster_formed(&nodes[0]).await
    })
    .await;
    let reg = register(&nodes[0].url(), "faraway", "correct horse battery").await;
    let me = reg["player_id"].as_str().unwrap().to_string();
    // Which shard holds this player, and who leads it.
    let leader_of_player = async |n: &Node| -> Option<String> {
        common::bank::leader_name(&n.url(), shard_of_player(&me)).await
    };
    let before = leader_of_player(&nodes[0]).await.expect("a leader");
    // All writes come in at a region that does not lead the shard.
    let home = NAMES.iter().position(|n| *n != before).unwrap();
    let token = reg["access_token"].as_str().unwrap().to_string();
    wait_for(
        "the account in the writes' region",
        VISIBLE_WITHIN,
        async || {
            let (s, _, _) = call(
                client()
                    .get(format!("{}/player/me", nodes[home].url()))
                    .header("authorization", bearer(&token)),
            )
            .await;
            s == 200
        },
    )
    .await;
    let mut k = 0;
    let t = std::time::Instant::now();
    wait_for(
        "leadership moved to the writes' region",
        Duration::from_secs(40),
        async || {
            for _ in 0..10 {
                k += 1;
                let (s, _, b) = call_retrying(|| {
                    client()
                        .post(format!("{}/economy/grant", nodes[home].url()))
                        .header("authorization", bearer(SERVER_TOKEN))
                        .json(&json!({"player_id": me, "currency": "coins", "amount": 1,
                                   "reason": "home", "idempotency_key": format!("h-{k}")}))
                })
                .await;
                assert_eq!(s, 200, "{b}");
            }
            leader_of_player(&nodes[0]).await.as_deref() == Some(NAMES[home])
        },
    )
    .await;
    eprintln!(
        "leadership moved from {before} to {} after {:?}",
        NAMES[home],
        t.elapsed()
    );
    let (s, _, w) = call_retrying(|| {
        client()
            .get(format!("{}/wallet/me", nodes[home].url()))
            .header("authorization", bearer(&token))
    })
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["balances"]["coins"].as_i64(), Some(k), "a write was lost");
}

/// The shard of a player (SHA-256 of the id, first 8 bytes, mod 16), as
/// `replication::economy::shard_of` computes it.
fn shard_of_player(id: &str) -> u64 {
    meridian_replication::economy::shard_of(id, SHARDS as u16) as u64
}
