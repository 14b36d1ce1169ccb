//! Helpers shared by the mesh integration tests: certificates, node configs, polling.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_mesh::{
    pki, CertPaths, MemberState, Mesh, MeshConfig, MeshError, MeshHandle, NodeMetadata,
};

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Dev certs for `name` under `dir`, using the CA in `ca_dir`.
pub fn certs(dir: &Path, ca_dir: &Path, name: &str) -> CertPaths {
    pki::ensure_dev_certs(&dir.join(name), name, Some(ca_dir)).expect("certs")
}

pub fn config(name: &str, region: &str, certs: CertPaths, seeds: Vec<SocketAddr>) -> MeshConfig {
    MeshConfig {
        node_name: name.to_string(),
        region: region.to_string(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        advertise_addr: None,
        seeds,
        certs,
        metadata: NodeMetadata {
            api_url: format!("http://{name}.test"),
            game_host: "127.0.0.1".into(),
            game_port: 7777,
            beacon_addr: None,
            dgs_capacity: 8,
            load: 0.0,
            build_version: "test".into(),
            economy_cluster: 0,
            draining: false,
        },
        injected_rtt_by_region: HashMap::new(),
        incarnation: None,
    }
}

/// Starts a mesh, retrying while its (reused) port is still held by a killed instance.
pub async fn start(config: MeshConfig) -> MeshHandle {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Mesh::start(config.clone()).await {
            Ok(h) => return h,
            Err(MeshError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("mesh start: {e}"),
        }
    }
}

/// State of `node_id` as seen by `h` (the highest incarnation when listed twice).
pub fn state_of(h: &MeshHandle, node_id: &str) -> Option<(MemberState, u64)> {
    h.members()
        .into_iter()
        .filter(|m| m.node_id == node_id && !m.is_self)
        .max_by_key(|m| m.incarnation)
        .map(|m| (m.state, m.incarnation))
}

pub fn alive_peers(h: &MeshHandle) -> usize {
    h.members()
        .iter()
        .filter(|m| !m.is_self && m.state == MemberState::Alive)
        .count()
}

/// Polls `cond` every 50 ms until it holds; returns the time it took, or None at `limit`.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn echo_handler() -> Arc<dyn meridian_mesh::RpcHandler> {
    Arc::new(|_from: SocketAddr, body: Bytes| async move {
        let mut out = b"echo:".to_vec();
        out.extend_from_slice(&body);
        Ok::<_, String>(Bytes::from(out))
    })
}
