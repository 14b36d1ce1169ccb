//! A Jepsen-style bank workload over the real API: players with coins,
//! concurrent random transfers through every region (same idempotency key on
//! every retry), then the invariants: money conserved, no negative balance,
//! every acknowledged transfer applied exactly once, every ledger explains
//! its balance.

use super::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// One acknowledged transfer: the sender's index and the transaction id.
#[derive(Debug, Clone)]
pub struct Acked {
    pub from: usize,
    pub tx: String,
}

/// A transfer whose outcome the client never learned.
#[derive(Debug, Clone)]
pub struct Unknown {
    from: usize,
    to: usize,
    amount: i64,
    key: String,
}

/// `GET /admin/shards` of a node, or None while it does not answer.
pub async fn shards(url: &str) -> Option<Vec<Value>> {
    let resp = client()
        .get(format!("{url}/admin/shards"))
        .header("authorization", bearer(ADMIN_TOKEN))
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    v["shards"].as_array().cloned()
}

/// The node name leading `shard`, as the node at `url` sees it.
pub async fn leader_name(url: &str, shard: u64) -> Option<String> {
    let sh = shards(url).await?;
    let s = sh.iter().find(|s| s["shard"].as_u64() == Some(shard))?;
    let leader = s["leader"].as_u64()?;
    let i = s["voters"]
        .as_array()?
        .iter()
        .position(|v| v.as_u64() == Some(leader))?;
    s["voter_names"]
        .as_array()?
        .get(i)?
        .as_str()
        .map(str::to_string)
}

/// Wait until no shard has an open cross-shard hold on any of `urls`
/// (transfers cut mid-way are resolved by the shard leaders' recovery).
pub async fn wait_no_holds(urls: &[String], within: Duration) -> Duration {
    wait_for("no open transfer holds", within, async || {
        for u in urls {
            let Some(sh) = shards(u).await else {
                return false;
            };
            if sh.iter().any(|s| s["open_holds"].as_u64() != Some(0)) {
                return false;
            }
        }
        true
    })
    .await
}

/// GET with retries while the economy answers 503 (a client's behaviour
/// during an election or a partition).
pub async fn get_retrying(url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client()
            .get(url)
            .header("authorization", bearer(token))
            .send()
            .await;
        if let Ok(r) = resp {
            let s = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            if s == 200 {
                return b;
            }
            assert!(s == 503 && Instant::now() < deadline, "GET {url}: {s} {b}");
        }
        assert!(Instant::now() < deadline, "GET {url}: no answer");
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

/// POST a transfer through the given node order, retrying the same key on
/// 503 and connection errors. `Ok(Some(tx))` = acknowledged, `Ok(None)` =
/// refused for lack of money or outcome unknown after every attempt.
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
        // A connection error (a dead or cut-off region) is retried elsewhere.
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

pub struct Bank {
    /// `(player id, access token)`.
    pub players: Arc<Vec<(String, String)>>,
    pub start: i64,
}

impl Bank {
    /// Register `n` players round-robin over `urls` and grant each `start`
    /// coins (retrying on 503).
    pub async fn open(urls: &[String], n: usize, start: i64) -> Bank {
        let mut players = Vec::new();
        for i in 0..n {
            let r = register(
                &urls[i % urls.len()],
                &format!("bank{i}"),
                "correct horse battery",
            )
            .await;
            players.push((
                r["player_id"].as_str().unwrap().to_string(),
                r["access_token"].as_str().unwrap().to_string(),
            ));
        }
        for (i, (id, _)) in players.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (s, _, b) = call(
                    client()
                        .post(format!("{}/economy/grant", urls[i % urls.len()]))
                        .header("authorization", bearer(SERVER_TOKEN))
                        .json(
                            &json!({"player_id": id, "currency": "coins", "amount": start,
                                       "reason": "bank", "idempotency_key": format!("seed-{i}")}),
                        ),
                )
                .await;
                if s == 200 {
                    break;
                }
                assert!(s == 503 && Instant::now() < deadline, "grant: {s} {b}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Bank {
            players: Arc::new(players),
            start,
        }
    }

    /// Start `workers` clients doing `per_worker` random transfers each
    /// through `urls` (a random first region per transfer); `done` counts
    /// finished transfers.
    pub fn run(
        &self,
        urls: &[String],
        workers: usize,
        per_worker: usize,
        done: Arc<AtomicUsize>,
    ) -> Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<Unknown>)>> {
        let n = self.players.len() as u64;
        (0..workers)
            .map(|w| {
                let players = self.players.clone();
                let all = urls.to_vec();
                let done = done.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut unknown = Vec::new();
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
                    let mut next = || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed
                    };
                    for k in 0..per_worker {
                        let from = (next() % n) as usize;
                        let to = (from + 1 + (next() % (n - 1)) as usize) % n as usize;
                        let amount = 1 + (next() % 40) as i64;
                        let key = format!("w{w}-{k}");
                        let mut order = all.clone();
                        let len = order.len() as u64;
                        order.rotate_left((next() % len) as usize);
                        match transfer(&order, &players[from].1, &players[to].0, amount, &key, 40)
                            .await
                        {
                            Ok(Some(tx)) => acked.push(Acked { from, tx }),
                            Ok(None) => unknown.push(Unknown {
                                from,
                                to,
                                amount,
                                key,
                            }),
                            Err(e) => panic!("{e}"),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    (acked, unknown)
                })
            })
            .collect()
    }

    /// Join the workers, then retry every unknown outcome with its key
    /// through `urls` (an applied one replays, an unapplied one applies once).
    pub async fn finish(
        &self,
        tasks: Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<Unknown>)>>,
        urls: &[String],
    ) -> Vec<Acked> {
        let mut acked = Vec::new();
        let mut unknown = Vec::new();
        for t in tasks {
            let (a, u) = t.await.unwrap();
            acked.extend(a);
            unknown.extend(u);
        }
        eprintln!(
            "bank: {} transfers acknowledged, {} refused or unknown",
            acked.len(),
            unknown.len()
        );
        for u in &unknown {
            let p = &self.players;
            if let Some(tx) = transfer(urls, &p[u.from].1, &p[u.to].0, u.amount, &u.key, 40)
                .await
                .unwrap()
            {
                acked.push(Acked { from: u.from, tx });
            }
        }
        acked
    }

    /// The bank invariants, read through every one of `urls`.
    pub async fn check(&self, urls: &[String], acked: &[Acked]) {
        let players = &self.players;
        for url in urls {
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
                self.start * players.len() as i64,
                "money not conserved (via {url})"
            );
        }
        let mut history: HashMap<usize, Vec<Value>> = HashMap::new();
        for (i, (_, token)) in players.iter().enumerate() {
            history.insert(i, all_transactions(&urls[i % urls.len()], token).await);
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for a in acked {
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
}
