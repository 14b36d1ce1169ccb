//! Rank index benchmarks: update (submit), top-100, rank lookup and
//! around-player at 1M entries; 10M with `RANK_BENCH_10M=1`. Prints memory
//! per entry (index accounting and process RSS growth) while building.
//!
//! `cargo bench -p meridian-replication --bench rank`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_replication::rank::{RankIndex, SortOrder};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Resident set size of this process in bytes (Linux), 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn build(n: u32) -> RankIndex {
    let rss0 = rss_bytes();
    let start = Instant::now();
    let mut idx = RankIndex::new(SortOrder::Desc);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for p in 0..n {
        idx.upsert(p, (rng.next() % 10_000_000) as i64, u64::from(p), p % 3);
    }
    let el = start.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    println!(
        "rank index: {n} entries built in {el:?} ({:.0} inserts/s); memory {:.1} B/entry by accounting, {:.1} B/entry by RSS growth",
        f64::from(n) / el.as_secs_f64(),
        idx.memory_bytes() as f64 / f64::from(n),
        rss as f64 / f64::from(n),
    );
    idx
}

fn bench_rank(c: &mut Criterion) {
    let n: u32 = if std::env::var_os("RANK_BENCH_10M").is_some() {
        10_000_000
    } else {
        1_000_000
    };
    let mut idx = build(n);
    let mut g = c.benchmark_group("rank_index");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.measurement_time(std::time::Duration::from_secs(4));

    let mut rng = XorShift(42);
    let mut t = u64::from(n);
    g.bench_with_input(BenchmarkId::new("submit_update", n), &n, |b, &n| {
        b.iter(|| {
            let r = rng.next();
            t += 1;
            black_box(idx.upsert(
                (r % u64::from(n)) as u32,
                ((r >> 24) % 10_000_000) as i64,
                t,
                (r % 3) as u32,
            ))
        })
    });
    g.bench_with_input(BenchmarkId::new("top100", n), &n, |b, _| {
        b.iter(|| black_box(idx.top(0, 100)))
    });
    g.bench_with_input(BenchmarkId::new("top100_at_offset_half", n), &n, |b, &n| {
        b.iter(|| black_box(idx.top(n as usize / 2, 100)))
    });
    let mut rng = XorShift(7);
    g.bench_with_input(BenchmarkId::new("rank_of_player", n), &n, |b, &n| {
        b.iter(|| black_box(idx.get((rng.next() % u64::from(n)) as u32)))
    });
    let mut rng = XorShift(9);
    g.bench_with_input(BenchmarkId::new("around_10", n), &n, |b, &n| {
        b.iter(|| black_box(idx.around((rng.next() % u64::from(n)) as u32, 10)))
    });
    g.finish();
}

criterion_group!(benches, bench_rank);
criterion_main!(benches);
