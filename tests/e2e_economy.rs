//! The economy through the real binary: grants, purchases, inventory,
//! idempotency, errors, concurrency against a limited balance, and `kill -9`
//! during a purchase storm.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn auth(t: &str) -> String {
    format!("Bearer {t}")
}

async fn grant(base: &str, player: &str, amount: i64, key: &str) -> Value {
    let (s, _, b) = call(client().post(format!("{base}/economy/grant")).header("authorization", auth(SERVER_TOKEN)).json(&json!({
        "player_id": player, "currency": "coins", "amount": amount, "reason": "test", "idempotency_key": key
    })))
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn purchase(
    base: &str,
    token: &str,
    item: &str,
    qty: i64,
    currency: &str,
    key: &str,
) -> (u16, Value) {
    let (s, _, b) = call(
        client()
            .post(format!("{base}/store/purchase"))
            .header("authorization", auth(token))
            .json(&json!({
                "item_id": item, "quantity": qty, "currency": currency, "idempotency_key": key
            })),
    )
    .await;
    (s, b)
}

async fn wallet(base: &str, token: &str) -> Value {
    let (s, _, b) = call(
        client()
            .get(format!("{base}/wallet/me"))
            .header("authorization", auth(token)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["balances"].clone()
}

async fn quantity_of(base: &str, token: &str, template: &str) -> i64 {
    let (s, _, b) = call(
        client()
            .get(format!("{base}/inventory/me"))
            .header("authorization", auth(token)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["item_template_id"] == template)
        .map(|i| i["quantity"].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn grant_purchase_inventory_idempotency_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let p = register(&base, "buyer_01", "buyer password 1").await;
    let (pid, token) = (
        p["player_id"].as_str().unwrap(),
        p["access_token"].as_str().unwrap(),
    );
    let other = register(&base, "other_02", "other password 2").await;

    // Catalog is public.
    let (s, _, cat) = call(client().get(format!("{base}/store/catalog"))).await;
    assert_eq!(s, 200);
    assert!(
        cat["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["item_id"] == "potion"),
        "{cat}"
    );

    // A grant, retried with the same key, credits once.
    grant(&base, pid, 1000, "g1").await;
    let again = grant(&base, pid, 1000, "g1").await;
    assert_eq!(again["replayed"], true);
    assert_eq!(wallet(&base, token).await["coins"], 1000);

    // Purchase; the retry returns the same result and charges once.
    let (s, r1) = purchase(&base, token, "potion", 3, "coins", "buy-1").await;
    assert_eq!(s, 200, "{r1}");
    assert_eq!(r1["balances"]["coins"], 970);
    let (s, r2) = purchase(&base, token, "potion", 3, "coins", "buy-1").await;
    assert_eq!(s, 200);
    assert_eq!(r2["transaction_id"], r1["transaction_id"]);
    assert_eq!(wallet(&base, token).await["coins"], 970);
    assert_eq!(quantity_of(&base, token, "potion").await, 3);
    // Same key, other body: 409.
    let (s, b) = purchase(&base, token, "potion", 4, "coins", "buy-1").await;
    assert_eq!((s, error_code(&b).as_str()), (409, "idempotency_conflict"));

    // Transactions, newest first.
    let (s, _, txs) = call(
        client()
            .get(format!("{base}/transactions/me?limit=10"))
            .header("authorization", auth(token)),
    )
    .await;
    assert_eq!(s, 200, "{txs}");
    let list = txs["transactions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{txs}");
    assert_eq!(list[0]["id"], r1["transaction_id"]);

    // Errors.
    let cases = [
        (
            json!({"item_id": "nope", "quantity": 1, "currency": "coins", "idempotency_key": "e1"}),
            400,
            "unknown_item",
        ),
        (
            json!({"item_id": "potion", "quantity": 0, "currency": "coins", "idempotency_key": "e2"}),
            400,
            "invalid_quantity",
        ),
        (
            json!({"item_id": "potion", "quantity": -5, "currency": "coins", "idempotency_key": "e3"}),
            400,
            "invalid_quantity",
        ),
        (
            json!({"item_id": "potion", "quantity": 21, "currency": "coins", "idempotency_key": "e4"}),
            422,
            "limit_exceeded",
        ),
        (
            json!({"item_id": "gold_skin", "quantity": 1, "currency": "coins", "idempotency_key": "e5"}),
            400,
            "currency_mismatch",
        ),
        (
            json!({"item_id": "sword", "quantity": 1, "currency": "gems", "idempotency_key": "e6"}),
            400,
            "currency_mismatch",
        ),
        (
            json!({"item_id": "potion", "quantity": 1, "currency": "gems", "idempotency_key": "e7"}),
            422,
            "insufficient_funds",
        ),
        (
            json!({"item_id": "potion", "quantity": "1", "currency": "coins", "idempotency_key": "e8"}),
            400,
            "invalid_field",
        ),
    ];
    for (i, (body, status, code)) in cases.into_iter().enumerate() {
        let (s, _, b) = call(
            client()
                .post(format!("{base}/store/purchase"))
                .header("authorization", auth(token))
                .json(&body),
        )
        .await;
        assert_eq!(
            (s, error_code(&b)),
            (status, code.to_string()),
            "case {i}: {b}"
        );
    }
    // A failed purchase stores nothing: the same key works once funds exist.
    grant(&base, pid, 10, "gems-none").await;

    // Grants name a real player.
    for (player, status) in [
        ("not-a-uuid", 400),
        ("00000000-0000-0000-0000-000000000000", 404),
    ] {
        let (s, _, b) = call(client().post(format!("{base}/economy/grant")).header("authorization", auth(SERVER_TOKEN)).json(&json!({
            "player_id": player, "currency": "coins", "amount": 5, "reason": "x", "idempotency_key": "nobody"
        })))
        .await;
        assert_eq!(s, status, "{b}");
    }

    // Roles: players cannot grant or read another inventory; servers can read.
    let (s, _, _) = call(client().post(format!("{base}/economy/grant")).header("authorization", auth(token)).json(&json!({
        "player_id": pid, "currency": "coins", "amount": 5, "reason": "x", "idempotency_key": "self"
    })))
    .await;
    assert_eq!(s, 403);
    let other_id = other["player_id"].as_str().unwrap();
    let (s, _, _) = call(client().get(format!("{base}/inventory/{pid}")).header(
        "authorization",
        auth(other["access_token"].as_str().unwrap()),
    ))
    .await;
    assert_eq!(s, 403);
    let (s, _, inv) = call(
        client()
            .get(format!("{base}/inventory/{pid}"))
            .header("authorization", auth(SERVER_TOKEN)),
    )
    .await;
    assert_eq!(s, 200, "{inv}");
    assert_eq!(inv["items"][0]["item_template_id"], "potion");
    for f in ["id", "quantity", "acquired_date", "is_equipped"] {
        assert!(!inv["items"][0][f].is_null(), "{f} missing: {inv}");
    }

    // Transfer to another player (one or two shards: both must be atomic).
    let (s, _, t) = call(
        client()
            .post(format!("{base}/economy/transfer"))
            .header("authorization", auth(token))
            .json(&json!({
                "to_player_id": other_id, "currency": "coins", "amount": 70, "idempotency_key": "t1"
            })),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wallet(&base, other["access_token"].as_str().unwrap()).await["coins"],
        70
    );
    assert_eq!(wallet(&base, token).await["coins"], 970 + 10 - 70);

    // Admin sees the shards.
    let (s, _, shards) = call(
        client()
            .get(format!("{base}/admin/shards"))
            .header("authorization", auth(ADMIN_TOKEN)),
    )
    .await;
    assert_eq!(s, 200);
    let shards = shards["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 16);
    assert!(shards.iter().all(|s| !s["leader"].is_null()), "{shards:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_purchases_against_a_balance_for_fifty() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let p = register(&base, "rush_01", "rush password 1").await;
    let (pid, token) = (
        p["player_id"].as_str().unwrap().to_string(),
        p["access_token"].as_str().unwrap().to_string(),
    );
    grant(&base, &pid, 500, "seed").await; // potion = 10 coins: covers 50
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (base, token) = (base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            purchase(&base, &token, "potion", 1, "coins", &format!("k{i}")).await
        }));
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        if s != 200 {
            assert_eq!(error_code(&b), "insufficient_funds", "{b}");
        }
        *by_status.entry(s).or_default() += 1;
    }
    assert_eq!(by_status.get(&200), Some(&50), "{by_status:?}");
    assert_eq!(by_status.get(&422), Some(&150), "{by_status:?}");
    assert_eq!(wallet(&base, &token).await["coins"], 0);
    assert_eq!(quantity_of(&base, &token, "potion").await, 50);
}

const STORM_PLAYERS: usize = 4;
const STORM_GRANT: i64 = 1_000_000;
const STORM_CYCLES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_a_purchase_storm_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("meridian.toml");
    std::fs::write(
        &cfg,
        "[[economy.catalog.items]]\nitem_id = \"token\"\nname = \"Token\"\nprices = { coins = 7 }\nmax_per_purchase = 5\nstack_limit = 1000000\n",
    )
    .unwrap();
    let mut node = Node::start(
        &dir.path().join("node"),
        &[(TEST_CONFIG_ENV, cfg.to_str().unwrap())],
    );
    let mut players = Vec::new();
    for i in 0..STORM_PLAYERS {
        let p = register(&node.url(), &format!("storm_{i}"), "storm password").await;
        grant(
            &node.url(),
            p["player_id"].as_str().unwrap(),
            STORM_GRANT,
            "seed",
        )
        .await;
        players.push((
            p["player_id"].as_str().unwrap().to_string(),
            p["access_token"].as_str().unwrap().to_string(),
        ));
    }
    // key -> (player index, quantity); acknowledged key -> transaction id.
    let attempted: Arc<Mutex<BTreeMap<String, (usize, i64)>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    for cycle in 0..STORM_CYCLES {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (base, players, attempted, acked, stop) = (
                node.url(),
                players.clone(),
                attempted.clone(),
                acked.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let pi = (w + n) % STORM_PLAYERS;
                    let qty = 1 + (n % 5) as i64;
                    let key = format!("c{cycle}w{w}n{n}");
                    n += 1;
                    attempted.lock().unwrap().insert(key.clone(), (pi, qty));
                    let sent = client()
                        .post(format!("{base}/store/purchase"))
                        .header("authorization", auth(&players[pi].1))
                        .json(&json!({"item_id": "token", "quantity": qty, "currency": "coins", "idempotency_key": key}))
                        .send()
                        .await;
                    // A request cut by the kill ends this worker; its key is retried below.
                    let Ok(resp) = sent else { break };
                    let s = resp.status().as_u16();
                    let Ok(b) = resp.json::<Value>().await else { break };
                    if s == 200 {
                        acked.lock().unwrap().insert(key, b["transaction_id"].as_str().unwrap().to_string());
                    } else {
                        // Only a shard without its leader yet may refuse, retryably.
                        assert_eq!(s, 503, "{b}");
                    }
                }
            }));
        }
        let before = acked.lock().unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 100 + 37 * cycle
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await; // requests cut by the kill end the worker
        }
        node.spawn();
    }
    // Retry every attempted key with the same body: acknowledged ones must
    // replay their first result; the rest execute now, exactly once.
    let attempted = attempted.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "too few acknowledged purchases: {}",
        acked.len()
    );
    let base = node.url();
    for (key, (pi, qty)) in &attempted {
        let (s, b) = purchase(&base, &players[*pi].1, "token", *qty, "coins", key).await;
        assert_eq!(s, 200, "{key}: {b}");
        if let Some(tx) = acked.get(key) {
            assert_eq!(
                b["transaction_id"].as_str(),
                Some(tx.as_str()),
                "acknowledged {key} changed or was lost"
            );
            assert_eq!(b["replayed"], true, "acknowledged {key} executed twice");
        }
    }
    for (pi, (_, token)) in players.iter().enumerate() {
        let expected_qty: i64 = attempted
            .values()
            .filter(|(p, _)| *p == pi)
            .map(|(_, q)| q)
            .sum();
        assert_eq!(
            quantity_of(&base, token, "token").await,
            expected_qty,
            "player {pi} items"
        );
        assert_eq!(
            wallet(&base, token).await["coins"],
            STORM_GRANT - 7 * expected_qty,
            "player {pi} coins"
        );
        // Each purchase appears once in the history.
        let mut ids = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{base}/transactions/me?limit=100&cursor={c}"),
                None => format!("{base}/transactions/me?limit=100"),
            };
            let (s, _, page) = call(client().get(url).header("authorization", auth(token))).await;
            assert_eq!(s, 200, "{page}");
            for t in page["transactions"].as_array().unwrap() {
                if t["kind"] == "purchase" {
                    assert!(
                        ids.insert(t["id"].as_str().unwrap().to_string()),
                        "duplicate transaction {t}"
                    );
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let expected_count = attempted.values().filter(|(p, _)| *p == pi).count();
        assert_eq!(ids.len(), expected_count, "player {pi} purchase count");
    }
    eprintln!(
        "{} purchases attempted, {} acknowledged before the kills",
        attempted.len(),
        acked.len()
    );
}

#[tokio::test]
async fn payment_webhook_grants_once_whatever_the_delivery_order() {
    use meridian_replication::economy::payment::sign_webhook;
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec-test-secret-0123456789";
    let cfg = dir.path().join("meridian.toml");
    std::fs::write(
        &cfg,
        format!(
            "[payments]\nenabled = true\nwebhook_secret = \"{secret}\"\n[[payments.products]]\nproduct_id = \"gems_100\"\namount_minor = 199\nfiat_currency = \"usd\"\ngrant_currency = \"gems\"\ngrant_amount = 100\n"
        ),
    )
    .unwrap();
    let node = Node::start(
        &dir.path().join("node"),
        &[(TEST_CONFIG_ENV, cfg.to_str().unwrap())],
    );
    let base = node.url();
    let p = register(&base, "payer_01", "payer password 1").await;
    let token = p["access_token"].as_str().unwrap();
    let (s, _, intent) = call(
        client()
            .post(format!("{base}/payments/intents"))
            .header("authorization", auth(token))
            .json(&json!({"product_id": "gems_100"})),
    )
    .await;
    assert_eq!(s, 201, "{intent}");
    assert!(intent["client_secret"].is_string());
    let (s, _, b) = call(
        client()
            .post(format!("{base}/payments/intents"))
            .header("authorization", auth(token))
            .json(&json!({"product_id": "nope"})),
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (404, "unknown_product"));

    let now = chrono::Utc::now().timestamp();
    let event = |kind: &str, id: &str| {
        serde_json::to_vec(&json!({"id": id, "type": kind, "created": now, "data": intent}))
            .unwrap()
    };
    let deliver = |body: Vec<u8>, sig: String| {
        client()
            .post(format!("{base}/payments/webhook"))
            .header("meridian-signature", sig)
            .header("content-type", "application/json")
            .body(body)
    };
    // Out of order: a late "created" event, then "succeeded" twice.
    let created = event("payment_intent.created", "ev_1");
    let (s, _, b) = call(deliver(
        created.clone(),
        sign_webhook(secret.as_bytes(), &created, now),
    ))
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ignored")), "{b}");
    let ok = event("payment_intent.succeeded", "ev_2");
    for _ in 0..2 {
        let (s, _, b) = call(deliver(
            ok.clone(),
            sign_webhook(secret.as_bytes(), &ok, now),
        ))
        .await;
        assert_eq!((s, b["status"].as_str()), (200, Some("granted")), "{b}");
    }
    // A redelivery with a new event id for the same intent still grants nothing more.
    let again = event("payment_intent.succeeded", "ev_3");
    let (s, _, _) = call(deliver(
        again.clone(),
        sign_webhook(secret.as_bytes(), &again, now),
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(wallet(&base, token).await["gems"], 100);
    // Forged or missing signatures are refused.
    let (s, _, b) = call(deliver(
        ok.clone(),
        sign_webhook(b"wrong-secret-0123456789", &ok, now),
    ))
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, _, _) = call(
        client()
            .post(format!("{base}/payments/webhook"))
            .body(ok.clone()),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(wallet(&base, token).await["gems"], 100);
}
