//! End-to-end tests of the economy on a real sled store (single node).

use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{body_hash, Command, IdemTag};
use super::*;
use crate::store::Storage;

fn catalog() -> Catalog {
    let toml_like = r#"{"items":[
        {"item_id":"potion","name":"Potion","prices":{"coins":10,"gems":1},
         "max_per_purchase":5,"stack_limit":1000},
        {"item_id":"sword","name":"Sword","prices":{"coins":100},
         "max_per_purchase":1,"stack_limit":1,"purchase_limit_per_player":1},
        {"item_id":"trophy","name":"Trophy","stack_limit":10}
    ]}"#;
    serde_json::from_str(toml_like).unwrap()
}

fn config() -> EconomyConfig {
    EconomyConfig {
        shards: 4,
        catalog: catalog(),
        heartbeat_interval_ms: 50,
        ..Default::default()
    }
}

async fn open_storage(dir: &Path) -> Storage {
    // sled's lock is released once every handle of a previous open is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Storage::open_sled(dir) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reopen store: {e}"),
        }
    }
}

fn grant_coins(player: &str, amount: i64, key: &str) -> GrantRequest {
    GrantRequest {
        player_id: player.into(),
        currency: Some("coins".into()),
        amount: Some(amount),
        reason: "test".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Two player ids on different shards.
fn players_on_two_shards(shards: u16) -> (String, String) {
    let a = "alice".to_string();
    let sa = shard_of(&a, shards);
    for i in 0..1000 {
        let b = format!("bob{i}");
        if shard_of(&b, shards) != sa {
            return (a, b);
        }
    }
    unreachable!("1000 ids all on one shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_flow_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let eco = Economy::open(open_storage(dir.path()).await, config())
        .await
        .unwrap();
    eco.grant(grant_coins("p1", 250, "g1")).await.unwrap();
    let r = eco
        .purchase("p1", "potion", 3, "coins", "buy1")
        .await
        .unwrap();
    assert_eq!(r.balances["coins"], 220);
    assert_eq!(r.items[0].quantity, 3);
    assert!(!r.replayed);

    // Retry with the same key: same receipt, charged once.
    let again = eco
        .purchase("p1", "potion", 3, "coins", "buy1")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.transaction_id, r.transaction_id);
    assert_eq!(eco.wallet("p1").await.unwrap()["coins"], 220);
    // Same key, different body: conflict.
    let e = eco
        .purchase("p1", "potion", 4, "coins", "buy1")
        .await
        .unwrap_err();
    assert_eq!(e, EconomyError::IdempotencyConflict);

    let e = eco
        .purchase("p1", "nope", 1, "coins", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::UnknownItem(_)));
    let e = eco
        .purchase("p1", "potion", 0, "coins", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InvalidQuantity { .. }));
    let e = eco
        .purchase("p1", "potion", -3, "coins", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InvalidQuantity { .. }));
    let e = eco
        .purchase("p1", "potion", 6, "coins", "k-limit")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "limit_exceeded");
    let e = eco
        .purchase("p1", "sword", 1, "gems", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::CurrencyMismatch { .. }));
    let e = eco
        .purchase("p1", "trophy", 1, "coins", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::CurrencyMismatch { .. }));
    let e = eco
        .purchase("p1", "potion", 1, "gems", "k-gems")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InsufficientFunds { .. }));
    // A refusal is remembered under its key: after a top-up the same key
    // still answers the refusal (a delayed copy can never apply later); a
    // new key runs anew.
    eco.grant(GrantRequest {
        player_id: "p1".into(),
        currency: Some("gems".into()),
        amount: Some(5),
        reason: "top-up".into(),
        idempotency_key: "gems-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = eco
        .purchase("p1", "potion", 1, "gems", "k-gems")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InsufficientFunds { .. }), "{e}");
    let r = eco
        .purchase("p1", "potion", 1, "gems", "k-gems-2")
        .await
        .unwrap();
    assert_eq!(r.balances["gems"], 4);
    let e = eco
        .purchase("bad/id", "potion", 1, "coins", "k")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InvalidInput { .. }));
    eco.purchase("p1", "sword", 1, "coins", "s1").await.unwrap();
    let e = eco
        .purchase("p1", "sword", 1, "coins", "s2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "limit_exceeded");

    // Grant an item, consume and equip it.
    let g = eco
        .grant(GrantRequest {
            player_id: "p1".into(),
            item_id: Some("trophy".into()),
            quantity: Some(2),
            reason: "match".into(),
            idempotency_key: "g2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let trophy = g.items[0].id.clone();
    eco.equip("p1", &trophy, true).await.unwrap();
    let c = eco.consume("p1", &trophy, 1, "c1").await.unwrap();
    assert_eq!(c.items[0].quantity, 1);
    assert!(c.items[0].is_equipped);
    let e = eco.consume("p1", &trophy, 5, "c2").await.unwrap_err();
    assert!(matches!(e, EconomyError::InvalidQuantity { .. }));
    let e = eco.equip("p1", "missing", true).await.unwrap_err();
    assert!(matches!(e, EconomyError::NotFound(_)));

    let inv = eco.inventory("p1").await.unwrap();
    assert_eq!(inv.len(), 3);
    // grant, purchase, gems top-up, potion for gems, sword, grant item,
    // consume = 7 transactions, newest first.
    let page = eco.transactions("p1", 2, None).await.unwrap();
    assert_eq!(page.transactions.len(), 2);
    assert_eq!(page.transactions[0].kind, TxKind::Consume);
    let mut all = page.transactions.clone();
    let mut cursor = page.next_cursor.clone();
    while let Some(c) = cursor {
        let p = eco.transactions("p1", 2, Some(&c)).await.unwrap();
        all.extend(p.transactions);
        cursor = p.next_cursor;
    }
    assert_eq!(all.len(), 7);
    assert_eq!(all[6].kind, TxKind::Grant);
    assert!(eco.transactions("p1", 2, Some("x/y")).await.is_err());
    eco.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_purchases_exactly_cover_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    let eco = Economy::open(open_storage(dir.path()).await, config())
        .await
        .unwrap();
    eco.grant(grant_coins("whale", 500, "g")).await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let eco = eco.clone();
        tasks.push(tokio::spawn(async move {
            eco.purchase("whale", "potion", 1, "coins", &format!("k{i}"))
                .await
        }));
    }
    let (mut ok, mut poor) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(EconomyError::InsufficientFunds { .. }) => poor += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    eprintln!("200 concurrent purchases in {:?}", started.elapsed());
    assert_eq!((ok, poor), (50, 150));
    assert_eq!(eco.wallet("whale").await.unwrap()["coins"], 0);
    let inv = eco.inventory("whale").await.unwrap();
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].quantity, 50);
    let page = eco.transactions("whale", 100, None).await.unwrap();
    assert_eq!(page.transactions.len(), 51);
    eco.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_store_recovers_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    {
        let eco = Economy::open(open_storage(dir.path()).await, config())
            .await
            .unwrap();
        for p in 0..8 {
            eco.grant(grant_coins(&format!("p{p}"), 100, "g"))
                .await
                .unwrap();
            let r = eco
                .purchase(&format!("p{p}"), "potion", 2, "coins", "b")
                .await
                .unwrap();
            acked.push((format!("p{p}"), r));
        }
        eco.shutdown().await;
    }
    // Also with a different configured shard count: the stored one wins.
    let cfg = EconomyConfig {
        shards: 7,
        ..config()
    };
    let eco = Economy::open(open_storage(dir.path()).await, cfg)
        .await
        .unwrap();
    assert_eq!(eco.shard_count(), 4);
    for (p, r) in &acked {
        assert_eq!(eco.wallet(p).await.unwrap()["coins"], 80);
        assert_eq!(eco.inventory(p).await.unwrap()[0].quantity, 2);
        let again = eco.purchase(p, "potion", 2, "coins", "b").await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.transaction_id, r.transaction_id);
        assert_eq!(
            eco.transactions(p, 10, None)
                .await
                .unwrap()
                .transactions
                .len(),
            2
        );
    }
    eco.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_restart_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EconomyConfig {
        shards: 1,
        snapshot_logs_since_last: 20,
        log_entries_kept_after_snapshot: 5,
        ..config()
    };
    {
        let eco = Economy::open(open_storage(dir.path()).await, cfg.clone())
            .await
            .unwrap();
        for i in 0..60 {
            eco.grant(grant_coins("p", 1, &format!("g{i}")))
                .await
                .unwrap();
        }
        let m = eco
            .raft(0)
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some() && m.snapshot.is_some(), "purged")
            .await
            .unwrap();
        let purged = m.purged.unwrap().index;
        assert!(purged >= 10, "purged up to {purged}");
        eco.shutdown().await;
    }
    let eco = Economy::open(open_storage(dir.path()).await, cfg)
        .await
        .unwrap();
    assert_eq!(eco.wallet("p").await.unwrap()["coins"], 60);
    eco.grant(grant_coins("p", 1, "after")).await.unwrap();
    assert_eq!(eco.wallet("p").await.unwrap()["coins"], 61);
    let info = eco.shards();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].voters, vec![1]);
    eco.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_inside_and_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let eco = Economy::open(open_storage(dir.path()).await, config())
        .await
        .unwrap();
    let (a, b) = players_on_two_shards(4);
    eco.grant(grant_coins(&a, 100, "g")).await.unwrap();
    let r = eco.transfer(&a, &b, "coins", 30, "t1").await.unwrap();
    assert_eq!(r.status, TxStatus::Completed);
    assert_eq!(r.balances["coins"], 70);
    assert_eq!(eco.wallet(&b).await.unwrap()["coins"], 30);
    let again = eco.transfer(&a, &b, "coins", 30, "t1").await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.status, TxStatus::Completed);
    assert_eq!(eco.wallet(&b).await.unwrap()["coins"], 30);
    let e = eco.transfer(&a, &b, "coins", 31, "t1").await.unwrap_err();
    assert_eq!(e, EconomyError::IdempotencyConflict);
    let e = eco
        .transfer(&a, &b, "coins", 1_000, "t2")
        .await
        .unwrap_err();
    assert!(matches!(e, EconomyError::InsufficientFunds { .. }));
    let e = eco.transfer(&a, &a, "coins", 1, "t3").await.unwrap_err();
    assert!(matches!(e, EconomyError::InvalidInput { .. }));
    // Same shard: one step.
    let c = (0..1000)
        .map(|i| format!("carol{i}"))
        .find(|c| shard_of(c, 4) == shard_of(&a, 4))
        .unwrap();
    eco.transfer(&a, &c, "coins", 20, "t4").await.unwrap();
    assert_eq!(eco.wallet(&c).await.unwrap()["coins"], 20);
    assert_eq!(eco.wallet(&a).await.unwrap()["coins"], 50);
    // The receiver's history shows the incoming transfer.
    let txs = eco.transactions(&b, 10, None).await.unwrap().transactions;
    assert_eq!(txs[0].kind, TxKind::TransferIn);
    assert_eq!(txs[0].counterparty.as_deref(), Some(a.as_str()));
    // Sender's own transaction is completed, not pending.
    let txs = eco.transactions(&a, 10, None).await.unwrap().transactions;
    assert!(txs.iter().all(|t| t.status == TxStatus::Completed));
    // A credit that would overflow the receiver is rejected and refunded.
    eco.grant(grant_coins(&b, i64::MAX - 30, "big"))
        .await
        .unwrap();
    let e = eco.transfer(&a, &b, "coins", 1, "t5").await.unwrap_err();
    assert_eq!(e.code(), "limit_exceeded");
    assert_eq!(eco.wallet(&a).await.unwrap()["coins"], 50);
    let replay = eco.transfer(&a, &b, "coins", 1, "t5").await.unwrap();
    assert_eq!(replay.status, TxStatus::Failed);
    eco.shutdown().await;
}

/// Crash the node (drop the economy and the store, reopen the directory)
/// after each step of the cross-shard protocol; recovery at open finishes
/// the transfer exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_transfer_survives_a_crash_at_every_step() {
    let (a, b) = players_on_two_shards(4);
    let (sa, sb) = (shard_of(&a, 4), shard_of(&b, 4));
    // step = how many protocol steps ran before the crash.
    for step in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let tid = format!("xfer-{step}");
        {
            let eco = Economy::open(open_storage(dir.path()).await, config())
                .await
                .unwrap();
            eco.grant(grant_coins(&a, 100, "g")).await.unwrap();
            let prep = Command::TransferPrepare {
                transfer_id: tid.clone(),
                from: a.clone(),
                to: b.clone(),
                to_shard: sb,
                currency: "coins".into(),
                amount: 40,
                idem: IdemTag {
                    key: "t".into(),
                    body_hash: body_hash(&("transfer", &b, "coins", 40i64)),
                },
            };
            eco.write_raw(sa, prep).await.unwrap();
            if step >= 2 {
                let credit = Command::TransferCredit {
                    transfer_id: tid.clone(),
                    from: a.clone(),
                    to: b.clone(),
                    currency: "coins".into(),
                    amount: 40,
                };
                eco.write_raw(sb, credit).await.unwrap();
            }
            if step >= 3 {
                let commit = Command::TransferCommit {
                    transfer_id: tid.clone(),
                };
                eco.write_raw(sa, commit).await.unwrap();
            }
            // Crash: no recovery ran (the task only looks at holds older
            // than HOLD_RECOVERY_AGE_MS after its first pass, which ran
            // before the hold existed).
            eco.shutdown().await;
        }
        let eco = Economy::open(open_storage(dir.path()).await, config())
            .await
            .unwrap();
        // The first recovery pass runs right after open; wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while eco.state_of(sa).hold(&tid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(eco.recover().await, 0);
        assert!(eco.state_of(sa).hold(&tid).is_none(), "step {step}");
        assert_eq!(eco.wallet(&a).await.unwrap()["coins"], 60, "step {step}");
        assert_eq!(eco.wallet(&b).await.unwrap()["coins"], 40, "step {step}");
        // The client's retry of the original request reports completion.
        let r = eco.transfer(&a, &b, "coins", 40, "t").await.unwrap();
        assert!(r.replayed);
        assert_eq!(r.status, TxStatus::Completed);
        assert_eq!(eco.wallet(&b).await.unwrap()["coins"], 40);
        eco.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_fails_fast_and_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EconomyConfig {
        bootstrap: false,
        leader_wait_ms: 200,
        ..config()
    };
    let eco = Economy::open(open_storage(dir.path()).await, cfg)
        .await
        .unwrap();
    let t = Instant::now();
    let e = eco
        .purchase("p1", "potion", 1, "coins", "k")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let e = eco.wallet("p1").await.unwrap_err();
    assert!(e.is_retryable());
    eco.shutdown().await;
}

/// Node `id` (1..=3) of a one-shard, three-voter cluster on `net`.
fn member_config(net: &std::sync::Arc<InProcessNetwork>, id: NodeId) -> EconomyConfig {
    EconomyConfig {
        shards: 1,
        node_id: id,
        node_addr: format!("n{id}"),
        bootstrap_members: (1..=3).map(|i| (i, format!("n{i}"))).collect(),
        transport: RaftTransport::InProcess(net.clone()),
        ..config()
    }
}

/// Open nodes 1..=3 at once, one store per dir.
async fn open_three(
    dirs: &[tempfile::TempDir],
    cfg: impl Fn(NodeId) -> EconomyConfig,
) -> [Economy; 3] {
    let (s1, s2, s3) = (
        open_storage(dirs[0].path()).await,
        open_storage(dirs[1].path()).await,
        open_storage(dirs[2].path()).await,
    );
    let (e1, e2, e3) = tokio::join!(
        Economy::open(s1, cfg(1)),
        Economy::open(s2, cfg(2)),
        Economy::open(s3, cfg(3))
    );
    [e1.unwrap(), e2.unwrap(), e3.unwrap()]
}

/// Three nodes in one process over the in-process network: replication to
/// followers, forwarding from a follower, fail-over when the leader stops,
/// and a restarted node catching up (by snapshot once the log is purged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let net = InProcessNetwork::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg = |id: NodeId| EconomyConfig {
        snapshot_logs_since_last: 20,
        log_entries_kept_after_snapshot: 5,
        leader_wait_ms: 2_000,
        ..member_config(&net, id)
    };
    let mut nodes: Vec<Option<Economy>> = open_three(&dirs, &cfg)
        .await
        .into_iter()
        .map(Some)
        .collect();
    let leader_of = |nodes: &Vec<Option<Economy>>| -> Option<NodeId> {
        nodes.iter().flatten().find_map(|e| {
            let info = &e.shards()[0];
            (info.leader.is_some() && info.voters.len() == 3)
                .then_some(info.leader)
                .flatten()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_of(&nodes).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l1 = leader_of(&nodes).expect("a leader");
    let leader = nodes[(l1 - 1) as usize].clone().unwrap();
    for i in 0..5 {
        leader
            .grant(grant_coins("p", 10, &format!("a{i}")))
            .await
            .unwrap();
    }
    // A follower forwards the write to the leader, and its read is
    // linearizable (read index from the leader), so it sees its own write.
    let follower = nodes
        .iter()
        .flatten()
        .find(|e| e.shards()[0].leader != Some(e.inner_id()))
        .unwrap();
    let r = follower.grant(grant_coins("p", 1, "f")).await.unwrap();
    assert_eq!(r.balances["coins"], 51);
    assert_eq!(follower.wallet("p").await.unwrap()["coins"], 51);
    // The same key through another node replays the first receipt.
    let again = leader.grant(grant_coins("p", 1, "f")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.transaction_id, r.transaction_id);
    // Followers apply the same state.
    let target = leader.shards()[0].last_log_index;
    for e in nodes.iter().flatten() {
        e.raft(0)
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.last_applied.map(|l| l.index) >= target,
                "follower applied",
            )
            .await
            .unwrap();
        assert_eq!(e.state_of(0).player("p").unwrap().wallet["coins"], 51);
    }

    // Stop the leader: the other two elect a new one and keep serving.
    let old = nodes[(l1 - 1) as usize].take().unwrap();
    drop(leader);
    old.shutdown().await;
    drop(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    let l2 = loop {
        let l = nodes.iter().flatten().find_map(|e| {
            let info = &e.shards()[0];
            info.leader.filter(|l| *l != l1)
        });
        if let Some(l) = l {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leader = nodes[(l2 - 1) as usize].clone().unwrap();
    for i in 0..60 {
        leader
            .grant(grant_coins("p", 1, &format!("b{i}")))
            .await
            .unwrap();
    }
    assert_eq!(leader.wallet("p").await.unwrap()["coins"], 111);
    leader
        .raft(0)
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 10), "leader purged")
        .await
        .unwrap();

    // The old leader restarts from its store and catches up.
    let back = Economy::open(open_storage(dirs[(l1 - 1) as usize].path()).await, cfg(l1))
        .await
        .unwrap();
    let target = leader.shards()[0].last_log_index;
    back.raft(0)
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.last_applied.map(|l| l.index) >= target,
            "restarted node applied",
        )
        .await
        .unwrap();
    assert_eq!(back.state_of(0).player("p").unwrap().wallet["coins"], 111);
    // Its log was behind the leader's purge point: it got a snapshot.
    assert!(back.shards()[0].snapshot_index.is_some_and(|i| i > 10));

    // Lose the quorum: stop all but the current leader. It refuses writes
    // and reads with a retryable error within the named bounds.
    back.shutdown().await;
    drop(back);
    for e in nodes.iter_mut() {
        if e.as_ref().is_some_and(|e| e.inner_id() != l2) {
            let e = e.take().unwrap();
            e.shutdown().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let t = Instant::now();
    let e = leader
        .grant(grant_coins("p", 1, "lonely"))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let e = leader.wallet("p").await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    drop(leader);
    for e in nodes.iter().flatten() {
        e.shutdown().await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Purchases per second and latency, one client and 64 concurrent clients
/// over 64 players (16 shards). Run with
/// `cargo test -p meridian-replication --lib economy::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_purchases() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EconomyConfig {
        shards: 16,
        ..config()
    };
    let eco = Economy::open(open_storage(dir.path()).await, cfg)
        .await
        .unwrap();
    for (clients, per_client) in [(1usize, 500usize), (64, 50)] {
        for c in 0..clients {
            let p = format!("bench{clients}-{c}");
            eco.grant(grant_coins(&p, 1_000_000, "g")).await.unwrap();
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let eco = eco.clone();
            tasks.push(tokio::spawn(async move {
                let p = format!("bench{clients}-{c}");
                let mut lat = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let t = Instant::now();
                    eco.purchase(&p, "potion", 1, "coins", &format!("k{i}"))
                        .await
                        .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort();
        eprintln!(
            "clients={clients} purchases={} rate={:.0}/s p50={:?} p99={:?}",
            all.len(),
            all.len() as f64 / secs,
            percentile(&all, 0.5),
            percentile(&all, 0.99)
        );
    }
    eco.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EconomyConfig {
        shards: 1,
        writes_in_flight_per_shard_max: 2,
        ..config()
    };
    let eco = Economy::open(open_storage(dir.path()).await, cfg)
        .await
        .unwrap();
    eco.grant(grant_coins("p", 1_000, "g")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let eco = eco.clone();
        tasks.push(tokio::spawn(async move {
            eco.purchase("p", "potion", 1, "coins", &format!("k{i}"))
                .await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.is_retryable() => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok + busy, 40);
    assert!(busy > 0 && ok >= 2, "ok={ok} busy={busy}");
    assert_eq!(eco.wallet("p").await.unwrap()["coins"], 1_000 - 10 * ok);
    eco.shutdown().await;
}

/// An in-memory [`crate::store::Store`] that models a power cut exactly:
/// `flush` makes everything written so far durable, and [`CrashStore::crash`]
/// returns a new store holding only what was durable.
#[derive(Default)]
struct CrashStore {
    maps: std::sync::Mutex<(Map, Map)>,
}

type Map = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

impl CrashStore {
    fn crash(&self) -> CrashStore {
        let durable = self.maps.lock().unwrap().1.clone();
        CrashStore {
            maps: std::sync::Mutex::new((durable.clone(), durable)),
        }
    }
}

impl crate::store::Store for CrashStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        Ok(self.maps.lock().unwrap().0.get(key).cloned())
    }
    fn range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::store::Kv>, crate::store::StoreError> {
        use std::ops::Bound;
        let m = self.maps.lock().unwrap();
        let hi = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
        Ok(m.0
            .range((Bound::Included(from.to_vec()), hi))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn range_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::store::Kv>, crate::store::StoreError> {
        use std::ops::Bound;
        let m = self.maps.lock().unwrap();
        let hi = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
        Ok(m.0
            .range((Bound::Included(from.to_vec()), hi))
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn commit(&self, batch: &crate::store::Batch) -> Result<(), crate::store::StoreError> {
        let mut m = self.maps.lock().unwrap();
        for (k, want) in &batch.checks {
            if m.0.get(k) != want.as_ref() {
                return Err(crate::store::StoreError::Conflict(
                    String::from_utf8_lossy(k).into_owned(),
                ));
            }
        }
        for op in &batch.ops {
            match op {
                crate::store::Op::Put(k, v) => {
                    m.0.insert(k.clone(), v.clone());
                }
                crate::store::Op::Delete(k) => {
                    m.0.remove(k);
                }
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), crate::store::StoreError> {
        let mut m = self.maps.lock().unwrap();
        m.1 = m.0.clone();
        Ok(())
    }
}

/// A storm of purchases and cross-shard transfers, a power cut at a random
/// moment (only fsynced data survives), restart: every acknowledged write is
/// there exactly once, holds are resolved, and money is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_a_storm_loses_no_acknowledged_write() {
    use std::sync::{Arc, Mutex};
    for round in 0..4u64 {
        let store = Arc::new(CrashStore::default());
        let cfg = EconomyConfig {
            shards: 4,
            snapshot_logs_since_last: 40,
            log_entries_kept_after_snapshot: 5,
            ..config()
        };
        let eco = Economy::open(Storage::new(store.clone()), cfg.clone())
            .await
            .unwrap();
        let players: Vec<String> = (0..8).map(|i| format!("storm{i}")).collect();
        for p in &players {
            eco.grant(grant_coins(p, 10_000, "seed")).await.unwrap();
        }
        let acked: Arc<Mutex<Vec<(String, String, Receipt)>>> = Arc::default();
        let mut tasks = Vec::new();
        for (n, p) in players.iter().enumerate() {
            let (eco, acked, p) = (eco.clone(), acked.clone(), p.clone());
            let other = players[(n + 1) % players.len()].clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..1_000 {
                    let key = format!("{p}-{i}");
                    let r = if i % 3 == 0 {
                        eco.transfer(&p, &other, "coins", 7, &key).await
                    } else {
                        eco.purchase(&p, "potion", 1, "coins", &key).await
                    };
                    match r {
                        Ok(r) => acked.lock().unwrap().push((p.clone(), key, r)),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 70 * round)).await;
        // The power cut: acknowledged-so-far first, then what is durable.
        let acked_now = acked.lock().unwrap().clone();
        let survivor = Arc::new(store.crash());
        eco.shutdown().await;
        for t in tasks {
            let _ = t.await;
        }
        drop(eco);
        assert!(!acked_now.is_empty(), "round {round}: nothing acknowledged");

        let eco = Economy::open(Storage::new(survivor.clone()), cfg.clone())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while eco.shards().iter().any(|s| s.open_holds > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(eco.recover().await, 0, "round {round}: open holds");
        // Every acknowledged write is there, with its first result.
        for (p, key, r) in &acked_now {
            let again = if r.items.is_empty() {
                let n: usize = players.iter().position(|x| x == p).unwrap();
                let other = &players[(n + 1) % players.len()];
                eco.transfer(p, other, "coins", 7, key).await.unwrap()
            } else {
                eco.purchase(p, "potion", 1, "coins", key).await.unwrap()
            };
            assert!(again.replayed, "round {round}: {key} lost");
            assert_eq!(again.transaction_id, r.transaction_id);
        }
        // Money: 8 x 10_000 granted; purchases (10 each) the only sink.
        let mut coins = 0i64;
        let mut bought = 0i64;
        let mut ids = std::collections::BTreeSet::new();
        for p in &players {
            coins += eco
                .wallet(p)
                .await
                .unwrap()
                .get("coins")
                .copied()
                .unwrap_or(0);
            let inv = eco.inventory(p).await.unwrap();
            let held: u64 = inv.iter().map(|i| i.quantity).sum();
            let mut purchases = 0u64;
            let mut cursor = None;
            loop {
                let page = eco.transactions(p, 100, cursor.as_deref()).await.unwrap();
                for t in &page.transactions {
                    assert!(ids.insert(t.id.clone()), "duplicate transaction {}", t.id);
                    assert_ne!(t.status, TxStatus::Pending);
                    if t.kind == TxKind::Purchase {
                        purchases += 1;
                    }
                }
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(held, purchases, "round {round}: items of {p}");
            bought += purchases as i64;
        }
        assert_eq!(
            coins + 10 * bought,
            80_000,
            "round {round}: money not conserved"
        );
        eco.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_directory_claims_are_unique_idempotent_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let eco = Economy::open(open_storage(dir.path()).await, config())
            .await
            .unwrap();
        eco.claim_name("user:alice", "p1").await.unwrap();
        eco.claim_name("user:alice", "p1").await.unwrap();
        assert_eq!(
            eco.claim_name("user:alice", "p2").await.unwrap_err(),
            EconomyError::NameTaken {
                name: "user:alice".into()
            }
        );
        // Releasing someone else's name does nothing.
        eco.release_name("user:alice", "p2").await.unwrap();
        assert!(eco.claim_name("user:alice", "p2").await.is_err());
        eco.release_name("user:alice", "p1").await.unwrap();
        eco.claim_name("user:alice", "p2").await.unwrap();
        eco.claim_name("mail:a@example.com", "p2").await.unwrap();
        // Bad input names the field.
        let long = "x".repeat(DIRECTORY_NAME_BYTES_MAX + 1);
        assert!(matches!(
            eco.claim_name(&long, "p1").await.unwrap_err(),
            EconomyError::InvalidInput { field, .. } if field == "name"
        ));
        assert!(matches!(
            eco.claim_name("", "p1").await.unwrap_err(),
            EconomyError::InvalidInput { field, .. } if field == "name"
        ));
        eco.shutdown().await;
    }
    let eco = Economy::open(open_storage(dir.path()).await, config())
        .await
        .unwrap();
    assert!(
        eco.claim_name("user:alice", "p1").await.is_err(),
        "lost on restart"
    );
    eco.claim_name("mail:a@example.com", "p2").await.unwrap();
    eco.shutdown().await;
}

/// The leader notices that most writes come in at another voter and hands
/// the shard over to it; writes keep working (forwarded) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_follows_the_writes() {
    let net = InProcessNetwork::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = open_three(&dirs, |id| member_config(&net, id)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(l) = nodes[0].shards()[0].leader {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let l = &nodes[(leader - 1) as usize];
    let target = if leader == 1 { 2 } else { 1 };
    let f = &nodes[(target - 1) as usize];
    // 30 writes come in at the follower, 2 at the leader.
    for i in 0..30 {
        f.grant(grant_coins("p", 1, &format!("f{i}")))
            .await
            .unwrap();
    }
    for i in 0..2 {
        l.grant(grant_coins("p", 1, &format!("l{i}")))
            .await
            .unwrap();
    }
    // Too few writes, or too small a share: no move.
    assert!(l.leadership_moves(100, 0.6).is_empty());
    for i in 30..60 {
        f.grant(grant_coins("p", 1, &format!("f{i}")))
            .await
            .unwrap();
    }
    assert_eq!(l.leadership_moves(20, 0.6), vec![(0, target)]);
    // Not the leader / not a voter / itself: refused.
    assert!(f
        .hand_over(0, leader, Duration::from_secs(1))
        .await
        .is_err());
    assert!(l.hand_over(0, 99, Duration::from_secs(1)).await.is_err());
    assert!(l
        .hand_over(0, leader, Duration::from_secs(1))
        .await
        .is_err());
    // Wait until the target has the whole log, then hand over.
    let last = l.shards()[0].last_log_index;
    f.raft(0)
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.last_applied.map(|x| x.index) >= last, "caught up")
        .await
        .unwrap();
    let t = Instant::now();
    l.hand_over(0, target, Duration::from_secs(5))
        .await
        .unwrap();
    eprintln!("hand-over took {:?}", t.elapsed());
    for n in &nodes {
        n.raft(0)
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_leader == Some(target), "new leader seen")
            .await
            .unwrap();
    }
    // Writes through the old leader are forwarded; nothing was lost.
    let r = l.grant(grant_coins("p", 1, "after")).await.unwrap();
    assert_eq!(r.balances["coins"], 63);
    assert_eq!(f.wallet("p").await.unwrap()["coins"], 63);
    for n in &nodes {
        n.shutdown().await;
    }
}
