//! Leaderboards and stats through the real binary: 10,000 players' scores,
//! then top-100, paging, around-me and rank checked against a model; bad
//! input; stats/XP in the profile; `kill -9` loses no acknowledged score.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const PLAYERS: usize = 10_000;
const CONCURRENCY: usize = 32;

async fn device_players(base: &str, n: usize, tag: &str) -> Vec<(String, String)> {
    futures::stream::iter(0..n)
        .map(|i| {
            let base = base.to_string();
            let tag = tag.to_string();
            async move {
                let (s, _, b) = call(
                    client()
                        .post(format!("{base}/auth/device"))
                        .json(&json!({"device_id": format!("{tag}-device-{i:06}")})),
                )
                .await;
                assert_eq!(s, 201, "{b}");
                (
                    b["player_id"].as_str().unwrap().to_string(),
                    b["access_token"].as_str().unwrap().to_string(),
                )
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

async fn submit(base: &str, board: &str, player: &str, score: Value) -> (u16, Value) {
    let (s, _, b) = call(
        client()
            .post(format!("{base}/leaderboards/{board}/scores"))
            .header("authorization", format!("Bearer {SERVER_TOKEN}"))
            .json(&json!({"player_id": player, "score": score})),
    )
    .await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_players_top_around_and_rank() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let players = device_players(&base, PLAYERS, "lb").await;
    // Distinct scores (7919 is coprime with 1_000_003), so the order is unambiguous.
    let score_of = |i: usize| ((i as i64) * 7919) % 1_000_003;
    futures::stream::iter(players.iter().enumerate())
        .map(|(i, (p, _))| {
            let base = base.clone();
            async move {
                let (s, b) = submit(&base, "arena", p, json!(score_of(i))).await;
                assert_eq!(s, 200, "{b}");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    // A worse score does not replace a best.
    let (s, b) = submit(&base, "arena", &players[0].0, json!(-1)).await;
    assert_eq!(s, 400, "below min_score: {b}");

    // The model: descending score.
    let mut model: Vec<(i64, &str)> = players
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (score_of(i), p.as_str()))
        .collect();
    model.sort_by_key(|m| std::cmp::Reverse(m.0));
    let rank_of: BTreeMap<&str, usize> = model
        .iter()
        .enumerate()
        .map(|(r, (_, p))| (*p, r + 1))
        .collect();

    let (s, _, top) = call(client().get(format!("{base}/leaderboards/arena?limit=100"))).await;
    assert_eq!(s, 200, "{top}");
    assert_eq!(top["total"], PLAYERS);
    assert_eq!(top["period"], "all");
    let entries = top["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 100);
    for (k, e) in entries.iter().enumerate() {
        assert_eq!(e["rank"], k + 1);
        assert_eq!(e["player_id"], model[k].1, "rank {}", k + 1);
        assert_eq!(e["score"], model[k].0);
        assert!(e["username"].as_str().unwrap().starts_with("guest-"), "{e}");
        assert!(e["last_updated"].is_string());
    }
    // Next page through the cursor.
    let cursor = top["next_cursor"].as_str().unwrap();
    let (_, _, page2) = call(client().get(format!(
        "{base}/leaderboards/arena?limit=100&cursor={cursor}"
    )))
    .await;
    assert_eq!(page2["entries"][0]["rank"], 101);
    assert_eq!(page2["entries"][0]["player_id"], model[100].1);

    // Around a mid-table player, and their rank.
    let me = players[4321].0.as_str();
    let my_rank = rank_of[me];
    let (s, _, around) =
        call(client().get(format!("{base}/leaderboards/arena?around={me}&n=5"))).await;
    assert_eq!(s, 200, "{around}");
    let rows = around["entries"].as_array().unwrap();
    assert_eq!(rows.len(), 11);
    for (k, e) in rows.iter().enumerate() {
        let r = my_rank - 5 + k;
        assert_eq!(e["rank"], r);
        assert_eq!(e["player_id"], model[r - 1].1);
    }
    let (s, _, mine) = call(client().get(format!("{base}/leaderboards/arena/players/{me}"))).await;
    assert_eq!(s, 200);
    assert_eq!(mine["rank"], my_rank);
    assert_eq!(mine["score"], score_of(4321));

    // Definitions are public.
    let (_, _, defs) = call(client().get(format!("{base}/leaderboards"))).await;
    let names: Vec<&str> = defs["boards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"arena") && names.contains(&"weekly_kills"),
        "{defs}"
    );
}

#[tokio::test]
async fn bad_input_roles_stats_and_admin_boards() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let players = device_players(&base, 2, "bad").await;
    let (p, token) = (&players[0].0, &players[0].1);

    let (s, b) = submit(&base, "nope", p, json!(5)).await;
    assert_eq!((s, error_code(&b).as_str()), (404, "unknown_board"));
    let (s, b) = submit(&base, "arena", p, json!(1.5)).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_field"), "{b}");
    let (s, b) = submit(&base, "arena", p, json!("NaN")).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_field"), "{b}");
    let (s, b) = submit(&base, "arena", p, json!(2_000_000_000i64)).await;
    assert_eq!(
        (s, error_code(&b).as_str()),
        (400, "score_out_of_bounds"),
        "{b}"
    );
    let (s, b) = submit(&base, "arena", "not-a-uuid", json!(5)).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = submit(
        &base,
        "arena",
        "00000000-0000-0000-0000-000000000000",
        json!(5),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    // A player may not submit, not even their own score.
    let (s, _, b) = call(
        client()
            .post(format!("{base}/leaderboards/arena/scores"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"player_id": p, "score": 5})),
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (403, "forbidden"));
    // Limit and cursor abuse.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "cursor=abc",
        "around=xyz",
        "around=00000000-0000-0000-0000-000000000000&cursor=5",
        "n=101&around=00000000-0000-0000-0000-000000000000",
        "bogus=1",
    ] {
        let (s, _, b) = call(client().get(format!("{base}/leaderboards/arena?{q}"))).await;
        assert!(s == 400 || s == 404, "{q}: {s} {b}");
        error_code(&b);
    }
    let (s, _, b) = call(client().get(format!("{base}/leaderboards/arena?limit=1000"))).await;
    assert_eq!(s, 200, "limit at the edge: {b}");

    // Sum boards add up; weekly boards carry their period.
    for _ in 0..3 {
        let (s, b) = submit(&base, "weekly_kills", p, json!(4)).await;
        assert_eq!(s, 200, "{b}");
    }
    let (_, _, wk) = call(client().get(format!("{base}/leaderboards/weekly_kills"))).await;
    assert_eq!(wk["entries"][0]["score"], 12);
    assert!(
        wk["period"].as_str().unwrap().starts_with("weekly-"),
        "{wk}"
    );

    // Stats and XP show in the profile; the level follows the curve.
    let (s, _, st) = call(
        client()
            .post(format!("{base}/player/{p}/stats"))
            .header("authorization", format!("Bearer {SERVER_TOKEN}"))
            .json(&json!({"updates": [{"xp": {"amount": 250}}, {"add": {"name": "kills", "delta": 3}}, {"achievement": {"name": "first_win"}}]})),
    )
    .await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["xp"], 250, "{st}");
    let (_, _, prof) = call(
        client()
            .get(format!("{base}/player/{p}/profile"))
            .header("authorization", format!("Bearer {token}")),
    )
    .await;
    assert_eq!(prof["xp"], 250, "{prof}");
    assert!(prof["level"].as_u64().unwrap() > 1, "{prof}");
    assert_eq!(prof["stats"]["counters"]["kills"], 3);
    assert_eq!(prof["stats"]["achievements"][0], "first_win");
    let (s, _, _) = call(
        client()
            .post(format!("{base}/player/{p}/stats"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"updates": []})),
    )
    .await;
    assert_eq!(s, 403);

    // Admins add boards at runtime.
    let def = json!({"name": "duel", "sort": "desc", "operator": "latest", "reset": "daily"});
    let (s, _, b) = call(
        client()
            .post(format!("{base}/admin/leaderboards"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .json(&def),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    // The same definition again is idempotent; a different one under that name conflicts.
    let (s, _, _) = call(
        client()
            .post(format!("{base}/admin/leaderboards"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .json(&def),
    )
    .await;
    assert_eq!(s, 201);
    let other = json!({"name": "duel", "sort": "asc", "operator": "latest", "reset": "daily"});
    let (s, _, b) = call(
        client()
            .post(format!("{base}/admin/leaderboards"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .json(&other),
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (409, "board_exists"));
    let (s, _, _) = call(
        client()
            .post(format!("{base}/admin/leaderboards"))
            .header("authorization", format!("Bearer {token}"))
            .json(&other),
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = submit(&base, "duel", p, json!(7)).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_loses_no_acknowledged_score() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let base = node.url();
    let players = device_players(&base, 200, "crash").await;
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, i64)>>> = Default::default();
    let mut tasks = Vec::new();
    for (i, (p, _)) in players.iter().enumerate() {
        let (base, p, acked) = (base.clone(), p.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(i as u64)).await;
            let score = 1000 + i as i64;
            let resp = client()
                .post(format!("{base}/leaderboards/arena/scores"))
                .header("authorization", format!("Bearer {SERVER_TOKEN}"))
                .json(&json!({"player_id": p, "score": score}))
                .send()
                .await;
            if let Ok(r) = resp {
                if r.status().as_u16() == 200 {
                    acked.lock().unwrap().push((p, score));
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while acked.lock().unwrap().len() < 60 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    node.spawn();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50, "too few acknowledged: {}", acked.len());
    for (p, score) in &acked {
        let (s, _, e) =
            call(client().get(format!("{}/leaderboards/arena/players/{p}", node.url()))).await;
        assert_eq!(s, 200, "acknowledged score of {p} lost: {e}");
        assert_eq!(e["score"], *score);
    }
    eprintln!("{} acknowledged scores survived kill -9", acked.len());
}

#[tokio::test]
async fn cron_boards_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let admin = |body: Value| {
        client()
            .post(format!("{base}/admin/leaderboards"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .json(&body)
    };
    let (s, _, b) = call(admin(
        json!({"name": "friday_cup", "reset": "cron", "cron": "0 18 * * 5"}),
    ))
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = call(admin(
        json!({"name": "bad_cup", "reset": "cron", "cron": "61 18 * * 5"}),
    ))
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().starts_with("cron"),
        "{b}"
    );
    let players = device_players(&base, 1, "cron").await;
    let (s, b) = submit(&base, "friday_cup", &players[0].0, json!(42)).await;
    assert_eq!(s, 200, "{b}");
    let (_, _, page) = call(client().get(format!("{base}/leaderboards/friday_cup"))).await;
    assert!(
        page["period"].as_str().unwrap().starts_with("cron-"),
        "{page}"
    );
    assert_eq!(page["entries"][0]["score"], 42);
}
