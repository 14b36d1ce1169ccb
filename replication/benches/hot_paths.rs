//! Hot-path micro-benchmarks of the replication crate: CRDT merge, delta
//! extraction and encoding, and the economy's Raft write path (propose,
//! fsynced append, apply) on one node.
//!
//! `cargo bench -p meridian-replication --bench hot_paths`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meridian_replication::crdt::{Crdt, Hlc, HlcClock, LwwRegister, PnCounter};
use meridian_replication::economy::{Catalog, Economy, EconomyConfig, GrantRequest};
use meridian_replication::Storage;
use std::hint::black_box;

fn counters(nodes: u64, clock_ms: u64) -> PnCounter {
    let mut c = PnCounter::default();
    for n in 0..nodes {
        let mut clock = HlcClock::new(n + 1);
        let _ = c.add(n as i64 + 1, clock.now(clock_ms));
    }
    c
}

fn crdt(c: &mut Criterion) {
    let mut g = c.benchmark_group("crdt");
    g.throughput(Throughput::Elements(1));
    // A PN-counter with shares from 8 regions, merged with a newer replica.
    let a = counters(8, 1_000);
    let b = counters(8, 2_000);
    g.bench_function("pn_counter_merge_8_nodes", |bn| {
        bn.iter(|| {
            let mut x = a.clone();
            x.merge(black_box(&b));
            x
        })
    });
    g.bench_function("pn_counter_delta_since", |bn| {
        let since = Hlc {
            wall_ms: 1_500,
            logical: 0,
            node: 0,
        };
        bn.iter(|| black_box(&b).delta_since(since))
    });
    let bytes = b.to_bytes();
    println!("pn_counter (8 nodes) encodes to {} bytes", bytes.len());
    g.bench_function("pn_counter_encode", |bn| {
        bn.iter(|| black_box(&b).to_bytes())
    });
    g.bench_function("pn_counter_decode", |bn| {
        bn.iter(|| PnCounter::from_bytes(black_box(&bytes)))
    });
    let mut clock = HlcClock::new(1);
    let mut l1 = LwwRegister::<i64>::default();
    let _ = l1.set(5, clock.now(1_000));
    let mut l2 = LwwRegister::<i64>::default();
    let _ = l2.set(7, clock.now(2_000));
    g.bench_function("lww_merge", |bn| {
        bn.iter(|| {
            let mut x = l1.clone();
            x.merge(black_box(&l2));
            x
        })
    });
    g.finish();
}

fn raft_apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog: Catalog = serde_json::from_value(serde_json::json!({"items": [
        {"item_id": "potion", "name": "Potion", "prices": {"coins": 1}, "max_per_purchase": 1, "stack_limit": 1000000000}
    ]}))
    .expect("catalog");
    let economy = rt.block_on(async {
        let storage = Storage::open_sled(dir.path()).expect("store");
        let e = Economy::open(
            storage,
            EconomyConfig {
                catalog,
                ..Default::default()
            },
        )
        .await
        .expect("economy");
        e.grant(GrantRequest {
            player_id: "bench-player".into(),
            currency: Some("coins".into()),
            amount: Some(1_000_000_000),
            item_id: None,
            quantity: None,
            reason: "bench".into(),
            idempotency_key: "seed".into(),
            payment_gateway_ref: None,
        })
        .await
        .expect("grant");
        e
    });
    let mut g = c.benchmark_group("raft_apply");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    let mut n = 0u64;
    // One purchase: proposal, fsynced log append (group commit), commit, apply.
    g.bench_function("purchase_single_client", |bn| {
        bn.iter(|| {
            n += 1;
            rt.block_on(economy.purchase("bench-player", "potion", 1, "coins", &format!("k{n}")))
                .expect("purchase")
        })
    });
    g.finish();
    rt.block_on(economy.shutdown());
}

criterion_group!(benches, crdt, raft_apply);
criterion_main!(benches);
