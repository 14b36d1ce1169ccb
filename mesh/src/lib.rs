//! Meridian's region mesh: how identical region nodes find each other, agree on who is
//! alive, measure how far apart they are, and talk to each other.
//!
//! For: embedding in the `meridian` node. [`Mesh::start`] gives a [`MeshHandle`] with the
//! member list (state, region, RTT, incarnation, metadata), metadata updates, RPC and
//! one-way messages to peers, counters ([`MeshStats`]) and a graceful leave.
//!
//! Not for: HTTP, Prometheus, config files or the region catalog (the node owns those), and
//! not a consensus layer (membership is eventually consistent SWIM; Raft lives in
//! `replication`).
//!
//! Modules:
//! - [`pki`]: cluster CA and node certificates (`meridian certs init|issue`, dev certs).
//! - [`transport`]: quinn endpoint with mutual TLS, one connection per peer, SWIM datagrams,
//!   RPC streams, RTT; the socket seam for simulation.
//! - [`membership`]: foca SWIM loop, identity, gossiped metadata, the detection bound.
//! - [`beacon`]: the UDP echo clients ping to pick the nearest region, and its client.
//!
//! Stated bounds (see [`membership`]): members converge within
//! [`membership::CONVERGENCE_BOUND`] and a crashed node is down everywhere within
//! [`membership::DOWN_DETECTION_BOUND`] (both 5 s on loopback).

pub mod beacon;
pub mod membership;
pub mod pki;
pub mod stats;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use membership::{MemberState, NodeIdentity, NodeMetadata};
pub use pki::CertPaths;
pub use stats::{MeshStats, MeshStatsSnapshot};
pub use transport::{
    RpcFuture, RpcHandler, PROTOCOL_VIOLATION, RPC_MESSAGE_MAX_BYTES, RPC_TIMEOUT_DEFAULT,
};

use membership::{Command, Shared};
use transport::{LatencyTable, Transport};

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Certificates could not be created or loaded.
    #[error("pki: {0}")]
    Pki(#[from] pki::PkiError),
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration error.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Invalid [`MeshConfig`].
    #[error("config: {0}")]
    Config(String),
    /// Dialing a peer failed before the handshake.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was refused (e.g. certificate not from the cluster CA).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer did not answer in time, or was dialed too recently without success.
    #[error("peer {0} unreachable")]
    Unreachable(SocketAddr),
    /// No member with that node id (or the address is our own).
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// Transport limit on tracked peers reached.
    #[error("too many peers")]
    TooManyPeers,
    /// Stream read/write failed.
    #[error("stream: {0}")]
    Stream(String),
    /// A message exceeded [`RPC_MESSAGE_MAX_BYTES`] (or the service name its limit).
    #[error("message too large")]
    MessageTooLarge,
    /// Metadata exceeded [`membership::METADATA_MAX_BYTES`] once encoded.
    #[error("metadata too large")]
    MetadataTooLarge,
    /// Undecodable frame.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer has no handler for this service.
    #[error("unknown service {0}")]
    UnknownService(String),
    /// The peer's handler returned an error.
    #[error("remote: {0}")]
    Remote(String),
    /// The RPC deadline passed.
    #[error("timeout")]
    Timeout,
    /// The mesh is shutting down.
    #[error("mesh shutting down")]
    ShuttingDown,
}

/// Everything [`Mesh::start`] needs.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Node name: unique in the cluster; restarting with the same name replaces the old one.
    pub node_name: String,
    /// Region this node serves (from `regions/`).
    pub region: String,
    /// UDP address of the QUIC endpoint (port 0 picks a free port).
    pub bind_addr: SocketAddr,
    /// Address peers use to reach this node; defaults to the bound address. Required when
    /// binding an unspecified IP (0.0.0.0 / ::).
    pub advertise_addr: Option<SocketAddr>,
    /// Mesh addresses of seed nodes to join through (may include this node; ignored).
    pub seeds: Vec<SocketAddr>,
    /// Cluster CA and node certificate files.
    pub certs: CertPaths,
    /// What this node advertises (can be changed later with `update_metadata`).
    pub metadata: NodeMetadata,
    /// Demo only: injected round-trip latency to nodes of each region (each side delays its
    /// outgoing packets by half; configure both sides alike). Empty: no injection.
    pub injected_rtt_by_region: HashMap<String, Duration>,
    /// Identity incarnation; `None` uses the current unix time in ms, so a restart wins.
    pub incarnation: Option<u64>,
}

/// One member as seen by this node (this node included, with `is_self`).
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Node name.
    pub node_id: String,
    /// Region it serves.
    pub region: String,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// SWIM state.
    pub state: MemberState,
    /// Identity incarnation (grows on restart / renewal).
    pub incarnation: u64,
    /// Smoothed QUIC RTT in ms (None for self or before the first sample).
    pub rtt_ms: Option<f64>,
    /// Gossiped metadata, once received.
    pub metadata: Option<NodeMetadata>,
    /// Whether this row is the local node.
    pub is_self: bool,
}

/// Starts meshes. See [`Mesh::start`].
pub struct Mesh;

impl Mesh {
    /// Loads certificates, binds the endpoint and starts joining through the seeds. Returns
    /// once the endpoint is up (joining continues in the background, retrying with backoff
    /// and logging when seeds don't answer). Must run inside a tokio runtime.
    pub async fn start(config: MeshConfig) -> Result<MeshHandle, MeshError> {
        if config.node_name.is_empty() || config.region.is_empty() {
            return Err(MeshError::Config(
                "node_name and region are required".into(),
            ));
        }
        let certs = pki::NodeCerts::load(&config.certs)?;
        certs.verify()?;
        let stats = Arc::new(MeshStats::default());
        let latency = Arc::new(LatencyTable::default());
        let socket = transport::bind_udp_socket(config.bind_addr, latency.clone(), stats.clone())?;
        let bound = socket.local_addr()?;
        let advertise = match config.advertise_addr {
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                return Err(MeshError::Config(
                    "advertise_addr is required when bind_addr has an unspecified IP".into(),
                ))
            }
            None => bound,
        };
        let (transport, swim_rx) = Transport::new(socket, advertise, &certs, stats.clone())?;
        let incarnation = config.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1)
        });
        let identity = NodeIdentity {
            node_id: config.node_name.clone(),
            region: config.region.clone(),
            addr: advertise,
            incarnation,
            version: membership::PROTOCOL_VERSION,
        };
        let shared = Arc::new(Shared::new(identity.clone(), config.metadata.clone()));
        let (cmd_tx, cmd_rx) = mpsc::channel(membership::COMMAND_QUEUE_MAX);
        let task = tokio::spawn(membership::run(membership::LoopParams {
            identity,
            seeds: config.seeds.clone(),
            transport: transport.clone(),
            swim_rx,
            commands: cmd_rx,
            shared: shared.clone(),
            stats: stats.clone(),
            latency,
            injected_rtt_by_region: config.injected_rtt_by_region.clone(),
        }));
        tracing::info!(node = %config.node_name, region = %config.region, addr = %advertise, incarnation, "mesh started");
        Ok(MeshHandle {
            transport,
            shared,
            stats,
            commands: cmd_tx,
            task,
            addr: advertise,
        })
    }
}

/// A running mesh. Dropping it without [`MeshHandle::shutdown`] leaves no goodbye: peers
/// detect the node as down within the detection bound.
pub struct MeshHandle {
    transport: Transport,
    shared: Arc<Shared>,
    stats: Arc<MeshStats>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl MeshHandle {
    /// This node's current identity.
    pub fn identity(&self) -> NodeIdentity {
        self.shared
            .identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The mesh address this node advertises (the bound address unless configured).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every known member, this node first. Down members stay listed for
    /// [`membership::REMOVE_DOWN_AFTER`]; a restarted node's old identity is replaced.
    pub fn members(&self) -> Vec<MemberView> {
        self.client().members()
    }

    /// Replaces this node's metadata and gossips it.
    pub async fn update_metadata(&self, metadata: NodeMetadata) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::UpdateMetadata(metadata, tx))
            .await
            .map_err(|_| MeshError::ShuttingDown)?;
        rx.await.map_err(|_| MeshError::ShuttingDown)?
    }

    /// Registers (or replaces) the handler of RPC / one-way service `service` (at most
    /// [`transport::RPC_SERVICE_NAME_MAX_BYTES`]; names starting with `_` are reserved).
    pub fn register_rpc_handler(&self, service: &str, handler: Arc<dyn RpcHandler>) {
        self.transport.register_handler(service, handler);
    }

    /// A cloneable handle for RPCs and one-way messages (for tasks that outlive a borrow
    /// of the handle, such as replication and the economy's Raft transport).
    pub fn client(&self) -> MeshClient {
        MeshClient {
            transport: self.transport.clone(),
            shared: self.shared.clone(),
            commands: self.commands.clone(),
        }
    }

    /// Calls `service` on member `node_id` with [`RPC_TIMEOUT_DEFAULT`].
    pub async fn rpc(&self, node_id: &str, service: &str, body: &[u8]) -> Result<Bytes, MeshError> {
        self.client().rpc(node_id, service, body).await
    }

    /// Calls `service` on the node at mesh address `addr` (member or not) with a deadline.
    pub async fn rpc_addr(
        &self,
        addr: SocketAddr,
        service: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        self.transport.rpc(addr, service, body, timeout).await
    }

    /// Sends a one-way message to `service` on member `node_id` (unidirectional stream).
    pub async fn send_oneway(
        &self,
        node_id: &str,
        service: &str,
        body: &[u8],
    ) -> Result<(), MeshError> {
        self.client().send_oneway(node_id, service, body).await
    }

    /// Sends a one-way message to every alive member; returns how many sends succeeded.
    pub async fn broadcast(&self, service: &str, body: &[u8]) -> usize {
        self.client().broadcast(service, body).await
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<MeshStats> {
        &self.stats
    }

    /// Leaves the cluster gracefully (peers see it down at once) and closes the transport.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(1)).await
    }

    /// [`shutdown`](Self::shutdown), waiting at most `idle_wait` for the QUIC
    /// connections to finish closing (an in-place takeover keeps this short:
    /// the new process binds the same port and peers reconnect to it).
    pub async fn shutdown_within(self, idle_wait: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        self.transport.close_within(idle_wait).await;
    }

    /// Stops at once without leaving, like a crash (for tests and fault drills).
    pub fn kill(self) {
        self.task.abort();
        self.transport.abort();
    }
}

impl Drop for MeshHandle {
    fn drop(&mut self) {
        self.task.abort();
        self.transport.abort();
    }
}

/// A cloneable RPC client over the node's mesh transport. It stops working (calls fail
/// with a transport error) once the [`MeshHandle`] shuts down.
#[derive(Clone)]
pub struct MeshClient {
    transport: Transport,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl MeshClient {
    /// Every known member, this node first (see [`MeshHandle::members`]).
    pub fn members(&self) -> Vec<MemberView> {
        let me = self
            .shared
            .identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let meta = self
            .shared
            .meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let rows = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::with_capacity(rows.len() + 1);
        out.push(MemberView {
            node_id: me.node_id.clone(),
            region: me.region.clone(),
            addr: me.addr,
            state: MemberState::Alive,
            incarnation: me.incarnation,
            rtt_ms: None,
            metadata: meta.get(&me.node_id).map(|e| e.meta.clone()),
            is_self: true,
        });
        for row in rows {
            out.push(MemberView {
                rtt_ms: if row.state == MemberState::Down {
                    None
                } else {
                    self.transport.rtt_ms(&row.id.addr)
                },
                metadata: meta.get(&row.id.node_id).map(|e| e.meta.clone()),
                node_id: row.id.node_id,
                region: row.id.region,
                addr: row.id.addr,
                state: row.state,
                incarnation: row.id.incarnation,
                is_self: false,
            });
        }
        out
    }

    /// Changes this node's metadata with `f` and gossips it.
    pub async fn update_metadata(
        &self,
        f: impl FnOnce(&mut NodeMetadata),
    ) -> Result<(), MeshError> {
        let me = self
            .shared
            .identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .node_id
            .clone();
        let mut meta = self
            .shared
            .meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&me)
            .map(|e| e.meta.clone())
            .ok_or(MeshError::ShuttingDown)?;
        f(&mut meta);
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::UpdateMetadata(meta, tx))
            .await
            .map_err(|_| MeshError::ShuttingDown)?;
        rx.await.map_err(|_| MeshError::ShuttingDown)?
    }

    fn peer_addr(&self, node_id: &str) -> Result<SocketAddr, MeshError> {
        let rows = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner());
        rows.iter()
            .filter(|r| r.id.node_id == node_id && r.state != MemberState::Down)
            .max_by_key(|r| r.id.incarnation)
            .map(|r| r.id.addr)
            .ok_or_else(|| MeshError::UnknownPeer(node_id.to_string()))
    }

    /// Closes the connection to member `node_id` after it broke a protocol (see
    /// [`transport::PROTOCOL_VIOLATION`]); the next message dials again.
    pub fn disconnect(&self, node_id: &str) {
        if let Ok(addr) = self.peer_addr(node_id) {
            self.transport.disconnect(addr);
        }
    }

    /// Names and regions of the members not declared down (this node excluded).
    pub fn peers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.state != MemberState::Down)
            .map(|r| (r.id.node_id.clone(), r.id.region.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Calls `service` on member `node_id` with [`RPC_TIMEOUT_DEFAULT`].
    pub async fn rpc(&self, node_id: &str, service: &str, body: &[u8]) -> Result<Bytes, MeshError> {
        self.rpc_timeout(node_id, service, body, RPC_TIMEOUT_DEFAULT)
            .await
    }

    /// Calls `service` on member `node_id` with a deadline.
    pub async fn rpc_timeout(
        &self,
        node_id: &str,
        service: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        let addr = self.peer_addr(node_id)?;
        self.transport.rpc(addr, service, body, timeout).await
    }

    /// Sends a one-way message to `service` on member `node_id` (unidirectional stream).
    pub async fn send_oneway(
        &self,
        node_id: &str,
        service: &str,
        body: &[u8],
    ) -> Result<(), MeshError> {
        let addr = self.peer_addr(node_id)?;
        self.transport.send_oneway(addr, service, body).await
    }

    /// Sends a one-way message to every alive member; returns how many sends succeeded.
    pub async fn broadcast(&self, service: &str, body: &[u8]) -> usize {
        let targets: Vec<SocketAddr> = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.state == MemberState::Alive)
            .map(|r| r.id.addr)
            .collect();
        let sends = targets
            .into_iter()
            .map(|addr| self.transport.send_oneway(addr, service, body));
        futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count()
    }
}
