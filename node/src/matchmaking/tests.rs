use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn mode(name: &str, teams: u32, team_size: u32) -> GameModeConfig {
    GameModeConfig {
        name: name.into(),
        teams,
        team_size,
        max_latency_ms: 100,
        skill_window_start: 50.0,
        skill_window_widen_per_s: 50.0,
        max_wait_s: 60,
        allow_remote_region: true,
        offer_after_s: 10,
        queue_tickets_max: 100,
    }
}

fn regions() -> Vec<String> {
    vec!["eu".into(), "us".into(), "ap".into()]
}

fn engine(modes: Vec<GameModeConfig>) -> Matchmaker {
    Matchmaker::new(&MatchmakingConfig { modes }, &regions(), "eu").unwrap()
}

fn lat(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(r, ms)| (r.to_string(), *ms)).collect()
}

fn solo(mode: &str, l: &[(&str, f64)]) -> TicketRequest {
    TicketRequest {
        players: vec![uuid::Uuid::new_v4()],
        mode: mode.into(),
        latencies_ms: lat(l),
    }
}

#[test]
fn config_parses_from_toml_and_rejects_unknown_fields() {
    let toml_text = r#"
        [[modes]]
        name = "5v5"
        teams = 2
        team_size = 5
        max_latency_ms = 120
        skill_window_start = 100.0
        skill_window_widen_per_s = 20.0
        max_wait_s = 90
        allow_remote_region = true
        offer_after_s = 15
        queue_tickets_max = 5000
    "#;
    let cfg: MatchmakingConfig = toml::from_str(toml_text).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.modes[0].players_per_match(), 10);
    let bad = toml_text.replace("max_wait_s", "max_waiting_s");
    assert!(toml::from_str::<MatchmakingConfig>(&bad).is_err());
    MatchmakingConfig::default().validate().unwrap();
}

#[test]
fn config_limits() {
    let mut m = mode("big", 4, 8);
    assert!(MatchmakingConfig {
        modes: vec![m.clone()]
    }
    .validate()
    .is_ok());
    m.team_size = 9; // 36 players > PLAYERS_PER_MATCH_MAX
    assert!(MatchmakingConfig { modes: vec![m] }.validate().is_err());
    let dup = MatchmakingConfig {
        modes: vec![mode("a", 2, 1), mode("a", 2, 1)],
    };
    assert_eq!(dup.validate(), Err(ConfigError::DuplicateMode("a".into())));
    let mut m = mode("lat", 2, 1);
    m.max_latency_ms = LATENCY_MS_MAX + 1;
    assert!(MatchmakingConfig { modes: vec![m] }.validate().is_err());
    assert!(Matchmaker::new(&MatchmakingConfig::default(), &regions(), "mars").is_err());
}

#[test]
fn join_errors() {
    let mut mm = engine(vec![mode("duel", 2, 1), mode("2v2", 2, 2)]);
    let now = Instant::now();
    assert!(matches!(
        mm.submit(solo("nope", &[("eu", 10.0)]), now),
        Err(JoinError::UnknownMode(_))
    ));
    for bad in [-1.0, f64::NAN, f64::INFINITY, LATENCY_MS_MAX as f64 + 1.0] {
        assert_eq!(
            mm.submit(solo("duel", &[("eu", bad)]), now),
            Err(JoinError::InvalidLatency {
                region: "eu".into()
            })
        );
    }
    // Edges of the latency range are accepted (as a measurement).
    assert!(mm.submit(solo("duel", &[("eu", 0.0)]), now).is_ok());
    assert!(mm
        .submit(
            solo("duel", &[("eu", 50.0), ("us", LATENCY_MS_MAX as f64)]),
            now
        )
        .is_ok());
    assert_eq!(
        mm.submit(solo("duel", &[("moon", 10.0)]), now),
        Err(JoinError::UnknownRegion {
            region: "moon".into()
        })
    );
    assert_eq!(
        mm.submit(solo("duel", &[]), now),
        Err(JoinError::NoLatencies)
    );
    assert_eq!(
        mm.submit(solo("duel", &[("eu", 101.0)]), now),
        Err(JoinError::NoRegionWithinLatency {
            max_latency_ms: 100
        })
    );
    let p = uuid::Uuid::new_v4();
    let req = |players: Vec<PlayerId>, m: &str| TicketRequest {
        players,
        mode: m.into(),
        latencies_ms: lat(&[("eu", 10.0)]),
    };
    assert_eq!(
        mm.submit(req(vec![], "duel"), now),
        Err(JoinError::EmptyParty)
    );
    assert_eq!(
        mm.submit(req(vec![p, uuid::Uuid::new_v4()], "duel"), now),
        Err(JoinError::PartyTooLarge { size: 2, max: 1 })
    );
    assert_eq!(
        mm.submit(req(vec![p, p], "2v2"), now),
        Err(JoinError::DuplicatePlayer(p))
    );
    let t = mm.submit(req(vec![p], "duel"), now).unwrap();
    assert_eq!(
        mm.submit(req(vec![p], "2v2"), now),
        Err(JoinError::AlreadyQueued {
            player: p,
            ticket: t
        })
    );
    // Cancel by someone else, then by the owner, then twice.
    let stranger = uuid::Uuid::new_v4();
    assert_eq!(mm.cancel(t, stranger, now), Err(CancelError::NotOwner));
    assert_eq!(
        mm.cancel(uuid::Uuid::new_v4(), p, now),
        Err(CancelError::NotFound)
    );
    mm.cancel(t, p, now).unwrap();
    assert_eq!(
        mm.cancel(t, p, now),
        Err(CancelError::NotSearching(TicketStatus::Cancelled))
    );
    // The player may queue again.
    assert!(mm.submit(req(vec![p], "2v2"), now).is_ok());
}

#[test]
fn queue_full_edge() {
    let mut m = mode("duel", 2, 1);
    m.queue_tickets_max = 3;
    let mut mm = engine(vec![m]);
    let now = Instant::now();
    // Ratings far apart so nothing matches.
    for i in 0..3 {
        let p = uuid::Uuid::new_v4();
        mm.ratings_mut().set("duel", p, 1000.0 + 1000.0 * i as f64);
        mm.submit(
            TicketRequest {
                players: vec![p],
                mode: "duel".into(),
                latencies_ms: lat(&[("eu", 10.0)]),
            },
            now,
        )
        .unwrap();
    }
    assert_eq!(
        mm.submit(solo("duel", &[("eu", 10.0)]), now),
        Err(JoinError::QueueFull {
            mode: "duel".into(),
            max: 3
        })
    );
    assert!(mm.tick(now).matches.is_empty());
    assert_eq!(mm.queue_len("duel"), Some(3));
}

#[test]
fn skill_window_widens_with_wait() {
    let mut mm = engine(vec![mode("duel", 2, 1)]);
    let t0 = Instant::now();
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    mm.ratings_mut().set("duel", a, 1500.0);
    mm.ratings_mut().set("duel", b, 1700.0);
    for p in [a, b] {
        mm.submit(
            TicketRequest {
                players: vec![p],
                mode: "duel".into(),
                latencies_ms: lat(&[("eu", 10.0)]),
            },
            t0,
        )
        .unwrap();
    }
    // Window 50 + 50/s: 200 apart needs 3 s.
    assert!(mm.tick(t0 + Duration::from_secs(2)).matches.is_empty());
    let r = mm.tick(t0 + Duration::from_secs(3));
    assert_eq!(r.matches.len(), 1);
    assert_eq!(mm.ticket_of(a), None, "matched players may queue again");
}

#[test]
fn region_minimizes_worst_latency_within_limit() {
    let mut mm = engine(vec![mode("duel", 2, 1)]);
    let now = Instant::now();
    // eu: worst 90; us: worst 60; ap: over the limit for one player.
    mm.submit(
        solo("duel", &[("eu", 20.0), ("us", 60.0), ("ap", 30.0)]),
        now,
    )
    .unwrap();
    mm.submit(
        solo("duel", &[("eu", 90.0), ("us", 40.0), ("ap", 150.0)]),
        now,
    )
    .unwrap();
    let r = mm.tick(now);
    assert_eq!(r.matches.len(), 1);
    assert_eq!(r.matches[0].region, "us");
    assert_eq!(r.matches[0].worst_latency_ms, 60);

    // No common region: no match.
    mm.submit(solo("duel", &[("eu", 20.0)]), now).unwrap();
    mm.submit(solo("duel", &[("us", 20.0)]), now).unwrap();
    assert!(mm.tick(now).matches.is_empty());
}

#[test]
fn local_only_modes_stay_home_and_are_not_offered() {
    let mut m = mode("duel", 2, 1);
    m.allow_remote_region = false;
    let mut mm = engine(vec![m]);
    let now = Instant::now();
    assert_eq!(
        mm.submit(solo("duel", &[("us", 5.0)]), now),
        Err(JoinError::NoRegionWithinLatency {
            max_latency_ms: 100
        })
    );
    mm.submit(solo("duel", &[("eu", 80.0), ("us", 5.0)]), now)
        .unwrap();
    assert!(mm.tick(now + Duration::from_secs(20)).offerable.is_empty());
    mm.submit(solo("duel", &[("eu", 70.0), ("us", 5.0)]), now)
        .unwrap();
    let r = mm.tick(now + Duration::from_secs(21));
    assert_eq!(r.matches[0].region, "eu");
}

#[test]
fn offer_once_then_expire() {
    let mut mm = engine(vec![mode("5v5", 2, 5)]);
    let t0 = Instant::now();
    let t = mm.submit(solo("5v5", &[("eu", 10.0)]), t0).unwrap();
    assert!(mm.tick(t0 + Duration::from_secs(9)).offerable.is_empty());
    let r = mm.tick(t0 + Duration::from_secs(10));
    assert_eq!(r.offerable.len(), 1);
    assert_eq!(r.offerable[0].ticket_id, t);
    assert_eq!(r.offerable[0].latencies_ms["eu"], 10);
    assert!(mm.tick(t0 + Duration::from_secs(11)).offerable.is_empty());
    assert!(mm
        .tick(t0 + Duration::from_millis(59_999))
        .expired
        .is_empty());
    let r = mm.tick(t0 + Duration::from_secs(60));
    assert_eq!(r.expired, vec![t]);
    let later = t0 + Duration::from_secs(61);
    assert_eq!(mm.ticket(t, later).unwrap().status, TicketStatus::Expired);
    // Forgotten after the retention period.
    mm.tick(t0 + Duration::from_secs(60 + TICKET_STATUS_RETENTION_S));
    assert!(mm.ticket(t, later).is_none());
}

#[test]
fn parties_stay_together_and_teams_balance() {
    let mut mm = engine(vec![mode("3v3", 2, 3)]);
    let now = Instant::now();
    let party: Vec<PlayerId> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let pair: Vec<PlayerId> = (0..2).map(|_| uuid::Uuid::new_v4()).collect();
    for ps in [party.clone(), pair.clone()] {
        mm.submit(
            TicketRequest {
                players: ps,
                mode: "3v3".into(),
                latencies_ms: lat(&[("eu", 10.0)]),
            },
            now,
        )
        .unwrap();
    }
    let single = mm.submit(solo("3v3", &[("eu", 10.0)]), now).unwrap();
    let r = mm.tick(now);
    assert_eq!(r.matches.len(), 1);
    let m = &r.matches[0];
    assert!(m.teams.contains(&party));
    let other = m.teams.iter().find(|t| **t != party).unwrap();
    assert_eq!(other.len(), 3);
    assert!(pair.iter().all(|p| other.contains(p)));
    assert_eq!(
        mm.ticket(single, now).unwrap().status,
        TicketStatus::Matched(m.match_id)
    );

    // Balance: ratings 1000..1600 in a 2v2 → sums as close as greedy gets.
    let mut mm = engine(vec![mode("2v2", 2, 2)]);
    for r in [1000.0, 1020.0, 1040.0, 1060.0] {
        let p = uuid::Uuid::new_v4();
        mm.ratings_mut().set("2v2", p, r);
        mm.submit(
            TicketRequest {
                players: vec![p],
                mode: "2v2".into(),
                latencies_ms: lat(&[("eu", 10.0)]),
            },
            now,
        )
        .unwrap();
    }
    let r = mm.tick(now);
    let tr = &r.matches[0].team_ratings;
    assert!((tr[0] - tr[1]).abs() <= 10.0 + 1e-9, "{tr:?}");
}

#[test]
fn release_requeues_unless_player_moved_on() {
    let mut mm = engine(vec![mode("duel", 2, 1)]);
    let now = Instant::now();
    let a = mm.submit(solo("duel", &[("eu", 10.0)]), now).unwrap();
    let b = mm.submit(solo("duel", &[("eu", 10.0)]), now).unwrap();
    let m = mm.tick(now).matches.pop().unwrap();
    // Player of `b` queues for something else before the release.
    let pb = mm.ticket(b, now).unwrap().players[0];
    mm.submit(
        TicketRequest {
            players: vec![pb],
            mode: "duel".into(),
            latencies_ms: lat(&[("us", 10.0)]),
        },
        now,
    )
    .unwrap();
    assert_eq!(mm.release_match(&m), 1);
    assert_eq!(mm.ticket(a, now).unwrap().status, TicketStatus::Searching);
    assert_eq!(mm.ticket(b, now).unwrap().status, TicketStatus::Cancelled);
    assert_eq!(mm.queue_len("duel"), Some(2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever arrives, cancels and waits: no ticket and no player is in
    /// two matches, teams have the mode's sizes, latency limits hold.
    #[test]
    fn no_ticket_matched_twice_and_teams_sized(
        ops in proptest::collection::vec(
            (0u8..3, 1u32..4, 1200.0f64..1800.0, 0u32..3, 0.0f64..150.0, 0u8..10),
            1..200,
        )
    ) {
        let modes = vec![mode("duel", 2, 1), mode("3v3", 2, 3), mode("ffa4", 4, 1)];
        let mut mm = engine(modes.clone());
        let t0 = Instant::now();
        let mut now = t0;
        let mut matched_tickets = HashSet::new();
        let mut matched_players = HashSet::new();
        let mut live: Vec<(TicketId, PlayerId)> = Vec::new();
        for (mi, party, rating, region, ms, action) in ops {
            let m = &modes[mi as usize];
            now += Duration::from_millis(200);
            if action == 0 && !live.is_empty() {
                let (t, p) = live.remove(0);
                let _ = mm.cancel(t, p, now);
            }
            let size = party.min(m.team_size) as usize;
            let players: Vec<PlayerId> = (0..size).map(|_| uuid::Uuid::new_v4()).collect();
            for p in &players {
                mm.ratings_mut().set(&m.name, *p, rating);
            }
            let r = ["eu", "us", "ap"][region as usize];
            let req = TicketRequest {
                players: players.clone(),
                mode: m.name.clone(),
                latencies_ms: lat(&[(r, ms), ("eu", 90.0)]),
            };
            if let Ok(t) = mm.submit(req, now) {
                live.push((t, players[0]));
            }
            let report = mm.tick(now);
            for pm in report.matches {
                let cfg = modes.iter().find(|c| c.name == pm.mode).unwrap();
                prop_assert_eq!(pm.teams.len(), cfg.teams as usize);
                for team in &pm.teams {
                    prop_assert_eq!(team.len(), cfg.team_size as usize);
                }
                prop_assert!(pm.worst_latency_ms <= cfg.max_latency_ms);
                for t in &pm.tickets {
                    prop_assert!(matched_tickets.insert(*t), "ticket matched twice");
                }
                for p in pm.teams.iter().flatten() {
                    prop_assert!(matched_players.insert(*p), "player matched twice");
                }
            }
        }
    }
}

/// Throughput of the tick pass. Run with
/// `cargo test -p meridian --lib matchmaking -- --ignored --nocapture`.
#[test]
#[ignore]
fn tick_throughput() {
    for (name, teams, team_size) in [("duel", 2, 1), ("5v5", 2, 5), ("ffa8", 8, 1)] {
        let mut m = mode(name, teams, team_size);
        m.queue_tickets_max = 1_000_000;
        m.skill_window_start = 100.0;
        let mut mm = engine(vec![m]);
        let n = 100_000;
        let now = Instant::now();
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..n {
            let p = uuid::Uuid::new_v4();
            mm.ratings_mut()
                .set(name, p, 1000.0 + (rnd() % 1000) as f64);
            let region = ["eu", "us", "ap"][(rnd() % 3) as usize];
            mm.submit(
                TicketRequest {
                    players: vec![p],
                    mode: name.into(),
                    latencies_ms: lat(&[(region, (rnd() % 60) as f64), ("eu", 80.0)]),
                },
                now,
            )
            .unwrap();
        }
        let t = Instant::now();
        let r = mm.tick(now + Duration::from_millis(200));
        let el = t.elapsed();
        let matched: usize = r.matches.iter().map(|m| m.tickets.len()).sum();
        println!(
            "mode {name}: queue {n} tickets, one tick {:.1} ms, matched {matched} tickets in {} matches => {:.0} tickets/s processed",
            el.as_secs_f64() * 1e3,
            r.matches.len(),
            n as f64 / el.as_secs_f64()
        );
        assert!(matched > n / 2);
    }
}

/// Steady load in simulated time: arrivals at a fixed rate, a tick every
/// 200 ms; prints time-to-match p50/p99 and the tick cost. Run with
/// `cargo test -p meridian --lib matchmaking -- --ignored --nocapture`.
#[test]
#[ignore]
fn steady_load_time_to_match() {
    for (name, teams, team_size, per_s) in [("duel", 2, 1, 500u32), ("5v5", 2, 5, 1000)] {
        let mut m = mode(name, teams, team_size);
        m.queue_tickets_max = 1_000_000;
        m.max_wait_s = 120;
        m.skill_window_start = 50.0;
        m.skill_window_widen_per_s = 25.0;
        let mut mm = engine(vec![m]);
        let t0 = Instant::now();
        let tick = Duration::from_millis(200);
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut enq = std::collections::HashMap::new();
        let mut waits = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut tick_ns = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let ticks = 300; // 60 s
        let per_tick = per_s as usize / 5;
        let mut expired = 0;
        for k in 1..=ticks {
            let now = t0 + tick * k;
            for i in 0..per_tick {
                // Arrivals spread evenly over the last tick interval.
                let at = now - tick + tick * i as u32 / per_tick as u32;
                let p = uuid::Uuid::new_v4();
                // Roughly bell-shaped ratings around 1500.
                let r = 1500.0 + ((rnd() % 400) as f64 - 200.0) + ((rnd() % 400) as f64 - 200.0);
                mm.ratings_mut().set(name, p, r);
                let region = ["eu", "us", "ap"][(rnd() % 3) as usize];
                let t = mm
                    .submit(
                        TicketRequest {
                            players: vec![p],
                            mode: name.into(),
                            latencies_ms: lat(&[(region, (rnd() % 60) as f64), ("eu", 90.0)]),
                        },
                        at,
                    )
                    .unwrap();
                enq.insert(t, at);
            }
            let s = Instant::now();
            let rep = mm.tick(now);
            tick_ns.record(s.elapsed().as_nanos() as u64).unwrap();
            expired += rep.expired.len();
            for m in rep.matches {
                for t in m.tickets {
                    let w = now.duration_since(enq.remove(&t).unwrap());
                    waits.record(w.as_millis() as u64).unwrap();
                }
            }
        }
        println!(
            "{name}: {per_s} tickets/s arriving, tick every 200 ms for 60 s: time-to-match p50={} ms p99={} ms max={} ms; matched {} expired {expired} still queued {}; tick p50={:.2} ms p99={:.2} ms",
            waits.value_at_quantile(0.5),
            waits.value_at_quantile(0.99),
            waits.max(),
            waits.len(),
            mm.queue_len(name).unwrap(),
            tick_ns.value_at_quantile(0.5) as f64 / 1e6,
            tick_ns.value_at_quantile(0.99) as f64 / 1e6,
        );
    }
}
