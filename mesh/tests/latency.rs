//! Injected per-region latency shows up in QUIC RTT (what `meridian demo` relies on).

mod common;

use std::time::Duration;

use common::*;
use meridian_mesh::membership::CONVERGENCE_BOUND;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_latency_is_reflected_in_rtt() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let mut a_cfg = config("a", "eu", certs(dir.path(), &ca, "a"), vec![]);
    a_cfg
        .injected_rtt_by_region
        .insert("us".into(), Duration::from_millis(80));
    let a = start(a_cfg).await;
    let mut b_cfg = config("b", "us", certs(dir.path(), &ca, "b"), vec![a.addr()]);
    b_cfg
        .injected_rtt_by_region
        .insert("eu".into(), Duration::from_millis(80));
    let b = start(b_cfg).await;
    wait_for(CONVERGENCE_BOUND, || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await
    .expect("converge with injected latency");
    // Let the EWMA settle on the delayed samples.
    let settled = wait_for(Duration::from_secs(10), || {
        let rtt = |h: &meridian_mesh::MeshHandle| {
            h.members()
                .into_iter()
                .find(|m| !m.is_self)
                .and_then(|m| m.rtt_ms)
                .unwrap_or(0.0)
        };
        let (ra, rb) = (rtt(&a), rtt(&b));
        (70.0..=120.0).contains(&ra) && (70.0..=120.0).contains(&rb)
    })
    .await;
    assert!(
        settled.is_some(),
        "rtt: {:?} / {:?}",
        a.members(),
        b.members()
    );
}

/// The demo's shape: three regions with 30/80/140 ms between them. Nobody is declared down
/// (no false positives) and each RTT tracks its injected value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_with_demo_latencies_stay_up() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let rtt = |x: &str, y: &str| -> Duration {
        let mut pair = [x, y];
        pair.sort();
        Duration::from_millis(match pair {
            ["eu", "us"] => 80,
            ["ap", "eu"] => 140,
            ["ap", "us"] => 30,
            _ => 0,
        })
    };
    let regions = ["eu", "us", "ap"];
    let mut nodes = Vec::new();
    let mut seeds = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let name = format!("n{i}");
        let mut cfg = config(&name, region, certs(dir.path(), &ca, &name), seeds.clone());
        for other in regions {
            if other != *region {
                cfg.injected_rtt_by_region
                    .insert(other.to_string(), rtt(region, other));
            }
        }
        let h = start(cfg).await;
        seeds = vec![h.addr()];
        nodes.push(h);
    }
    wait_for(CONVERGENCE_BOUND, || {
        nodes.iter().all(|h| alive_peers(h) == 2)
    })
    .await
    .expect("converge with demo latencies");
    tokio::time::sleep(Duration::from_secs(8)).await;
    for h in &nodes {
        let s = h.stats().snapshot();
        assert_eq!(s.members_down_events, 0, "false positive: {s:?}");
        assert_eq!(alive_peers(h), 2);
        let me = h.identity();
        for m in h.members().iter().filter(|m| !m.is_self) {
            let want = rtt(&me.region, &m.region).as_secs_f64() * 1000.0;
            let got = m.rtt_ms.expect("rtt sampled");
            eprintln!(
                "{} -> {}: injected {want} ms, measured {got:.1} ms (suspicions {})",
                me.region, m.region, s.swim_suspicions
            );
            assert!(
                got >= want * 0.9 && got <= want + 40.0,
                "{} -> {}: want ~{want} ms, got {got:.1}",
                me.region,
                m.region
            );
        }
    }
}
