//! `meridian-sim`: run seeds of the deterministic partition simulation and
//! report every invariant. See `docs/simulations.md`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use meridian_sim::membership::{run_scale, ScaleConfig};
use meridian_sim::sim::{
    default_latency, parse_latency, run_seed, staleness_summary, Bug, FaultMix, Invariant,
    SeedReport, SimConfig, WorkloadMix,
};

#[derive(Parser, Debug)]
#[command(
    name = "meridian-sim",
    about = "Deterministic network-partition simulations of Meridian nodes (turmoil)"
)]
struct Args {
    /// Number of seeds to run (seeds first-seed .. first-seed+N).
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Run exactly this seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of a --seeds batch.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Simulated region nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Regions (node i is in region i mod regions).
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// Inter-region one-way latency matrix in ms, rows by `;`
    /// (e.g. `2,20,40;20,2,20;40,20,2`). Default: 2 ms inside a region,
    /// 20 ms per region step between regions.
    #[arg(long)]
    latency: Option<String>,
    /// Random extra latency per datagram in ms (reordering).
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// Safety phase length, simulated seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Liveness bound, simulated seconds.
    #[arg(long, default_value_t = 30)]
    liveness_bound: u64,
    /// Economy shards.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Players (bank accounts).
    #[arg(long, default_value_t = 6)]
    players: usize,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Disable partitions (two-way, one-way, bridge).
    #[arg(long)]
    no_partitions: bool,
    /// Disable crashes and restarts.
    #[arg(long)]
    no_crashes: bool,
    /// Datagram loss probability during the safety phase.
    #[arg(long, default_value_t = 0.02)]
    loss: f64,
    /// Datagram duplication probability during the safety phase.
    #[arg(long, default_value_t = 0.02)]
    dup: f64,
    /// Duplicate client API requests as well (not only node-to-node traffic).
    #[arg(long)]
    dup_client: bool,
    /// Largest clock skew of a node, ms.
    #[arg(long, default_value_t = 250)]
    skew_ms: u64,
    /// Mean gap between fault events, ms.
    #[arg(long, default_value_t = 1200)]
    fault_interval_ms: u64,
    /// Workload weights, e.g. `register=2,login=1,profile=2,score=3,purchase=2,transfer=5,read=4,grant=3`.
    #[arg(long, default_value = "")]
    mix: String,
    /// Switch on a deliberate bug (see --list-bugs).
    #[arg(long)]
    inject_bug: Option<String>,
    /// Print the injectable bug names, one a line.
    #[arg(long)]
    list_bugs: bool,
    /// Write per-seed results (trace hashes, violations) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// OS threads running seeds (each its own simulation).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where failing seeds' traces go.
    #[arg(long, default_value = "sim-traces")]
    trace_dir: PathBuf,
    /// Write every seed's trace to --trace-dir, not only failing ones.
    #[arg(long)]
    trace_all: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Membership-only scale run: --nodes members running only SWIM (foca,
    /// the mesh's config); measures join convergence and failure detection.
    #[arg(long)]
    membership_only: bool,
    /// --membership-only: consecutive seeds to run from --seed (or --first-seed).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// --membership-only: turmoil hosts the members share (ports 7001..).
    #[arg(long, default_value_t = 32)]
    hosts: usize,
    /// --membership-only: members everyone joins through (n0..).
    #[arg(long, default_value_t = 3)]
    join_seeds: usize,
    /// --membership-only: members crashed after the steady window.
    #[arg(long, default_value_t = 1)]
    crashes: usize,
    /// --membership-only: datagram loss probability, whole run.
    #[arg(long, default_value_t = 0.0)]
    swim_loss: f64,
    /// --membership-only: turmoil tick, simulated ms.
    #[arg(long, default_value_t = 5)]
    tick_ms: u64,
    /// --membership-only: simulated s between convergence and the crash.
    #[arg(long, default_value_t = 10)]
    steady: u64,
    /// --membership-only: give up on full convergence after this many simulated s.
    #[arg(long, default_value_t = 120)]
    join_timeout: u64,
    /// --membership-only: give up on detection this many simulated s after the crash.
    #[arg(long, default_value_t = 60)]
    detect_timeout: u64,
    /// --membership-only experiment: piggyback each update this many times
    /// instead of the mesh's MAX_TRANSMISSIONS (6).
    #[arg(long)]
    max_transmissions: Option<u8>,
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("MERIDIAN_SIM_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("MERIDIAN_SIM_LOG"))
            .with_ansi(false)
            .init();
    }
    if args.membership_only {
        membership_only(&args);
        return;
    }
    if args.list_bugs {
        for b in Bug::ALL {
            println!("{}", b.name());
        }
        return;
    }
    let bug = match args.inject_bug.as_deref().map(|s| (s, Bug::parse(s))) {
        None => None,
        Some((_, Some(b))) => Some(b),
        Some((s, None)) => {
            eprintln!("unknown bug `{s}`; see --list-bugs");
            std::process::exit(2);
        }
    };
    let latency = match &args.latency {
        Some(s) => match parse_latency(s) {
            Ok(m) if m.len() >= args.regions => m,
            Ok(_) => {
                eprintln!("--latency needs at least --regions rows");
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("--latency: {e}");
                std::process::exit(2);
            }
        },
        None => default_latency(args.regions),
    };
    let workload = match WorkloadMix::parse(&args.mix) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("--mix: {e}");
            std::process::exit(2);
        }
    };
    if args.nodes == 0 || args.players < 2 {
        eprintln!("need --nodes >= 1 and --players >= 2");
        std::process::exit(2);
    }
    let base = SimConfig {
        seed: 0,
        nodes: args.nodes,
        regions: args.regions.max(1),
        latency_ms: latency,
        jitter_ms: args.jitter_ms,
        duration_s: args.duration,
        liveness_bound_s: args.liveness_bound,
        shards: args.shards.max(1),
        players: args.players,
        clients: args.clients.max(1),
        faults: FaultMix {
            partitions: !args.no_partitions,
            crashes: !args.no_crashes,
            loss: args.loss,
            dup: args.dup,
            dup_client: args.dup_client,
            skew_ms: args.skew_ms,
            interval_ms: args.fault_interval_ms.max(10),
        },
        workload,
        bug,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let total = seeds.len();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<SeedReport>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let seeds = Arc::new(seeds);
    let mut handles = Vec::new();
    for _ in 0..args.threads.clamp(1, total.max(1)) {
        let (next, done, failed, stop, reports, seeds, base) = (
            next.clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
            reports.clone(),
            seeds.clone(),
            base.clone(),
        );
        let fail_fast = args.fail_fast;
        handles.push(std::thread::spawn(move || loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&seed) = seeds.get(i) else { return };
            let cfg = SimConfig {
                seed,
                ..base.clone()
            };
            let r = run_seed(&cfg);
            if !r.ok() {
                failed.fetch_add(1, Ordering::Relaxed);
                if fail_fast {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            reports.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    // Progress line.
    let mut last = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if last.elapsed().as_millis() >= 1_000 {
            last = Instant::now();
            let d = done.load(Ordering::Relaxed);
            let width = 30;
            let filled = (d * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r[{}{}] {d}/{total} seeds, {:.2} seeds/s, violations so far: {} seeds ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                d as f64 / started.elapsed().as_secs_f64(),
                failed.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().flush();
        }
    }
    for h in handles {
        let _ = h.join();
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    let mut reports = Arc::try_unwrap(reports)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    reports.sort_by_key(|r| r.seed);

    // Failing seeds: replay command and trace file.
    let mut replay_args = String::new();
    for (flag, on) in [
        ("--no-partitions", args.no_partitions),
        ("--no-crashes", args.no_crashes),
    ] {
        if on {
            replay_args.push_str(&format!(" {flag}"));
        }
    }
    if args.dup_client {
        replay_args.push_str(" --dup-client");
    }
    if let Some(b) = &args.inject_bug {
        replay_args.push_str(&format!(" --inject-bug {b}"));
    }
    if let Some(l) = &args.latency {
        replay_args.push_str(&format!(" --latency '{l}'"));
    }
    if !args.mix.is_empty() {
        replay_args.push_str(&format!(" --mix '{}'", args.mix));
    }
    if args.trace_all {
        let _ = std::fs::create_dir_all(&args.trace_dir);
        for r in reports.iter().filter(|r| r.ok()) {
            let path = args.trace_dir.join(format!("seed-{}.trace", r.seed));
            let _ = std::fs::write(&path, r.trace_text());
        }
    }
    for r in reports.iter().filter(|r| !r.ok()) {
        let _ = std::fs::create_dir_all(&args.trace_dir);
        let path = args.trace_dir.join(format!("seed-{}.trace", r.seed));
        let mut text = r.trace_text();
        for v in &r.violations {
            text.push_str(&format!(
                "VIOLATION {:?} at {}ms: {}\n",
                v.invariant, v.at_ms, v.detail
            ));
        }
        let _ = std::fs::write(&path, text);
        let first = &r.violations[0];
        println!(
            "seed {} FAILED ({:?}: {})\n  replay: cargo run --release -p meridian-sim -- --seed {} --nodes {} --regions {} --duration {} --liveness-bound {} --shards {} --players {} --clients {} --loss {} --dup {} --skew-ms {} --jitter-ms {} --fault-interval-ms {}{}\n  trace: {}",
            r.seed,
            first.invariant,
            first.detail,
            r.seed,
            args.nodes,
            args.regions,
            args.duration,
            args.liveness_bound,
            args.shards,
            args.players,
            args.clients,
            args.loss,
            args.dup,
            args.skew_ms,
            args.jitter_ms,
            args.fault_interval_ms,
            replay_args,
            path.display()
        );
    }

    // Summary table.
    let mut per: BTreeMap<Invariant, usize> = BTreeMap::new();
    for r in &reports {
        let mut seen = std::collections::BTreeSet::new();
        for v in &r.violations {
            if seen.insert(v.invariant) {
                *per.entry(v.invariant).or_default() += 1;
            }
        }
    }
    let n = reports.len();
    println!();
    println!("{:<40} {:>8} {:>10}", "invariant", "seeds", "violated");
    for inv in Invariant::ALL {
        let bad = per.get(&inv).copied().unwrap_or(0);
        let note = "";
        println!("{:<40} {:>8} {:>10}{}", inv.name(), n, bad, note);
    }
    let (p50, p99, max) = staleness_summary(&reports);
    let mut conv: Vec<u64> = reports.iter().filter_map(|r| r.convergence_ms).collect();
    conv.sort_unstable();
    let ops: u64 = reports.iter().map(|r| r.ops).sum();
    let faults: u64 = reports.iter().map(|r| r.faults).sum();
    let sim_s: f64 = reports.iter().map(|r| r.sim_ms as f64 / 1000.0).sum();
    println!();
    println!(
        "seeds: {n} in {secs:.1}s wall ({:.2} seeds/s, {:.1} simulated s/s, {} threads)",
        n as f64 / secs,
        sim_s / secs,
        args.threads
    );
    let shared_terms: u64 = reports.iter().map(|r| r.shared_terms).sum();
    println!("operations: {ops}, faults injected: {faults}, terms with two leaders (openraft (term,node) ids): {shared_terms}");
    println!(
        "staleness (ack -> visible on every live node): p50 {p50} ms, p99 {p99} ms, max {max} ms"
    );
    if !conv.is_empty() {
        println!(
            "liveness convergence: p50 {} ms, max {} ms (bound {} s)",
            conv[conv.len() / 2],
            conv[conv.len() - 1],
            args.liveness_bound
        );
    }
    let mut det: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.detection_ms.iter().copied())
        .collect();
    det.sort_unstable();
    let mut mem: Vec<u64> = reports.iter().filter_map(|r| r.membership_ms).collect();
    mem.sort_unstable();
    if !det.is_empty() {
        println!(
            "SWIM failure detection (crash -> not alive everywhere): p50 {} ms, max {} ms over {} crashes",
            det[det.len() / 2],
            det[det.len() - 1],
            det.len()
        );
    }
    if !mem.is_empty() {
        println!(
            "SWIM membership convergence after heal: p50 {} ms, max {} ms",
            mem[mem.len() / 2],
            mem[mem.len() - 1]
        );
    }
    let failed_n = reports.iter().filter(|r| !r.ok()).count();
    if let Some(path) = &args.json {
        let body = serde_json::json!({
            "seeds": reports.iter().map(|r| serde_json::json!({
                "seed": r.seed,
                "trace_hash": r.trace_hash,
                "ok": r.ok(),
                "violations": r.violations,
                "ops": r.ops,
                "faults": r.faults,
                "convergence_ms": r.convergence_ms,
                "sim_ms": r.sim_ms,
            })).collect::<Vec<_>>(),
            "summary": {
                "seeds": n,
                "failed": failed_n,
                "wall_s": secs,
                "seeds_per_s": n as f64 / secs,
                "staleness_ms": {"p50": p50, "p99": p99, "max": max},
                "bug": args.inject_bug,
            }
        });
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&body).unwrap_or_default()) {
            eprintln!("--json {}: {e}", path.display());
        }
    }
    if failed_n > 0 {
        println!("\nFAILED: {failed_n} of {n} seeds violated an invariant");
        std::process::exit(1);
    }
    println!("\nOK: every invariant held on {n} seeds");
}

/// `--membership-only`: one line per seed, then the JSON (with wall time).
fn membership_only(args: &Args) {
    let first = args.seed.unwrap_or(args.first_seed);
    let mut out = Vec::new();
    for seed in first..first.saturating_add(args.runs.max(1)) {
        let cfg = ScaleConfig {
            seed,
            nodes: args.nodes,
            hosts: args.hosts,
            seeds: args.join_seeds,
            crashes: args.crashes,
            loss: args.swim_loss,
            tick_ms: args.tick_ms,
            steady_s: args.steady,
            join_timeout_s: args.join_timeout,
            detect_timeout_s: args.detect_timeout,
            max_transmissions: args.max_transmissions,
        };
        let started = Instant::now();
        let r = match run_scale(&cfg) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let wall_s = started.elapsed().as_secs_f64();
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let q = |v: &[Option<u64>]| v.iter().map(|x| ms(*x)).collect::<Vec<_>>().join("/");
        let detect: Vec<String> = (0..r.crashed.len())
            .map(|i| {
                format!(
                    "n{}: first {} ms, 50%/99%/99.99%/100% {} ms ({:.2}% reached)",
                    r.crashed[i],
                    ms(r.detect_first_ms[i]),
                    q(&r.detect_ms[i]),
                    r.detect_share[i] * 100.0
                )
            })
            .collect();
        println!(
            "seed {} nodes {} (hosts {}, tick {} ms)\n  join: pairs known 50%/99%/99.99%/100% at {} ms ({:.3}% at {} ms)\n  \
             steady: {:.1} datagrams, {:.0} B sent per node per s\n  crash: {}\n  \
             false downs {}; {:.1} simulated s in {wall_s:.1} s wall; hash {:016x}",
            r.seed,
            r.nodes,
            r.hosts,
            r.tick_ms,
            q(&r.pairs_ms),
            r.pairs_known_at_join_end * 100.0,
            r.join_end_ms,
            r.steady_datagrams_per_node_s,
            r.steady_bytes_per_node_s,
            detect.join("; "),
            r.false_downs,
            r.sim_ms as f64 / 1000.0,
            r.events_hash,
        );
        out.push(serde_json::json!({"report": r, "wall_s": wall_s}));
    }
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap_or_default()) {
            eprintln!("--json {}: {e}", path.display());
        }
    }
}
