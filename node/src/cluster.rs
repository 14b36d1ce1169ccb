//! The node's place in the region mesh: starts `meridian-mesh` (SWIM over
//! mutually authenticated QUIC) and the UDP beacon, and turns the member list
//! into the `/regions` and `/admin/mesh` views.
//!
//! Not for: the transport or membership protocol themselves (the mesh crate).

use crate::config::Config;
use crate::regions::Region;
use anyhow::Context;
use meridian_mesh::beacon::BeaconServer;
use meridian_mesh::{
    CertPaths, MemberState, MemberView, Mesh, MeshConfig, MeshHandle, NodeMetadata,
};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub struct Cluster {
    pub mesh: MeshHandle,
    pub beacon: BeaconServer,
}

/// Certificate files for this node: configured paths, or dev certificates
/// created under the data dir.
pub fn cert_paths(cfg: &Config) -> anyhow::Result<CertPaths> {
    let node = cfg.node_name();
    let ca_dir = cfg
        .mesh
        .ca_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("certs").join("ca"));
    let cert_dir = cfg
        .mesh
        .cert_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("certs").join(&node));
    if cfg.mesh.auto_dev_certs {
        let paths = meridian_mesh::pki::ensure_dev_certs(&cfg.data_dir, &node, Some(&ca_dir))
            .context("creating dev certificates")?;
        if cfg.mesh.cert_dir.is_none() {
            return Ok(paths);
        }
    }
    Ok(CertPaths::new(&ca_dir, &cert_dir))
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.to_socket_addrs().ok()?.next()
}

/// Seeds: configured addresses plus, when `seed_catalog`, every other region's
/// mesh address. Unresolvable names are logged and skipped (retried by the
/// mesh's join loop only for those that resolved).
pub fn seeds(cfg: &Config, me: &Region, catalog: &BTreeMap<String, Region>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in &cfg.mesh.seeds {
        match resolve(s) {
            Some(a) => out.push(a),
            None => tracing::warn!(seed = %s, "mesh seed does not resolve; skipped"),
        }
    }
    if cfg.mesh.seed_catalog {
        for r in catalog.values().filter(|r| r.name != me.name) {
            match resolve(&format!("{}:{}", r.public_host, r.ports.mesh)) {
                Some(a) => out.push(a),
                None => {
                    tracing::warn!(region = %r.name, "catalog mesh address does not resolve; skipped")
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

pub async fn start(
    cfg: &Config,
    me: &Region,
    catalog: &BTreeMap<String, Region>,
    http_port: u16,
) -> anyhow::Result<Cluster> {
    let mesh_addr = cfg.mesh_addr.unwrap_or_else(|| me.mesh_addr());
    let beacon_addr = cfg.beacon_addr.unwrap_or_else(|| me.beacon_addr());
    let game_addr = cfg.game_addr.unwrap_or_else(|| me.game_addr());
    let beacon = BeaconServer::bind(
        beacon_addr,
        Duration::from_millis(cfg.mesh.beacon_reply_delay_ms),
    )
    .await
    .with_context(|| format!("binding beacon UDP {beacon_addr}"))?;
    let certs = cert_paths(cfg)?;
    let node = cfg.node_name();
    let incarnation =
        meridian_mesh::membership::next_incarnation(&cfg.data_dir.join("mesh-incarnation"))
            .context("recording the mesh incarnation")?;
    let public_beacon = resolve(&format!(
        "{}:{}",
        me.public_host,
        beacon.local_addr().port()
    ));
    let metadata = NodeMetadata {
        api_url: format!("http://{}:{}", me.public_host, http_port),
        game_host: me.public_host.clone(),
        game_port: game_addr.port(),
        beacon_addr: public_beacon,
        dgs_capacity: me.capacity.max_matches,
        load: 0.0,
        build_version: env!("CARGO_PKG_VERSION").to_string(),
        economy_cluster: 0,
        draining: false,
    };
    let mesh = Mesh::start(MeshConfig {
        node_name: node,
        region: me.name.clone(),
        bind_addr: mesh_addr,
        advertise_addr: None,
        seeds: seeds(cfg, me, catalog),
        certs,
        metadata,
        injected_rtt_by_region: cfg
            .mesh
            .injected_rtt_ms
            .iter()
            .map(|(r, ms)| (r.clone(), Duration::from_millis(*ms)))
            .collect(),
        incarnation: Some(incarnation),
    })
    .await
    .with_context(|| format!("starting the mesh on UDP {mesh_addr}"))?;
    tracing::info!(mesh = %mesh.addr(), beacon = %beacon.local_addr(), incarnation, "mesh started");
    Ok(Cluster { mesh, beacon })
}

/// One region's status for `GET /regions`: `self`, else the best state among
/// its members (`alive` > `suspect` > `down`), `unknown` with no member.
pub fn region_status(members: &[MemberView], region: &str, me: &str) -> String {
    if region == me {
        return "self".into();
    }
    let states: Vec<MemberState> = members
        .iter()
        .filter(|m| m.region == region)
        .map(|m| m.state)
        .collect();
    if states.contains(&MemberState::Alive) {
        "alive"
    } else if states.contains(&MemberState::Suspect) {
        "suspect"
    } else if states.is_empty() {
        "unknown"
    } else {
        "down"
    }
    .into()
}

/// Export the mesh's counters and member states as Prometheus metrics.
pub fn export_metrics(mesh: &MeshHandle) {
    let members = mesh.members();
    for state in ["alive", "suspect", "down"] {
        let n = members
            .iter()
            .filter(|m| !m.is_self && format!("{:?}", m.state).eq_ignore_ascii_case(state))
            .count();
        metrics::gauge!("mesh_members", "state" => state).set(n as f64);
    }
    for m in members.iter().filter(|m| !m.is_self) {
        if let Some(rtt) = m.rtt_ms {
            metrics::gauge!("mesh_peer_rtt_ms", "peer" => m.node_id.clone(), "region" => m.region.clone()).set(rtt);
        }
    }
    if let Ok(v) = serde_json::to_value(mesh.stats().snapshot()) {
        if let Some(obj) = v.as_object() {
            for (k, v) in obj {
                if let Some(n) = v.as_u64() {
                    metrics::gauge!("mesh_stat", "counter" => k.clone()).set(n as f64);
                }
            }
        }
    }
}
