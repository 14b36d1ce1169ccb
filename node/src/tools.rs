//! Operator tools built on the node's API: `meridian ping-regions` and
//! `meridian demo`.

use anyhow::{bail, Context};
use serde_json::Value;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Beacon probes wait this long per packet.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// `meridian demo` waits this long for the nodes to form the mesh.
const DEMO_CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The RTT estimate is an EWMA of samples every 500 ms: let it settle before showing it.
const DEMO_RTT_SETTLE: Duration = Duration::from_secs(8);

/// One measured region.
#[derive(Debug, Clone)]
pub struct RegionPing {
    pub region: String,
    pub beacon: String,
    pub status: String,
    pub rtt: Option<Duration>,
}

/// Ask `via` for the regions, ping each beacon, and sort by RTT.
pub async fn measure_regions(via: &str, count: u32) -> anyhow::Result<Vec<RegionPing>> {
    let url = format!("{}/regions", via.trim_end_matches('/'));
    let regions: Vec<Value> = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not a region list"))?;
    let mut out = Vec::new();
    for r in regions {
        let beacon = r["beacon"].as_str().unwrap_or_default().to_string();
        let rtt = match beacon.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(addr) => meridian_mesh::beacon::ping(addr, count.clamp(1, 10), PING_TIMEOUT).await,
            None => None,
        };
        out.push(RegionPing {
            region: r["region"].as_str().unwrap_or("?").to_string(),
            beacon,
            status: r["status"].as_str().unwrap_or("?").to_string(),
            rtt,
        });
    }
    out.sort_by_key(|p| p.rtt.unwrap_or(Duration::MAX));
    Ok(out)
}

/// `meridian drain`: start a drain over the admin API and wait until the
/// node's economy voter seats moved (or `wait_s` passed).
pub async fn drain(via: &str, admin_token: &str, wait_s: u64) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{}/admin/drain", via.trim_end_matches('/'));
    let resp = http.post(&url).bearer_auth(admin_token).send().await?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!("{url}: {status}: {}", resp.text().await.unwrap_or_default());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
    loop {
        let v: Value = http
            .get(&url)
            .bearer_auth(admin_token)
            .send()
            .await?
            .json()
            .await?;
        if v["seats_moved"] == true {
            return Ok(format!("drained: {v}"));
        }
        if std::time::Instant::now() >= deadline {
            bail!("voter seats not moved after {wait_s} s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn ping_regions(via: &str, count: u32) -> anyhow::Result<String> {
    let pings = measure_regions(via, count).await?;
    let mut s = format!(
        "{:<12} {:<22} {:<8} {:>10}\n",
        "region", "beacon", "status", "rtt ms"
    );
    for p in &pings {
        let rtt = p.rtt.map_or("timeout".to_string(), |d| {
            format!("{:.3}", d.as_secs_f64() * 1000.0)
        });
        s.push_str(&format!(
            "{:<12} {:<22} {:<8} {:>10}\n",
            p.region, p.beacon, p.status, rtt
        ));
    }
    match pings.first().filter(|p| p.rtt.is_some()) {
        Some(p) => s.push_str(&format!("nearest: {}\n", p.region)),
        None => bail!("no beacon answered:\n{s}"),
    }
    Ok(s)
}

struct DemoNode {
    region: String,
    api: String,
    log: PathBuf,
    child: Child,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn get_json(url: &str, token: Option<&str>) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    })
}

/// `meridian demo`: three child `meridian up` processes, one per region of
/// the catalog (the three with the lowest HTTP ports), sharing a dev CA, with
/// `latency_ms` injected between each pair. Runs until Ctrl-C.
pub fn demo(
    data_dir: &Path,
    regions_dir: &Path,
    latency_ms: &[u64],
    client_ms: &[u64],
) -> anyhow::Result<()> {
    let catalog = crate::regions::check_catalog(regions_dir).map_err(|errs| {
        anyhow::anyhow!(
            "{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let mut regions: Vec<_> = catalog.values().cloned().collect();
    regions.sort_by_key(|r| r.ports.http);
    regions.truncate(3);
    if regions.len() < 3 {
        bail!("the demo needs 3 regions in {}", regions_dir.display());
    }
    if latency_ms.len() != 3 {
        bail!("--latency-ms takes three values: 1-2, 1-3, 2-3");
    }
    if client_ms.len() != 3 {
        bail!("--client-latency-ms takes three values, one per region");
    }
    let pair = |a: usize, b: usize| match (a.min(b), a.max(b)) {
        (0, 1) => latency_ms[0],
        (0, 2) => latency_ms[1],
        _ => latency_ms[2],
    };
    std::fs::create_dir_all(data_dir)?;
    let data_dir = data_dir.canonicalize()?;
    let regions_dir = regions_dir.canonicalize()?;
    let ca_dir = data_dir.join("ca");
    if !ca_dir.join(meridian_mesh::pki::CA_CERT_FILE).exists() {
        meridian_mesh::pki::init_ca(&ca_dir)?;
    }
    let mut token_bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut token_bytes).map_err(|_| anyhow::anyhow!("rng"))?;
    let admin = format!("demo-{}", hex::encode(token_bytes));
    let exe = std::env::current_exe()?;
    let mut nodes = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        let dir = data_dir.join(&r.name);
        std::fs::create_dir_all(&dir)?;
        let mut cfg = format!(
            "region = {:?}\ndata_dir = {:?}\nregions_dir = {:?}\nadmin_token = {:?}\nlog_format = \"json\"\n[economy]\nbootstrap_expect = 3\n[mesh]\nca_dir = {:?}\nbeacon_reply_delay_ms = {}\n[mesh.injected_rtt_ms]\n",
            r.name, dir, regions_dir, admin, ca_dir, client_ms[i]
        );
        for (j, o) in regions.iter().enumerate().filter(|(j, _)| *j != i) {
            cfg.push_str(&format!("{:?} = {}\n", o.name, pair(i, j)));
        }
        let cfg_path = dir.join("meridian.toml");
        std::fs::write(&cfg_path, cfg)?;
        let log = dir.join("node.log");
        let mut cmd = Command::new(&exe);
        cmd.arg("up")
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MERIDIAN_")) {
            if k != "MERIDIAN_LOG" && k != "MERIDIAN_RATE_LIMITS" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", r.name))?;
        nodes.push(DemoNode {
            region: r.name.clone(),
            api: r.api_url(),
            log,
            child,
        });
    }
    // Ready, then converged.
    let deadline = Instant::now() + DEMO_CONVERGE_TIMEOUT;
    for n in &mut nodes {
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!("{} exited ({status}); log:\n{}", n.region, tail(&n.log));
            }
            if get_json(&format!("{}/readyz", n.api), None).is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not start; log:\n{}", n.region, tail(&n.log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let alive_peers = |n: &DemoNode| -> usize {
        get_json(&format!("{}/admin/mesh", n.api), Some(&admin))
            .and_then(|v| v["members"].as_array().cloned())
            .map(|ms| {
                ms.iter()
                    .filter(|m| m["state"] == "alive" && m["is_self"] == false)
                    .count()
            })
            .unwrap_or(0)
    };
    while nodes.iter().any(|n| alive_peers(n) < 2) {
        if Instant::now() > deadline {
            eprintln!("warning: the mesh has not converged after {DEMO_CONVERGE_TIMEOUT:?}; showing what is there");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give QUIC a few probes to smooth the RTTs.
    std::thread::sleep(DEMO_RTT_SETTLE);

    println!("Meridian demo: 3 regions on this machine (admin token: {admin})\n");
    println!("{:<10} {:<24} {:<22} log", "region", "api", "beacon");
    if let Some(list) =
        get_json(&format!("{}/regions", nodes[0].api), None).and_then(|v| v.as_array().cloned())
    {
        for r in list {
            let name = r["region"].as_str().unwrap_or("?");
            let log = nodes
                .iter()
                .find(|n| n.region == name)
                .map(|n| n.log.display().to_string())
                .unwrap_or_default();
            println!(
                "{:<10} {:<24} {:<22} {}",
                name,
                r["api_url"].as_str().unwrap_or(""),
                r["beacon"].as_str().unwrap_or(""),
                log
            );
        }
    }
    println!(
        "\nmesh view (RTT measured over QUIC, injected {}/{}/{} ms):",
        latency_ms[0], latency_ms[1], latency_ms[2]
    );
    for n in &nodes {
        let view = get_json(&format!("{}/admin/mesh", n.api), Some(&admin)).unwrap_or(Value::Null);
        let peers: Vec<String> = view["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter(|m| m["is_self"] == false)
                    .map(|m| {
                        format!(
                            "{} {} rtt {:.0} ms",
                            m["region"].as_str().unwrap_or("?"),
                            m["state"].as_str().unwrap_or("?"),
                            m["rtt_ms"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("  {:<10} sees: {}", n.region, peers.join(", "));
    }
    println!(
        "\nTry: meridian ping-regions --via {}\nCtrl-C stops all three nodes.",
        nodes[0].api
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    for n in &mut nodes {
                        if let Ok(Some(status)) = n.child.try_wait() {
                            eprintln!("{} exited ({status}); log:\n{}", n.region, tail(&n.log));
                            return;
                        }
                    }
                }
            }
        }
    });
    println!("stopping the demo nodes...");
    drop(nodes);
    Ok(())
}
