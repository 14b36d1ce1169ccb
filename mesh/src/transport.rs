//! Node-to-node transport: one quinn endpoint with mutual TLS, one QUIC connection per peer.
//!
//! For: SWIM packets (QUIC datagrams), request/response RPC (bidirectional streams, one per
//! call) and one-way messages (unidirectional streams), plus RTT per peer from
//! `quinn::Connection::rtt()` smoothed with an EWMA.
//!
//! Not for: deciding who is a member (that is [`crate::membership`]) or retrying RPCs
//! (callers decide). Nothing here blocks the SWIM loop: sends go through bounded per-peer
//! queues and are dropped and counted when a queue is full.
//!
//! # Trust
//! Both ends present a certificate; both verify the other's chain against the cluster CA
//! only (rustls `WebPkiClientVerifier` on the server side, the CA as the only root on the
//! client side), including its validity window. A process without a certificate of the
//! cluster CA cannot complete a handshake, so it can neither send SWIM packets nor call RPCs.
//!
//! # The socket seam
//! Every byte goes through one [`quinn::AsyncUdpSocket`] trait object, made by
//! [`bind_udp_socket`] and handed to [`Transport::new`]. Nothing else in the crate touches a
//! socket. To run the mesh on turmoil's simulated network, implement `AsyncUdpSocket` over
//! `turmoil::net::UdpSocket` and pass it instead (quinn's `TokioRuntime` still provides the
//! timers, which turmoil drives). Latency injection for the local demo is a wrapper at the
//! same seam ([`LatencyTable`]), so QUIC's RTT, SWIM probes and RPCs all see the delay.
//!
//! # Garbage on the mesh port
//! A second wrapper at the seam inspects every received datagram (each GRO segment of a
//! batch) before quinn sees it, and drops and counts in [`MeshStats`] what cannot be QUIC v1
//! from a mesh peer: empty datagrams, a clear fixed bit (0x40) in the first byte, long headers
//! too short to hold a version or whose version is not QUIC v1 (version negotiation included),
//! and datagrams larger than [`MESH_DATAGRAM_MAX_BYTES`]. The fixed-bit check is valid because
//! the endpoint disables quinn's "grease the QUIC bit" (RFC 9287; on by default in quinn), so
//! peers never clear it, and the version check because the endpoint only speaks QUIC v1. The
//! check reads at most five bytes; anything that passes is still authenticated by quinn.
//!
//! # One connection per pair
//! Connections are cached by peer address. Dials are serialized per peer. When both sides
//! dial at once, the connection dialed by the lower address wins on both sides and the other
//! is closed after [`DUPLICATE_CLOSE_GRACE`]; a newer incoming connection otherwise replaces
//! an older one (the peer restarted). Failed dials are not retried for [`REDIAL_BACKOFF`].

use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Connection, Endpoint, UdpPoller};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::pki::{NodeCerts, MESH_SERVER_NAME};
use crate::stats::MeshStats;
use crate::MeshError;

/// Largest SWIM packet; foca's `max_packet_size` is set to this. Fits one QUIC datagram at
/// the minimum QUIC MTU (1200 bytes minus headers); larger packets travel on a uni stream.
pub const SWIM_PACKET_MAX_BYTES: usize = 1100;
/// Largest RPC request or response body (and one-way message body).
pub const RPC_MESSAGE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Longest RPC service name.
pub const RPC_SERVICE_NAME_MAX_BYTES: usize = 64;
/// Default deadline of an RPC (connect + request + response).
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Concurrent RPC streams a peer may open on one connection (QUIC stream credit).
pub const RPC_CONCURRENT_MAX_PER_CONN: u32 = 64;
/// Concurrent one-way streams a peer may open on one connection (QUIC stream credit).
pub const ONEWAY_CONCURRENT_MAX_PER_CONN: u32 = 64;
/// Outgoing SWIM packets queued per peer while its connection is being set up.
pub const PEER_SEND_QUEUE_MAX_PACKETS: usize = 256;
/// Incoming SWIM packets queued for the membership loop.
pub const INBOUND_SWIM_QUEUE_MAX_PACKETS: usize = 1024;
/// Peers the transport tracks (connection slots and send queues).
pub const PEERS_MAX: usize = 1024;
/// Incoming handshakes in progress at once; more are refused.
pub const HANDSHAKES_INFLIGHT_MAX: usize = 64;
/// Deadline of a QUIC handshake (dial or accept).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial, no new dial to that peer for this long (sends are dropped).
pub const REDIAL_BACKOFF: Duration = Duration::from_millis(500);
/// A connection with no traffic for this long is closed (keep-alives prevent it when up).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive interval; also keeps RTT samples fresh.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// Two connections to one peer established within this window are a simultaneous dial.
pub const DUPLICATE_CONN_WINDOW: Duration = Duration::from_secs(2);
/// A connection that lost the duplicate tie-break is closed after this grace period.
pub const DUPLICATE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Receive buffer for QUIC datagrams per connection.
pub const DATAGRAM_RECV_BUFFER_BYTES: usize = 256 * 1024;
/// How often RTT is sampled from each connection.
pub const RTT_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Weight of a new RTT sample in the EWMA.
pub const RTT_EWMA_ALPHA: f64 = 0.2;
/// Packets waiting in the latency-injection queue; more are dropped (like loss).
pub const LATENCY_QUEUE_MAX_PACKETS: usize = 4096;
/// ALPN protocol id of the mesh.
pub const ALPN: &[u8] = b"meridian-mesh/1";
/// Largest UDP payload accepted on the mesh port: quinn's `max_udp_payload_size` (advertised
/// to peers, who never send larger datagrams) is set to this, and larger received datagrams
/// are dropped before quinn and counted in `udp_datagrams_oversize`. Ethernet MTU minus IP
/// and UDP headers (quinn's default); QUIC's path MTU discovery stays below it.
///
/// Where the OS cannot coalesce received datagrams (no UDP GRO, e.g. non-Linux), quinn's
/// receive buffer is this large and the OS truncates longer datagrams to it, so they cannot be
/// recognized as oversize; quinn then drops them as undecryptable, uncounted.
pub const MESH_DATAGRAM_MAX_BYTES: usize = 1472;
/// The only QUIC version the mesh speaks (RFC 9000).
const QUIC_V1: u32 = 1;
/// Fixed bit of the first byte of every QUIC v1 packet (RFC 9000 §17).
const QUIC_FIXED_BIT: u8 = 0x40;
/// Header form bit: set for long headers (RFC 9000 §17.2).
const QUIC_LONG_HEADER_BIT: u8 = 0x80;

/// An RPC handler whose error message starts with this marks the request as a protocol
/// violation: the error is answered, then the connection to that peer is closed (and
/// counted in `connections_dropped_for_violation`). The peer may dial again.
pub const PROTOCOL_VIOLATION: &str = "protocol violation: ";

/// Internal service name carrying SWIM packets too large for a datagram.
const SWIM_SERVICE: &str = "_swim";

/// Boxed future returned by an [`RpcHandler`].
pub type RpcFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

/// Serves requests of one RPC service. Implemented for any
/// `Fn(SocketAddr, Bytes) -> impl Future<Output = Result<Bytes, String>>`.
///
/// `from` is the peer's mesh address (already authenticated by its certificate). An `Err`
/// string is returned to the caller as [`MeshError::Remote`]. For one-way messages the
/// result is discarded.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, from: SocketAddr, body: Bytes) -> RpcFuture;
}

impl<F, Fut> RpcHandler for F
where
    F: Fn(SocketAddr, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    fn call(&self, from: SocketAddr, body: Bytes) -> RpcFuture {
        Box::pin(self(from, body))
    }
}

#[derive(Serialize, Deserialize)]
struct Request {
    service: String,
    body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum Response {
    Ok(Vec<u8>),
    Err(String),
}

/// Frame overhead allowed on top of [`RPC_MESSAGE_MAX_BYTES`] (service name, varints).
const FRAME_OVERHEAD_MAX_BYTES: usize = 256;

async fn write_frame(send: &mut quinn::SendStream, payload: &[u8]) -> Result<(), MeshError> {
    let len = u32::try_from(payload.len()).map_err(|_| MeshError::MessageTooLarge)?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| MeshError::Stream(e.to_string()))?;
    send.write_all(payload)
        .await
        .map_err(|e| MeshError::Stream(e.to_string()))?;
    send.finish()
        .map_err(|e| MeshError::Stream(e.to_string()))?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, MeshError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| MeshError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > RPC_MESSAGE_MAX_BYTES + FRAME_OVERHEAD_MAX_BYTES {
        return Err(MeshError::MessageTooLarge);
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| MeshError::Stream(e.to_string()))?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------
// The socket seam and latency injection.

/// Injected one-way delay per destination address, applied to every UDP packet the mesh
/// sends (so QUIC RTT, SWIM and RPC all see it). For the local demo only; empty means no
/// delay. The membership layer fills it from a per-region table once it learns a peer's
/// region.
#[derive(Debug, Default)]
pub struct LatencyTable {
    one_way: RwLock<HashMap<SocketAddr, Duration>>,
}

impl LatencyTable {
    /// Sets the one-way delay of packets sent to `addr` (zero removes it).
    pub fn set(&self, addr: SocketAddr, one_way: Duration) {
        let mut map = self.one_way.write().unwrap_or_else(|e| e.into_inner());
        if one_way.is_zero() {
            map.remove(&addr);
        } else if map.len() < PEERS_MAX || map.contains_key(&addr) {
            map.insert(addr, one_way);
        }
    }

    /// The one-way delay of packets sent to `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Duration {
        let map = self.one_way.read().unwrap_or_else(|e| e.into_inner());
        map.get(addr).copied().unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.one_way
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// Binds the mesh's UDP socket: the single place where the mesh touches the OS network.
/// Packets to destinations listed in `latency` are held back by their delay.
pub fn bind_udp_socket(
    addr: SocketAddr,
    latency: Arc<LatencyTable>,
    stats: Arc<MeshStats>,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let std_socket = std::net::UdpSocket::bind(addr)?;
    let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std_socket)?;
    let guarded = GuardSocket::wrap(inner, stats.clone());
    Ok(DelaySocket::wrap(guarded, latency, stats))
}

/// What the guard decided about one received datagram (or GRO segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Could be QUIC v1: hand it to quinn.
    Pass,
    /// Cannot be QUIC v1: drop and count in `udp_datagrams_garbage`.
    Garbage,
    /// Larger than [`MESH_DATAGRAM_MAX_BYTES`]: drop and count in `udp_datagrams_oversize`.
    Oversize,
}

/// Cheap check of one datagram: its length and at most its first five bytes. Only what can
/// never be a QUIC v1 packet for this endpoint (fixed bit not greased, v1 only) is refused.
fn classify_datagram(datagram: &[u8]) -> Verdict {
    if datagram.len() > MESH_DATAGRAM_MAX_BYTES {
        return Verdict::Oversize;
    }
    let Some(&first) = datagram.first() else {
        return Verdict::Garbage;
    };
    if first & QUIC_FIXED_BIT == 0 {
        return Verdict::Garbage;
    }
    if first & QUIC_LONG_HEADER_BIT != 0 {
        // Long header: the version follows the first byte; 0 is version negotiation, which
        // never comes from a mesh peer (every node speaks v1, and only v1 is ever offered).
        let Some(version) = datagram.get(1..5) else {
            return Verdict::Garbage;
        };
        if u32::from_be_bytes([version[0], version[1], version[2], version[3]]) != QUIC_V1 {
            return Verdict::Garbage;
        }
    }
    Verdict::Pass
}

/// Inspects the `len` received bytes at the start of `buf`, which hold one datagram or, with
/// GRO, several segments of `stride` bytes (the last one may be shorter). Counts refused
/// segments and moves the accepted ones to the front, keeping their order and the stride
/// layout (only the last segment can be short, and it stays last). Returns the new length:
/// 0 when nothing is left, which quinn skips.
fn filter_received(buf: &mut [u8], len: usize, stride: usize, stats: &MeshStats) -> usize {
    let len = len.min(buf.len());
    if len == 0 {
        MeshStats::inc(&stats.udp_datagrams_garbage);
        return 0;
    }
    let stride = if stride == 0 { len } else { stride };
    let mut kept = 0;
    let mut start = 0;
    while start < len {
        let end = start.saturating_add(stride).min(len);
        match classify_datagram(&buf[start..end]) {
            Verdict::Pass => {
                if kept != start {
                    buf.copy_within(start..end, kept);
                }
                kept += end - start;
            }
            Verdict::Garbage => MeshStats::inc(&stats.udp_datagrams_garbage),
            Verdict::Oversize => MeshStats::inc(&stats.udp_datagrams_oversize),
        }
        start = end;
    }
    kept
}

/// An [`AsyncUdpSocket`] that drops and counts received datagrams that cannot be QUIC v1
/// (see [`classify_datagram`]) before quinn sees them. Sends pass through unchanged.
struct GuardSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    stats: Arc<MeshStats>,
}

impl fmt::Debug for GuardSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GuardSocket {
    fn wrap(inner: Arc<dyn AsyncUdpSocket>, stats: Arc<MeshStats>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(Self { inner, stats })
    }
}

impl AsyncUdpSocket for GuardSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let msgs = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(msgs)) => msgs,
            other => return other,
        };
        // A message whose every segment is refused keeps its slot with length 0: quinn
        // iterates the message's bytes, so it simply has nothing to handle.
        // The stride is left as is: quinn splits by `stride.min(remaining)`.
        for (m, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(msgs) {
            m.len = filter_received(buf, m.len, m.stride, &self.stats);
        }
        Poll::Ready(Ok(msgs))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

struct Delayed {
    due: Instant,
    seq: u64,
    destination: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
    data: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// An [`AsyncUdpSocket`] that delays outgoing packets per destination.
struct DelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    latency: Arc<LatencyTable>,
    queue: mpsc::Sender<Delayed>,
    seq: std::sync::atomic::AtomicU64,
    stats: Arc<MeshStats>,
}

impl fmt::Debug for DelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelaySocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl DelaySocket {
    fn wrap(
        inner: Arc<dyn AsyncUdpSocket>,
        latency: Arc<LatencyTable>,
        stats: Arc<MeshStats>,
    ) -> Arc<dyn AsyncUdpSocket> {
        let (tx, mut rx) = mpsc::channel::<Delayed>(LATENCY_QUEUE_MAX_PACKETS);
        let sender = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut heap = BinaryHeap::new();
            loop {
                let next_due = heap.peek().map(|d: &Delayed| d.due);
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => heap.push(item),
                        None => break,
                    },
                    _ = async {
                        match next_due {
                            Some(due) => tokio::time::sleep_until(due.into()).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let Some(socket) = sender.upgrade() else { break };
                        let now = Instant::now();
                        while heap.peek().is_some_and(|d| d.due <= now) {
                            let Some(d) = heap.pop() else { break };
                            // A full socket buffer drops the packet, as a real network would.
                            let _ = socket.try_send(&Transmit {
                                destination: d.destination,
                                ecn: d.ecn,
                                contents: &d.data,
                                segment_size: d.segment_size,
                                src_ip: d.src_ip,
                            });
                        }
                    }
                }
            }
        });
        Arc::new(Self {
            inner,
            latency,
            queue: tx,
            seq: Default::default(),
            stats,
        })
    }
}

impl AsyncUdpSocket for DelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.latency.is_empty() {
            return self.inner.try_send(transmit);
        }
        let delay = self.latency.get(&transmit.destination);
        if delay.is_zero() {
            return self.inner.try_send(transmit);
        }
        let item = Delayed {
            due: Instant::now() + delay,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            destination: transmit.destination,
            ecn: transmit.ecn,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
            data: transmit.contents.to_vec(),
        };
        if self.queue.try_send(item).is_err() {
            MeshStats::inc(&self.stats.latency_queue_dropped);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

// ---------------------------------------------------------------------------------------
// TLS configuration.

fn tls_configs(certs: &NodeCerts) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &certs.ca {
        roots.add(ca.clone())?;
    }
    let roots = Arc::new(roots);

    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| MeshError::Tls(rustls::Error::General(e.to_string())))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs.chain.clone(), certs.key.clone_key())?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs.chain.clone(), certs.key.clone_key())?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];

    let transport = Arc::new(transport_config());
    let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| MeshError::Tls(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
    server.transport_config(transport.clone());
    let quic_client = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(|e| MeshError::Tls(rustls::Error::General(e.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
    client.transport_config(transport);
    Ok((server, client))
}

/// Endpoint settings the socket guard relies on (see "Garbage on the mesh port" above).
fn endpoint_config() -> Result<quinn::EndpointConfig, MeshError> {
    let mut e = quinn::EndpointConfig::default();
    // Peers must keep the fixed bit set (quinn greases it by default when the peer allows).
    e.grease_quic_bit(false);
    e.supported_versions(vec![QUIC_V1]);
    let max_payload = u16::try_from(MESH_DATAGRAM_MAX_BYTES)
        .map_err(|_| MeshError::Config("MESH_DATAGRAM_MAX_BYTES exceeds u16".into()))?;
    e.max_udp_payload_size(max_payload)
        .map_err(|e| MeshError::Config(format!("max_udp_payload_size: {e}")))?;
    Ok(e)
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // IDLE_TIMEOUT is a small constant; the conversion cannot fail.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    t.max_concurrent_bidi_streams(RPC_CONCURRENT_MAX_PER_CONN.into());
    t.max_concurrent_uni_streams(ONEWAY_CONCURRENT_MAX_PER_CONN.into());
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER_BYTES));
    t.datagram_send_buffer_size(DATAGRAM_RECV_BUFFER_BYTES);
    t
}

// ---------------------------------------------------------------------------------------
// Connections.

struct ConnEntry {
    conn: Connection,
    dialed_by_us: bool,
    established: Instant,
}

#[derive(Default)]
struct Slot {
    /// Serializes dials to this peer.
    dial: tokio::sync::Mutex<()>,
    current: Mutex<Option<ConnEntry>>,
    last_dial_failure: Mutex<Option<Instant>>,
}

impl Slot {
    fn live(&self) -> Option<Connection> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.as_ref()
            .filter(|e| e.conn.close_reason().is_none())
            .map(|e| e.conn.clone())
    }
}

/// The mesh transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    senders: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    swim_in: mpsc::Sender<Bytes>,
    handlers: RwLock<HashMap<String, Arc<dyn RpcHandler>>>,
    rtt_ms: Mutex<HashMap<SocketAddr, f64>>,
    handshakes: Arc<Semaphore>,
    closed: AtomicBool,
    stats: Arc<MeshStats>,
}

impl Transport {
    /// Starts the endpoint on `socket` (see [`bind_udp_socket`]). `advertise_addr` is the
    /// address peers know this node by (used for the duplicate-connection tie-break).
    /// Incoming SWIM packets are delivered to the returned receiver.
    pub fn new(
        socket: Arc<dyn AsyncUdpSocket>,
        advertise_addr: SocketAddr,
        certs: &NodeCerts,
        stats: Arc<MeshStats>,
    ) -> Result<(Self, mpsc::Receiver<Bytes>), MeshError> {
        let (server, client) = tls_configs(certs)?;
        let mut endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config()?,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(client);
        let (swim_in, swim_rx) = mpsc::channel(INBOUND_SWIM_QUEUE_MAX_PACKETS);
        let inner = Arc::new(Inner {
            endpoint,
            local_addr: advertise_addr,
            slots: Default::default(),
            senders: Default::default(),
            swim_in,
            handlers: Default::default(),
            rtt_ms: Default::default(),
            handshakes: Arc::new(Semaphore::new(HANDSHAKES_INFLIGHT_MAX)),
            closed: AtomicBool::new(false),
            stats,
        });
        tokio::spawn(accept_loop(inner.clone()));
        tokio::spawn(rtt_loop(Arc::downgrade(&inner)));
        Ok((Self { inner }, swim_rx))
    }

    /// Closes the connection to `addr`, if any (a peer that broke a protocol); the next
    /// message to it dials again.
    pub fn disconnect(&self, addr: SocketAddr) {
        let slot = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned();
        if let Some(conn) = slot.and_then(|s| s.live()) {
            MeshStats::inc(&self.inner.stats.connections_dropped_for_violation);
            conn.close(quinn::VarInt::from_u32(2), b"protocol violation");
        }
    }

    /// The address the endpoint's socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Registers (or replaces) the handler of RPC service `service`. Names starting with
    /// `_` (reserved) or longer than [`RPC_SERVICE_NAME_MAX_BYTES`] are ignored with a warning.
    pub fn register_handler(&self, service: &str, handler: Arc<dyn RpcHandler>) {
        if service.starts_with('_') || service.len() > RPC_SERVICE_NAME_MAX_BYTES {
            tracing::warn!(service, "mesh: invalid RPC service name ignored");
            return;
        }
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_string(), handler);
    }

    /// Queues a SWIM packet for `to`. Never blocks; drops (and counts) when the peer's
    /// queue is full or too many peers are tracked.
    pub fn send_swim(&self, to: SocketAddr, packet: Bytes) {
        let stats = &self.inner.stats;
        if self.inner.closed.load(Ordering::Relaxed) || to == self.inner.local_addr {
            return;
        }
        let mut senders = self.inner.senders.lock().unwrap_or_else(|e| e.into_inner());
        let tx = match senders.get(&to) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                if senders.len() >= PEERS_MAX && !senders.contains_key(&to) {
                    MeshStats::inc(&stats.swim_packets_dropped);
                    return;
                }
                let (tx, rx) = mpsc::channel(PEER_SEND_QUEUE_MAX_PACKETS);
                senders.insert(to, tx.clone());
                tokio::spawn(peer_sender(self.inner.clone(), to, rx));
                tx
            }
        };
        drop(senders);
        match tx.try_send(packet) {
            Ok(()) => MeshStats::inc(&stats.swim_packets_sent),
            Err(_) => MeshStats::inc(&stats.swim_packets_dropped),
        }
    }

    /// Calls `service` on the peer at `to` and waits for its reply, up to `timeout`.
    pub async fn rpc(
        &self,
        to: SocketAddr,
        service: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        let stats = self.inner.stats.clone();
        MeshStats::inc(&stats.rpc_sent);
        let result = tokio::time::timeout(timeout, self.rpc_inner(to, service, body))
            .await
            .unwrap_or(Err(MeshError::Timeout));
        if result.is_err() {
            MeshStats::inc(&stats.rpc_failed);
        }
        result
    }

    async fn rpc_inner(
        &self,
        to: SocketAddr,
        service: &str,
        body: &[u8],
    ) -> Result<Bytes, MeshError> {
        let frame = encode_request(service, body)?;
        let conn = self.inner.connection(to).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &frame).await?;
        let reply = read_frame(&mut recv).await?;
        match postcard::from_bytes::<Response>(&reply)
            .map_err(|e| MeshError::Protocol(e.to_string()))?
        {
            Response::Ok(body) => Ok(Bytes::from(body)),
            Response::Err(msg) => Err(MeshError::Remote(msg)),
        }
    }

    /// Sends a one-way message to `service` on the peer at `to` (a unidirectional stream).
    /// Returns once the message is handed to QUIC; delivery is not confirmed.
    pub async fn send_oneway(
        &self,
        to: SocketAddr,
        service: &str,
        body: &[u8],
    ) -> Result<(), MeshError> {
        let frame = encode_request(service, body)?;
        let fut = async {
            let conn = self.inner.connection(to).await?;
            let mut send = conn.open_uni().await?;
            write_frame(&mut send, &frame).await
        };
        let result = tokio::time::timeout(RPC_TIMEOUT_DEFAULT, fut)
            .await
            .unwrap_or(Err(MeshError::Timeout));
        if result.is_ok() {
            MeshStats::inc(&self.inner.stats.oneway_sent);
        }
        result
    }

    /// Smoothed RTT to the peer at `addr` in milliseconds, once sampled.
    pub fn rtt_ms(&self, addr: &SocketAddr) -> Option<f64> {
        self.inner
            .rtt_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .copied()
    }

    /// Closes every connection and the endpoint, waiting briefly so close frames go out.
    pub async fn close(&self) {
        self.close_within(Duration::from_secs(1)).await
    }

    /// [`close`](Self::close), waiting at most `idle_wait` for idle.
    pub async fn close_within(&self, idle_wait: Duration) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(idle_wait, self.inner.endpoint.wait_idle()).await;
    }

    /// Stops sending and closes the endpoint at once, without waiting (crash-like: no SWIM
    /// leave precedes it; peers must detect the node as down by probing).
    pub fn abort(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.endpoint.set_server_config(None);
        self.inner.endpoint.close(0u32.into(), b"");
    }
}

fn encode_request(service: &str, body: &[u8]) -> Result<Vec<u8>, MeshError> {
    if service.len() > RPC_SERVICE_NAME_MAX_BYTES || body.len() > RPC_MESSAGE_MAX_BYTES {
        return Err(MeshError::MessageTooLarge);
    }
    postcard::to_allocvec(&Request {
        service: service.to_string(),
        body: body.to_vec(),
    })
    .map_err(|e| MeshError::Protocol(e.to_string()))
}

impl Inner {
    fn slot(&self, addr: SocketAddr) -> Result<Arc<Slot>, MeshError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(&addr) {
            return Ok(slot.clone());
        }
        if slots.len() >= PEERS_MAX {
            // Forget slots without a live connection before refusing.
            slots.retain(|_, s| s.live().is_some());
            if slots.len() >= PEERS_MAX {
                return Err(MeshError::TooManyPeers);
            }
        }
        Ok(slots.entry(addr).or_default().clone())
    }

    /// The live connection to `addr`, dialing it if needed.
    async fn connection(self: &Arc<Self>, addr: SocketAddr) -> Result<Connection, MeshError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(MeshError::ShuttingDown);
        }
        if addr == self.local_addr {
            return Err(MeshError::UnknownPeer(addr.to_string()));
        }
        let slot = self.slot(addr)?;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let _dialing = slot.dial.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        {
            let last = slot
                .last_dial_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < REDIAL_BACKOFF) {
                return Err(MeshError::Unreachable(addr));
            }
        }
        let dial = async {
            let connecting = self.endpoint.connect(addr, MESH_SERVER_NAME)?;
            Ok::<_, MeshError>(connecting.await?)
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT, dial)
            .await
            .unwrap_or(Err(MeshError::Unreachable(addr)));
        match result {
            Ok(conn) => {
                MeshStats::inc(&self.stats.connections_dialed);
                tracing::debug!(peer = %addr, "mesh connection dialed");
                self.install(addr, &slot, conn.clone(), true);
                Ok(conn)
            }
            Err(e) => {
                MeshStats::inc(&self.stats.connections_dial_failed);
                *slot
                    .last_dial_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                tracing::debug!(peer = %addr, error = %e, "mesh dial failed");
                Err(e)
            }
        }
    }

    /// Makes `conn` the connection of `addr` unless an existing one wins the tie-break, and
    /// starts reading from it either way (a losing connection is closed after a grace
    /// period, so in-flight streams on it finish).
    fn install(
        self: &Arc<Self>,
        addr: SocketAddr,
        slot: &Slot,
        conn: Connection,
        dialed_by_us: bool,
    ) {
        let new = ConnEntry {
            conn: conn.clone(),
            dialed_by_us,
            established: Instant::now(),
        };
        let loser = {
            let mut cur = slot.current.lock().unwrap_or_else(|e| e.into_inner());
            match cur.take() {
                None => {
                    *cur = Some(new);
                    None
                }
                Some(old) if old.conn.close_reason().is_some() => {
                    *cur = Some(new);
                    None
                }
                Some(old) => {
                    let simultaneous = old.established.elapsed() < DUPLICATE_CONN_WINDOW;
                    // Both ends agree: keep the connection dialed by the lower address.
                    let we_are_lower = self.local_addr < addr;
                    let new_wins = if simultaneous {
                        new.dialed_by_us == we_are_lower
                    } else {
                        true
                    };
                    if new_wins {
                        *cur = Some(new);
                        Some(old.conn)
                    } else {
                        *cur = Some(old);
                        Some(new.conn)
                    }
                }
            }
        };
        if let Some(loser) = loser {
            tokio::spawn(async move {
                tokio::time::sleep(DUPLICATE_CLOSE_GRACE).await;
                loser.close(1u32.into(), b"duplicate");
            });
        }
        tokio::spawn(read_datagrams(self.clone(), conn.clone()));
        tokio::spawn(serve_bi(self.clone(), addr, conn.clone()));
        tokio::spawn(serve_uni(self.clone(), addr, conn));
    }

    fn deliver_swim(&self, packet: Bytes) {
        if packet.len() > SWIM_PACKET_MAX_BYTES {
            MeshStats::inc(&self.stats.swim_packets_dropped);
            return;
        }
        match self.swim_in.try_send(packet) {
            Ok(()) => MeshStats::inc(&self.stats.swim_packets_received),
            Err(_) => MeshStats::inc(&self.stats.swim_packets_dropped),
        }
    }

    fn handler(&self, service: &str) -> Option<Arc<dyn RpcHandler>> {
        self.handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            MeshStats::inc(&inner.stats.handshakes_refused);
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let result = tokio::time::timeout(CONNECT_TIMEOUT, async { incoming.await }).await;
            match result {
                Ok(Ok(conn)) => {
                    MeshStats::inc(&inner.stats.connections_accepted);
                    tracing::debug!(peer = %remote, "mesh connection accepted");
                    match inner.slot(remote) {
                        Ok(slot) => inner.install(remote, &slot, conn, false),
                        Err(_) => conn.close(2u32.into(), b"too many peers"),
                    }
                }
                Ok(Err(e)) => {
                    MeshStats::inc(&inner.stats.handshakes_refused);
                    tracing::info!(peer = %remote, error = %e, "mesh handshake refused");
                }
                Err(_) => {
                    MeshStats::inc(&inner.stats.handshakes_refused);
                    tracing::debug!(peer = %remote, "mesh handshake timed out");
                }
            }
        });
    }
}

async fn peer_sender(inner: Arc<Inner>, to: SocketAddr, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(packet) = rx.recv().await {
        let conn = match inner.connection(to).await {
            Ok(conn) => conn,
            Err(_) => {
                MeshStats::inc(&inner.stats.swim_packets_dropped);
                continue;
            }
        };
        match conn.send_datagram(packet.clone()) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::TooLarge) => {
                // Rare (a large update batch on a small path MTU): use a uni stream.
                let inner = inner.clone();
                tokio::spawn(async move {
                    let t = Transport { inner };
                    let _ = t.send_oneway(to, SWIM_SERVICE, &packet).await;
                });
            }
            Err(_) => MeshStats::inc(&inner.stats.swim_packets_dropped),
        }
    }
}

async fn read_datagrams(inner: Arc<Inner>, conn: Connection) {
    while let Ok(packet) = conn.read_datagram().await {
        inner.deliver_swim(packet);
    }
}

async fn serve_bi(inner: Arc<Inner>, from: SocketAddr, conn: Connection) {
    // QUIC stream credit (RPC_CONCURRENT_MAX_PER_CONN) bounds the concurrent tasks.
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let inner = inner.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let request =
                tokio::time::timeout(RPC_TIMEOUT_DEFAULT, decode_request(&inner, &mut recv))
                    .await
                    .unwrap_or(Err(MeshError::Timeout));
            let response = match request {
                Ok((req, handler)) => {
                    MeshStats::inc(&inner.stats.rpc_served);
                    match handler.call(from, Bytes::from(req.body)).await {
                        Ok(body) if body.len() <= RPC_MESSAGE_MAX_BYTES => {
                            Response::Ok(body.to_vec())
                        }
                        Ok(_) => Response::Err("response too large".into()),
                        Err(msg) => Response::Err(msg),
                    }
                }
                Err(e) => {
                    MeshStats::inc(&inner.stats.rpc_rejected);
                    Response::Err(e.to_string())
                }
            };
            if let Ok(frame) = postcard::to_allocvec(&response) {
                let _ = write_frame(&mut send, &frame).await;
            }
            if matches!(&response, Response::Err(m) if m.starts_with(PROTOCOL_VIOLATION)) {
                // Let the error reach the peer, then cut it off.
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                MeshStats::inc(&inner.stats.connections_dropped_for_violation);
                conn.close(quinn::VarInt::from_u32(2), b"protocol violation");
            }
        });
    }
}

async fn serve_uni(inner: Arc<Inner>, from: SocketAddr, conn: Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let frame = tokio::time::timeout(RPC_TIMEOUT_DEFAULT, read_frame(&mut recv))
                .await
                .unwrap_or(Err(MeshError::Timeout));
            let frame = match frame {
                Ok(frame) => frame,
                Err(_) => {
                    MeshStats::inc(&inner.stats.rpc_rejected);
                    return;
                }
            };
            let Ok(req) = postcard::from_bytes::<Request>(&frame) else {
                MeshStats::inc(&inner.stats.rpc_rejected);
                return;
            };
            if req.service == SWIM_SERVICE {
                inner.deliver_swim(Bytes::from(req.body));
                return;
            }
            match inner.handler(&req.service) {
                Some(handler) => {
                    MeshStats::inc(&inner.stats.oneway_received);
                    let _ = handler.call(from, Bytes::from(req.body)).await;
                }
                None => MeshStats::inc(&inner.stats.rpc_rejected),
            }
        });
    }
}

async fn decode_request(
    inner: &Inner,
    recv: &mut quinn::RecvStream,
) -> Result<(Request, Arc<dyn RpcHandler>), MeshError> {
    let frame = read_frame(recv).await?;
    let req: Request =
        postcard::from_bytes(&frame).map_err(|e| MeshError::Protocol(e.to_string()))?;
    if req.body.len() > RPC_MESSAGE_MAX_BYTES {
        return Err(MeshError::MessageTooLarge);
    }
    let handler = inner
        .handler(&req.service)
        .ok_or_else(|| MeshError::UnknownService(req.service.clone()))?;
    Ok((req, handler))
}

async fn rtt_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(RTT_SAMPLE_INTERVAL);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let live: Vec<(SocketAddr, Connection)> = {
            let slots = inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter_map(|(addr, slot)| slot.live().map(|c| (*addr, c)))
                .collect()
        };
        let mut rtts = inner.rtt_ms.lock().unwrap_or_else(|e| e.into_inner());
        rtts.retain(|addr, _| live.iter().any(|(a, _)| a == addr));
        for (addr, conn) in live {
            let sample = conn.rtt().as_secs_f64() * 1000.0;
            rtts.entry(addr)
                .and_modify(|v| *v += RTT_EWMA_ALPHA * (sample - *v))
                .or_insert(sample);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short-header packet of `len` bytes starting with `tag` (fixed bit set).
    fn short(len: usize, tag: u8) -> Vec<u8> {
        let mut p = vec![tag; len];
        p[0] = QUIC_FIXED_BIT | 0x01;
        p
    }

    fn long(version: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = QUIC_LONG_HEADER_BIT | QUIC_FIXED_BIT;
        p[1..5].copy_from_slice(&version.to_be_bytes());
        p
    }

    #[test]
    fn classify_refuses_only_what_cannot_be_quic_v1() {
        assert_eq!(classify_datagram(&[]), Verdict::Garbage);
        assert_eq!(classify_datagram(&[0x00; 40]), Verdict::Garbage);
        assert_eq!(classify_datagram(&[0xbf; 40]), Verdict::Garbage); // long, fixed bit clear
        assert_eq!(classify_datagram(&[0xc0, 0, 0]), Verdict::Garbage); // truncated long
        assert_eq!(classify_datagram(&long(0, 1200)), Verdict::Garbage); // version negotiation
                                                                         // A draft version quinn would otherwise accept.
        assert_eq!(
            classify_datagram(&long(0xff00_001d, 1200)),
            Verdict::Garbage
        );
        assert_eq!(classify_datagram(&long(QUIC_V1, 1200)), Verdict::Pass);
        assert_eq!(classify_datagram(&short(30, 7)), Verdict::Pass);
        assert_eq!(classify_datagram(&[QUIC_FIXED_BIT]), Verdict::Pass); // quinn's call
        assert_eq!(
            classify_datagram(&short(MESH_DATAGRAM_MAX_BYTES, 1)),
            Verdict::Pass
        );
        assert_eq!(
            classify_datagram(&short(MESH_DATAGRAM_MAX_BYTES + 1, 1)),
            Verdict::Oversize
        );
        // Oversize wins over garbage: the size is what makes it refused.
        assert_eq!(classify_datagram(&[0u8; 9000]), Verdict::Oversize);
    }

    #[test]
    fn filter_single_datagram() {
        let stats = MeshStats::default();
        let mut buf = short(100, 3);
        buf.resize(4096, 0xee);
        assert_eq!(filter_received(&mut buf, 100, 100, &stats), 100);
        assert_eq!(buf[..100], short(100, 3)[..]);
        let mut buf = vec![0u8; 4096];
        assert_eq!(filter_received(&mut buf, 0, 0, &stats), 0);
        assert_eq!(filter_received(&mut buf, 50, 50, &stats), 0);
        let mut big = short(2000, 1);
        assert_eq!(filter_received(&mut big, 2000, 2000, &stats), 0);
        let s = stats.snapshot();
        assert_eq!((s.udp_datagrams_garbage, s.udp_datagrams_oversize), (2, 1));
    }

    #[test]
    fn filter_gro_batch_keeps_good_segments_in_stride_layout() {
        let stats = MeshStats::default();
        let stride = 64;
        // Segments: good A, garbage, good B, garbage (fixed bit clear), short good C (last).
        let a = short(stride, 0xa);
        let b = short(stride, 0xb);
        let c = short(20, 0xc);
        let mut bad = short(stride, 0xd);
        bad[0] = 0x01;
        let vn = long(0, stride);
        let mut buf = [a.clone(), vn, b.clone(), bad, c.clone()].concat();
        let len = buf.len();
        buf.resize(len + 100, 0);
        let kept = filter_received(&mut buf, len, stride, &stats);
        assert_eq!(kept, 2 * stride + 20);
        assert_eq!(&buf[..kept], [a.clone(), b.clone(), c].concat().as_slice());
        assert_eq!(stats.snapshot().udp_datagrams_garbage, 2);

        // Dropping the short last segment leaves whole strides.
        let mut bad_last = short(10, 0xe);
        bad_last[0] = 0x3f;
        let mut buf = [a.clone(), b.clone(), bad_last].concat();
        let len = buf.len();
        assert_eq!(filter_received(&mut buf, len, stride, &stats), 2 * stride);
        assert_eq!(&buf[..2 * stride], [a, b].concat().as_slice());

        // Everything refused: nothing left for quinn.
        let mut buf = vec![0u8; 3 * stride];
        assert_eq!(filter_received(&mut buf, 3 * stride, stride, &stats), 0);
        assert_eq!(stats.snapshot().udp_datagrams_garbage, 6);
    }

    #[test]
    fn endpoint_config_matches_the_guard() {
        let e = endpoint_config().unwrap();
        assert_eq!(e.get_max_udp_payload_size(), MESH_DATAGRAM_MAX_BYTES as u64);
        let dbg = format!("{e:?}");
        assert!(dbg.contains("grease_quic_bit: false"), "{dbg}");
        assert!(dbg.contains("supported_versions: [1]"), "{dbg}");
    }
}
