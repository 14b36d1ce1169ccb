//! Hot-path micro-benchmarks of the node: access-token (EdDSA JWT)
//! verification and one matchmaker pass.
//!
//! `cargo bench -p meridian --bench hot_paths`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meridian::auth::tokens::Keyring;
use meridian::matchmaking::{Matchmaker, MatchmakingConfig, TicketRequest};
use meridian_replication::Storage;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

fn jwt(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = rt.block_on(async {
        let storage = Storage::open_sled(dir.path()).expect("store");
        Keyring::open(&storage, "eu-west").await.expect("keyring")
    });
    let token = ring
        .issue("0192f0e4-0000-7000-8000-000000000000", "family", 900)
        .expect("issue");
    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_eddsa", |b| {
        b.iter(|| ring.verify(black_box(&token)).expect("valid"))
    });
    g.bench_function("issue_eddsa", |b| {
        b.iter(|| ring.issue("p", "f", 900).expect("issue"))
    });
    g.finish();
}

/// Tickets queued before each measured pass.
const TICKETS: usize = 10_000;

fn matchmaker(c: &mut Criterion) {
    let cfg: MatchmakingConfig = toml::from_str(
        r#"
[[modes]]
name = "duel"
teams = 2
team_size = 1
max_latency_ms = 150
skill_window_start = 100.0
skill_window_widen_per_s = 25.0
max_wait_s = 120
allow_remote_region = false
queue_tickets_max = 20000
"#,
    )
    .expect("modes");
    let regions = vec!["eu-west".to_string()];
    let mut g = c.benchmark_group("matchmaker");
    g.throughput(Throughput::Elements(TICKETS as u64));
    g.sample_size(20);
    g.bench_function("tick_10k_duel_tickets", |b| {
        b.iter_batched(
            || {
                let mut mm = Matchmaker::new(&cfg, &regions, "eu-west").expect("matchmaker");
                let now = Instant::now();
                for i in 0..TICKETS {
                    let latencies =
                        BTreeMap::from([("eu-west".to_string(), 20.0 + (i % 50) as f64)]);
                    mm.submit(
                        TicketRequest {
                            players: vec![uuid::Uuid::new_v4()],
                            mode: "duel".into(),
                            latencies_ms: latencies,
                        },
                        now,
                    )
                    .expect("submit");
                }
                mm
            },
            |mut mm| mm.tick(Instant::now()),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, jwt, matchmaker);
criterion_main!(benches);
