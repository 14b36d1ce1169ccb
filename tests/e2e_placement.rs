//! Placement across the three catalog regions `meridian demo` runs (eu-west,
//! us-east, ap-south), each a real `meridian` process in one mesh, started
//! by the test harness on free ports (not by `meridian demo` itself, whose
//! fixed catalog ports would collide with tests running in parallel): players whose measured latencies favour different regions
//! pick their nearest region from `GET /regions` (as `meridian ping-regions`
//! does), queue there, and are placed in that region: the match names it and
//! its game server is that region's game port. Bots then play each match.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

fn start_region(dir: &Path, region: &str, ca: &Path, seeds: &[&Node]) -> Node {
    let seeds: Vec<String> = seeds
        .iter()
        .map(|n| format!("\"{}\"", n.env("MERIDIAN_MESH_ADDR").unwrap()))
        .collect();
    let seeds = format!("[{}]", seeds.join(","));
    Node::start(
        &dir.join(region),
        &[
            ("MERIDIAN_REGION", region),
            ("MERIDIAN_NODE_NAME", region),
            ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
            ("MERIDIAN_MESH__SEEDS", &seeds),
            ("MERIDIAN_DGS__MATCH_DURATION_S", "2"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn players_are_placed_in_their_nearest_region() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let eu = start_region(dir.path(), "eu-west", &ca, &[]);
    let us = start_region(dir.path(), "us-east", &ca, &[&eu]);
    let ap = start_region(dir.path(), "ap-south", &ca, &[&eu, &us]);
    let nodes: BTreeMap<&str, &Node> = [("eu-west", &eu), ("us-east", &us), ("ap-south", &ap)]
        .into_iter()
        .collect();

    // The region list a client gets from any node, once the mesh has converged.
    let mut regions: Vec<Value> = Vec::new();
    wait_for(
        "all three regions live in /regions",
        Duration::from_secs(20),
        async || {
            let (_, _, b) = call(client().get(format!("{}/regions", eu.url()))).await;
            regions = b.as_array().cloned().unwrap_or_default();
            regions.len() == 3
                && regions.iter().all(|r| {
                    let url = r["api_url"].as_str().unwrap_or("");
                    nodes
                        .get(r["region"].as_str().unwrap_or(""))
                        .is_some_and(|n| url == n.url())
                })
        },
    )
    .await;
    let region_view = |name: &str| -> Value {
        regions
            .iter()
            .find(|r| r["region"] == name)
            .cloned()
            .unwrap()
    };

    // Two players per favoured region (measured latencies to every region).
    let profiles: [(&str, [(&str, f64); 3]); 3] = [
        (
            "eu-west",
            [("eu-west", 18.0), ("us-east", 85.0), ("ap-south", 140.0)],
        ),
        (
            "us-east",
            [("eu-west", 90.0), ("us-east", 12.0), ("ap-south", 190.0)],
        ),
        (
            "ap-south",
            [("eu-west", 150.0), ("us-east", 210.0), ("ap-south", 25.0)],
        ),
    ];
    let mut players = Vec::new();
    for (favoured, lat) in &profiles {
        for k in 0..2 {
            let latencies: BTreeMap<&str, f64> = lat.iter().copied().collect();
            // The client's choice: the lowest measured latency.
            let nearest = *latencies
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(nearest, *favoured);
            let api = region_view(nearest)["api_url"]
                .as_str()
                .unwrap()
                .to_string();
            let (s, _, b) = call(
                client()
                    .post(format!("{api}/auth/device"))
                    .json(&json!({"device_id": format!("placement-{favoured}-{k}")})),
            )
            .await;
            assert_eq!(s, 201, "{b}");
            let token = b["access_token"].as_str().unwrap().to_string();
            let (s, _, t) = call(
                client()
                    .post(format!("{api}/matchmaking/join"))
                    .header("authorization", format!("Bearer {token}"))
                    .json(&json!({"game_mode": "duel", "latencies": latencies})),
            )
            .await;
            assert_eq!(s, 202, "{t}");
            players.push((
                favoured.to_string(),
                api,
                token,
                b["player_id"].as_str().unwrap().to_string(),
                t["ticket_id"].as_str().unwrap().to_string(),
            ));
        }
    }

    // Each is placed in its nearest region, on that region's game server.
    let mut matches: Vec<Value> = vec![Value::Null; players.len()];
    wait_for(
        "every player matched",
        Duration::from_secs(20),
        async || {
            for (i, (_, api, token, _, ticket)) in players.iter().enumerate() {
                if matches[i].is_null() {
                    let (_, _, b) = call(
                        client()
                            .get(format!("{api}/matchmaking/status?ticket_id={ticket}"))
                            .header("authorization", format!("Bearer {token}")),
                    )
                    .await;
                    if b["status"] == "matched" {
                        matches[i] = b["match"].clone();
                    }
                }
            }
            matches.iter().all(|m| !m.is_null())
        },
    )
    .await;
    let mut sessions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, m) in matches.iter().enumerate() {
        let (favoured, _, _, pid, _) = &players[i];
        let view = region_view(favoured);
        assert_eq!(m["region"], favoured.as_str(), "player {i}: {m}");
        assert_eq!(
            (m["host"].as_str().unwrap(), m["port"].as_u64().unwrap()),
            (
                view["game_host"].as_str().unwrap(),
                view["game_port"].as_u64().unwrap()
            ),
            "player {i} not on {favoured}'s game server: {m}"
        );
        let game_addr = nodes[favoured.as_str()].env("MERIDIAN_GAME_ADDR").unwrap();
        assert_eq!(
            format!("{}:{}", m["host"].as_str().unwrap(), m["port"]),
            game_addr
        );
        assert!(m["players"].as_array().unwrap().iter().any(|p| p == pid));
        sessions
            .entry(m["session_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(favoured.clone());
    }
    // Three duels, one per region, never mixing regions.
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert!(sessions.values().all(|r| r.len() == 1), "{sessions:?}");

    // They really play there: each bot connects to its region's game port.
    let cfg = meridian_dgs::bot::BotConfig {
        arena: meridian_dgs::arena::ArenaConfig {
            duration_s: 2.0,
            ..Default::default()
        },
        match_timeout_ms: 20_000,
        ..Default::default()
    };
    let ended: Vec<bool> = futures::stream::iter(matches.iter())
        .map(|m| {
            let cfg = cfg.clone();
            let addr: std::net::SocketAddr =
                format!("{}:{}", m["host"].as_str().unwrap(), m["port"])
                    .parse()
                    .unwrap();
            let token =
                meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap())
                    .unwrap();
            async move {
                matches!(
                    meridian_dgs::bot::run_bot(addr, &token, &cfg).await,
                    Ok(meridian_dgs::bot::BotOutcome {
                        end: meridian_dgs::bot::BotEnd::Ended { .. },
                        ..
                    })
                )
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    assert!(ended.iter().all(|e| *e), "{ended:?}");

    // A region does not take a ticket whose players are too far from it.
    let (s, _, b) = call(
        client()
            .post(format!("{}/auth/device", ap.url()))
            .json(&json!({"device_id": "placement-far"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _, e) = call(
        client()
            .post(format!("{}/matchmaking/join", ap.url()))
            .header(
                "authorization",
                format!("Bearer {}", b["access_token"].as_str().unwrap()),
            )
            .json(&json!({"game_mode": "duel", "latencies": {"eu-west": 20.0, "ap-south": 400.0}})),
    )
    .await;
    assert_eq!(
        (s, error_code(&e).as_str()),
        (422, "no_region_within_latency")
    );
}

/// Cross-region offers: a duel ticket alone in its home region is offered to
/// a neighbour after `offer_after_s`; the neighbour matches it with its own
/// player after claiming it at home, so it lands in exactly one match, in
/// the neighbour region, and the home region shows and pushes the match.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_ticket_is_offered_to_a_neighbour_and_matched_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let cfg = dir.path().join("modes.toml");
    std::fs::write(
        &cfg,
        r#"
[[matchmaking.modes]]
name = "duel"
teams = 2
team_size = 1
max_latency_ms = 150
skill_window_start = 100.0
skill_window_widen_per_s = 25.0
max_wait_s = 60
allow_remote_region = true
offer_after_s = 1
"#,
    )
    .unwrap();
    let start = |region: &str, seeds: &[&Node]| {
        let seeds: Vec<String> = seeds
            .iter()
            .map(|n| format!("\"{}\"", n.env("MERIDIAN_MESH_ADDR").unwrap()))
            .collect();
        Node::start(
            &dir.path().join(region),
            &[
                ("MERIDIAN_REGION", region),
                ("MERIDIAN_NODE_NAME", region),
                ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
                ("MERIDIAN_MESH__SEEDS", &format!("[{}]", seeds.join(","))),
                (TEST_CONFIG_ENV, cfg.to_str().unwrap()),
            ],
        )
    };
    let eu = start("eu-west", &[]);
    let us = start("us-east", &[&eu]);
    wait_for(
        "the two regions see each other",
        Duration::from_secs(20),
        async || {
            let (_, _, b) = call(client().get(format!("{}/regions", eu.url()))).await;
            b.as_array().is_some_and(|r| {
                r.iter()
                    .filter(|x| x["status"] == "alive" || x["status"] == "self")
                    .count()
                    == 2
            })
        },
    )
    .await;
    // One player per region; each region alone has no opponent.
    let join = async |n: &Node, device: &str, latencies: Value| -> (String, String) {
        let (s, _, b) = call(
            client()
                .post(format!("{}/auth/device", n.url()))
                .json(&json!({"device_id": device})),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let token = b["access_token"].as_str().unwrap().to_string();
        let (s, _, t) = call(
            client()
                .post(format!("{}/matchmaking/join", n.url()))
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({"game_mode": "duel", "latencies": latencies})),
        )
        .await;
        assert_eq!(s, 202, "{t}");
        (token, t["ticket_id"].as_str().unwrap().to_string())
    };
    let (eu_token, eu_ticket) = join(
        &eu,
        "offer-eu-player-1",
        json!({"eu-west": 20.0, "us-east": 60.0}),
    )
    .await;
    let (us_token, us_ticket) = join(&us, "offer-us-player-1", json!({"us-east": 15.0})).await;
    let status = async |n: &Node, token: &str, ticket: &str| -> Value {
        let (s, _, b) = call(
            client()
                .get(format!("{}/matchmaking/status?ticket_id={ticket}", n.url()))
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        b
    };
    let mut eu_match = Value::Null;
    let mut us_match = Value::Null;
    let t = wait_for(
        "both matched across regions",
        Duration::from_secs(20),
        async || {
            let a = status(&eu, &eu_token, &eu_ticket).await;
            let b = status(&us, &us_token, &us_ticket).await;
            eu_match = a["match"].clone();
            us_match = b["match"].clone();
            a["status"] == "matched" && b["status"] == "matched"
        },
    )
    .await;
    eprintln!("matched across regions after {t:?}");
    // One match, in the neighbour region, on its game server.
    assert_eq!(
        eu_match["session_id"], us_match["session_id"],
        "{eu_match} {us_match}"
    );
    assert_eq!(eu_match["region"], "us-east", "{eu_match}");
    assert_eq!(eu_match["port"], us_match["port"]);
    assert!(eu_match["token"].is_string() && us_match["token"].is_string());
    assert_ne!(eu_match["token"], us_match["token"]);
    // The home region does not hold the ticket any more: no second match.
    let (s, _, q) = call(
        client()
            .get(format!("{}/admin/matchmaking", eu.url()))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(s, 200, "{q}");
    assert!(
        !q.to_string().contains(&eu_ticket),
        "the offered ticket is still queued at home: {q}"
    );
}
