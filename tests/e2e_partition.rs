//! A real network partition: three `meridian` processes in three network
//! namespaces on one bridge; nft drops traffic between one node and the other
//! two, then the rule is removed. Both sides see the other as down, then
//! alive again, with no operator action.
//!
//! Needs root and `ip netns` + `nft`. Where namespaces are unavailable the
//! test prints SKIP and passes, unless `MERIDIAN_REQUIRE_NETNS=1` (set by
//! `.ci/run`), where that is a failure.

mod common;
use common::bank::{wait_no_holds, Bank};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DOWN_WITHIN: Duration = Duration::from_secs(10);
const HEAL_WITHIN: Duration = Duration::from_secs(20);

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Namespaces `{tag}0..2` on bridge `{tag}br`, subnet 10.213.{k}.0/24.
struct Net {
    tag: String,
    k: u32,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.tag)
    }
    fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.k, i + 1)
    }
    /// `n` tells apart the tests of one process running at the same time.
    fn setup(n: u32) -> Result<Net, String> {
        let pid = std::process::id();
        let net = Net {
            tag: format!("mrd{}{n}", pid % 100_000),
            k: (pid * 2 + n) % 250,
        };
        let br = format!("{}br", net.tag);
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{}.254/24", net.k),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for i in 0..3 {
            let ns = net.ns(i);
            let veth = format!("{}v{i}", net.tag);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", &br, "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
    /// Drop all traffic between node `i` and every other node, inside `i`'s namespace.
    fn isolate(&self, i: usize) -> Result<(), String> {
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(|j| self.ip(j)).collect();
        let set = format!("{{ {} }}", others.join(", "));
        let ns = self.ns(i);
        let rules = format!(
            "table inet partition {{\n chain in {{ type filter hook input priority 0; ip saddr {set} drop; }}\n chain out {{ type filter hook output priority 0; ip daddr {set} drop; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-partition.nft", self.tag));
        std::fs::write(&file, rules).map_err(|e| e.to_string())?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "-f",
            file.to_str().unwrap(),
        ])
    }
    fn heal(&self, i: usize) -> Result<(), String> {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(i),
            "nft",
            "delete",
            "table",
            "inet",
            "partition",
        ])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "link", "del", &format!("{}br", self.tag)]);
    }
}

async fn states(viewer: &Node) -> Vec<(String, String)> {
    let (s, _, v): (u16, _, Value) = call(
        client()
            .get(format!("{}/admin/mesh", viewer.url()))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(s, 200);
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["is_self"] == false)
                .map(|m| {
                    (
                        m["node_id"].as_str().unwrap_or("").to_string(),
                        m["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn sees(viewer: &Node, node: &str, state: &str) -> bool {
    states(viewer)
        .await
        .iter()
        .any(|(n, s)| n == node && s == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_in_network_namespaces_then_heal() {
    let net = match Net::setup(0) {
        Ok(n) => n,
        Err(e) => {
            if std::env::var("MERIDIAN_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("network namespaces required but unavailable: {e}");
            }
            eprintln!("SKIP partition_in_network_namespaces_then_heal: network namespaces unavailable ({e})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_in_namespaces(&net, dir.path(), &[]);
    wait_for("all alive before the partition", HEAL_WITHIN, async || {
        for n in &nodes {
            let s = states(n).await;
            if s.len() != 2 || s.iter().any(|(_, st)| st != "alive") {
                return false;
            }
        }
        true
    })
    .await;

    net.isolate(0).expect("nft partition");
    let t = wait_for("both sides see the other down", DOWN_WITHIN, async || {
        sees(&nodes[0], "node-1", "down").await
            && sees(&nodes[0], "node-2", "down").await
            && sees(&nodes[1], "node-0", "down").await
            && sees(&nodes[2], "node-0", "down").await
    })
    .await;
    eprintln!("partition detected on both sides in {t:?}");
    // The majority side still sees itself whole.
    assert!(sees(&nodes[1], "node-2", "alive").await);
    // Every side keeps serving its API during the partition.
    for n in &nodes {
        let (s, _, _) = call(client().get(format!("{}/readyz", n.url()))).await;
        assert_eq!(s, 200);
    }

    net.heal(0).expect("nft heal");
    let t = wait_for("all alive again after the heal", HEAL_WITHIN, async || {
        for n in &nodes {
            let s = states(n).await;
            if s.iter().filter(|(_, st)| st == "alive").count() != 2 {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("healed in {t:?}");
    drop(nodes);
}

/// Three nodes `node-0..2` (regions eu-west, us-east, ap-south), one per
/// namespace of `net`, each seeding all three, with `extra` settings.
fn start_in_namespaces(net: &Net, dir: &Path, extra: &[(&str, &str)]) -> Vec<Node> {
    let ca = dir.join("ca");
    let seeds = format!(
        "[{}]",
        (0..3)
            .map(|i| format!("\"{}:7946\"", net.ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    );
    ["eu-west", "us-east", "ap-south"]
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let ip = net.ip(i);
            let name = format!("node-{i}");
            let (mesh, beacon, game) = (
                format!("{ip}:7946"),
                format!("{ip}:7778"),
                format!("{ip}:7779"),
            );
            let mut env = vec![
                ("MERIDIAN_REGION", *region),
                ("MERIDIAN_NODE_NAME", name.as_str()),
                ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
                ("MERIDIAN_MESH__SEEDS", seeds.as_str()),
                ("MERIDIAN_MESH_ADDR", mesh.as_str()),
                ("MERIDIAN_BEACON_ADDR", beacon.as_str()),
                ("MERIDIAN_GAME_ADDR", game.as_str()),
            ];
            env.extend_from_slice(extra);
            let addr: SocketAddr = format!("{ip}:7700").parse().unwrap();
            Node::start_at(
                &dir.join(&name),
                &env,
                addr,
                vec!["ip".into(), "netns".into(), "exec".into(), net.ns(i)],
            )
        })
        .collect()
}

fn require_netns(e: String, test: &str) {
    if std::env::var("MERIDIAN_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("network namespaces required but unavailable: {e}");
    }
    eprintln!("SKIP {test}: network namespaces unavailable ({e})");
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Every shard has 3 voters and a leader, as `n` sees it.
async fn economy_formed(n: &Node) -> bool {
    let Ok(resp) = client()
        .get(format!("{}/admin/shards", n.url()))
        .header("authorization", bearer(ADMIN_TOKEN))
        .send()
        .await
    else {
        return false;
    };
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    v["shards"].as_array().is_some_and(|sh| {
        !sh.is_empty()
            && sh.iter().all(|s| {
                s["voters"].as_array().is_some_and(|v| v.len() == 3) && s["leader"].is_u64()
            })
    })
}

async fn profile(n: &Node, player: &str, token: &str) -> Value {
    let (s, _, p) = call(
        client()
            .get(format!("{}/player/{player}/profile", n.url()))
            .header("authorization", bearer(token)),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    p
}

async fn top(n: &Node) -> Vec<(String, i64)> {
    let (s, _, b) = call(client().get(format!("{}/leaderboards/arena?limit=10", n.url()))).await;
    assert_eq!(s, 200, "{b}");
    b["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| {
                    (
                        x["player_id"].as_str().unwrap_or("").to_string(),
                        x["score"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The consistency table under a real partition: the minority side keeps
/// serving logins, profiles and leaderboards (and accepts edits), refuses
/// economy writes fast with a retryable 503; the majority keeps taking
/// money; after the heal everything converges with no operator action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_minority_serves_crdts_refuses_money_then_converges() {
    let net = match Net::setup(1) {
        Ok(n) => n,
        Err(e) => {
            return require_netns(
                e,
                "partition_minority_serves_crdts_refuses_money_then_converges",
            )
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_in_namespaces(
        &net,
        dir.path(),
        &[("MERIDIAN_ECONOMY__BOOTSTRAP_EXPECT", "3")],
    );
    wait_for("economy with 3 voters per shard", HEAL_WITHIN, async || {
        economy_formed(&nodes[0]).await && economy_formed(&nodes[2]).await
    })
    .await;
    let reg = register(&nodes[1].url(), "partisan", "correct horse battery").await;
    let p = reg["player_id"].as_str().unwrap().to_string();
    let token = reg["access_token"].as_str().unwrap().to_string();
    let (s, _, b) = call(
        client()
            .post(format!("{}/economy/grant", nodes[1].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(
                &serde_json::json!({"player_id": p, "currency": "coins", "amount": 500,
                                      "reason": "seed", "idempotency_key": "seed"}),
            ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let login = async |n: &Node| {
        call(client().post(format!("{}/auth/login", n.url())).json(
            &serde_json::json!({"username": "partisan", "password": "correct horse battery"}),
        ))
        .await
        .0
    };
    wait_for("account replicated to node-0", HEAL_WITHIN, async || {
        login(&nodes[0]).await == 200
    })
    .await;
    // A player the majority will erase while the minority still edits them.
    let ghost = register(&nodes[1].url(), "ghostly", "correct horse battery").await;
    let g = ghost["player_id"].as_str().unwrap().to_string();
    let g_token = ghost["access_token"].as_str().unwrap().to_string();
    wait_for("ghost replicated to node-0", HEAL_WITHIN, async || {
        call(
            client()
                .get(format!("{}/player/me", nodes[0].url()))
                .header("authorization", bearer(&g_token)),
        )
        .await
        .0 == 200
    })
    .await;

    net.isolate(0).expect("nft partition");
    wait_for("both sides see the partition", DOWN_WITHIN, async || {
        sees(&nodes[0], "node-1", "down").await && sees(&nodes[1], "node-0", "down").await
    })
    .await;

    // The minority keeps serving logins, profiles and leaderboards, and edits.
    assert_eq!(login(&nodes[0]).await, 200);
    let (s, _, b) = call(
        client()
            .patch(format!("{}/player/me/profile", nodes[0].url()))
            .header("authorization", bearer(&token))
            .json(&serde_json::json!({"display_name": "From the minority"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = call(
        client()
            .post(format!("{}/leaderboards/arena/scores", nodes[0].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&serde_json::json!({"player_id": p, "score": 700})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // The minority edits the ghost while the majority erases it (below).
    let (s, _, b) = call(
        client()
            .patch(format!("{}/player/me/profile", nodes[0].url()))
            .header("authorization", bearer(&g_token))
            .json(&serde_json::json!({"display_name": "Still here"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = call(
        client()
            .post(format!("{}/leaderboards/arena/scores", nodes[0].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&serde_json::json!({"player_id": g, "score": 999})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // ...and refuses money fast with a retryable 503.
    let buy = |n: &Node, key: &str| {
        client()
            .post(format!("{}/store/purchase", n.url()))
            .header("authorization", bearer(&token))
            .json(
                &serde_json::json!({"item_id": "potion", "quantity": 1, "currency": "coins",
                                      "idempotency_key": key}),
            )
    };
    let t = std::time::Instant::now();
    let (s, h, b) = call(buy(&nodes[0], "minority-buy")).await;
    let refused_in = t.elapsed();
    assert_eq!(s, 503, "{b}");
    assert_eq!(error_code(&b), "unavailable");
    assert!(h.get("retry-after").is_some(), "no Retry-After");
    assert!(
        refused_in < Duration::from_secs(8),
        "refused after {refused_in:?}"
    );
    eprintln!("minority refused an economy write in {refused_in:?}");

    // The majority keeps taking money (after an election if node-0 led).
    let t = std::time::Instant::now();
    let mut coins = None;
    while coins.is_none() {
        let (s, _, b) = call(buy(&nodes[1], "majority-buy")).await;
        match s {
            200 => coins = b["balances"]["coins"].as_i64(),
            503 if t.elapsed() < HEAL_WITHIN => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => panic!("majority purchase: {s} {b}"),
        }
    }
    eprintln!(
        "majority committed an economy write after {:?}",
        t.elapsed()
    );
    let (s, _, b) = call(
        client()
            .patch(format!("{}/player/me/profile", nodes[1].url()))
            .header("authorization", bearer(&token))
            .json(&serde_json::json!({"avatar": "majority.png"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let reg2 = register(&nodes[2].url(), "majorian", "correct horse battery").await;
    let q = reg2["player_id"].as_str().unwrap().to_string();
    let (s, _, b) = call(
        client()
            .post(format!("{}/leaderboards/arena/scores", nodes[2].url()))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&serde_json::json!({"player_id": q, "score": 900})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let (s, _, b) = call(
        client()
            .delete(format!("{}/admin/players/{g}", nodes[1].url()))
            .header("authorization", bearer(ADMIN_TOKEN)),
    )
    .await;
    assert_eq!(s, 204, "{b}");

    net.heal(0).expect("nft heal");
    let t = wait_for("CRDTs converged on every node", HEAL_WITHIN, async || {
        for n in &nodes {
            let pr = profile(n, &p, &token).await;
            if pr["display_name"] != "From the minority" || pr["avatar"] != "majority.png" {
                return false;
            }
            let t = top(n).await;
            if !(t.contains(&(q.clone(), 900)) && t.contains(&(p.clone(), 700))) {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("converged {t:?} after the heal");
    // The erasure won over the minority's concurrent edits, everywhere, and
    // stays won after more anti-entropy rounds.
    let gone = async |n: &Node| {
        let (s, _, _) = call(
            client()
                .get(format!("{}/player/{g}/profile", n.url()))
                .header("authorization", bearer(&token)),
        )
        .await;
        s == 404 && !top(n).await.iter().any(|(id, _)| *id == g)
    };
    wait_for("erased player gone everywhere", HEAL_WITHIN, async || {
        for n in &nodes {
            if !gone(n).await {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &nodes {
        assert!(gone(n).await, "erased player resurrected on {}", n.url());
        let (s, _, b) = call(
            client()
                .get(format!("{}/player/me", n.url()))
                .header("authorization", bearer(&g_token)),
        )
        .await;
        assert_eq!(s, 401, "{b}");
    }
    // The minority's side sees the majority's money, and the refused
    // purchase retried with its key now applies once.
    let t = std::time::Instant::now();
    loop {
        let (s, _, w) = call(
            client()
                .get(format!("{}/wallet/me", nodes[0].url()))
                .header("authorization", bearer(&token)),
        )
        .await;
        if s == 200 {
            assert_eq!(w["balances"]["coins"].as_i64(), coins, "{w}");
            break;
        }
        assert!(s == 503 && t.elapsed() < HEAL_WITHIN, "{s} {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut after = None;
    let t = std::time::Instant::now();
    while after.is_none() {
        let (s, _, b) = call(buy(&nodes[0], "minority-buy")).await;
        match s {
            200 => after = b["balances"]["coins"].as_i64(),
            503 if t.elapsed() < HEAL_WITHIN => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => panic!("retried purchase: {s} {b}"),
        }
    }
    let (_, _, again) = call(buy(&nodes[2], "minority-buy")).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["balances"]["coins"].as_i64(), after);
    assert!(after < coins, "the retried purchase charged");
    drop(nodes);
}

/// The Jepsen-style bank workload through a real partition and then a
/// `kill -9` of a shard leader: transfers go to every region (the cut-off
/// one answers 503 or nothing, and clients retry elsewhere with the same
/// idempotency key). Afterwards money is conserved, no balance is negative,
/// and every acknowledged transfer is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_workload_through_a_partition_and_a_leader_kill_9() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 40;
    let net = match Net::setup(2) {
        Ok(n) => n,
        Err(e) => return require_netns(e, "bank_workload_through_a_partition_and_a_leader_kill_9"),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_in_namespaces(
        &net,
        dir.path(),
        &[("MERIDIAN_ECONOMY__BOOTSTRAP_EXPECT", "3")],
    );
    wait_for("economy with 3 voters per shard", HEAL_WITHIN, async || {
        economy_formed(&nodes[0]).await && economy_formed(&nodes[2]).await
    })
    .await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let bank = Bank::open(&urls, 6, 1_000).await;
    let leader_of = async |n: &Node| -> Option<usize> {
        let name = common::bank::leader_name(&n.url(), 0).await?;
        name.strip_prefix("node-")?.parse().ok()
    };
    let first_leader = leader_of(&nodes[0]).await.expect("a leader");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = || done.load(std::sync::atomic::Ordering::Relaxed);
    let tasks = bank.run(&urls, WORKERS, PER_WORKER, done.clone());
    // Cut the leader of shard 0 off, let the majority elect and carry on.
    wait_for(
        "a quarter of the transfers",
        Duration::from_secs(60),
        async || count() >= WORKERS * PER_WORKER / 4,
    )
    .await;
    net.isolate(first_leader).expect("nft partition");
    eprintln!("isolated node-{first_leader} (leader of shard 0)");
    let at = count();
    wait_for(
        "transfers continue on the majority",
        Duration::from_secs(60),
        async || count() >= at + WORKERS * PER_WORKER / 4,
    )
    .await;
    net.heal(first_leader).expect("nft heal");
    // Then kill -9 whoever leads shard 0 now, and bring it back.
    let majority = (first_leader + 1) % 3;
    let mut victim = None;
    wait_for("a leader after the heal", HEAL_WITHIN, async || {
        victim = leader_of(&nodes[majority]).await;
        victim.is_some()
    })
    .await;
    let victim = victim.unwrap();
    nodes[victim].kill9();
    eprintln!("killed node-{victim} (leader of shard 0)");
    let acked = bank.finish(tasks, &urls).await;
    assert!(
        acked.len() >= WORKERS * PER_WORKER / 2,
        "too few acknowledged: {}",
        acked.len()
    );
    nodes[victim].spawn();
    wait_for("the killed node back", HEAL_WITHIN, async || {
        economy_formed(&nodes[victim]).await
    })
    .await;
    let t = wait_no_holds(&urls, HEAL_WITHIN).await;
    eprintln!("holds resolved {t:?} after the workload");
    bank.check(&urls, &acked).await;
    drop(nodes);
}
