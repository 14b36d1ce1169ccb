//! Membership: foca (SWIM) over the [`crate::transport`], plus gossiped member metadata.
//!
//! For: knowing which nodes exist, which are alive, suspect or down, and what each one
//! advertises (region, API URL, game host, beacon, capacity, load).
//!
//! Not for: sockets or TLS (the transport owns them) or consensus: SWIM views are eventually
//! consistent and two nodes may briefly disagree.
//!
//! # Shape
//! One task owns the `Foca` instance and is the only code that touches it. It reacts to
//! incoming SWIM packets, timers and commands, and drains foca's `AccumulatingRuntime` after
//! each call: packets go to [`crate::transport::Transport::send_swim`] (never blocks), timers
//! become sleeping tasks that feed a bounded queue, notifications update counters and
//! latency injection. Readers get a snapshot refreshed every
//! [`SNAPSHOT_INTERVAL`] and after every notification.
//!
//! # Failure detection bound
//! [`swim_config`]: probe period [`PROBE_PERIOD`] (600 ms), direct-ack wait [`PROBE_RTT`]
//! (300 ms, above the largest injected demo RTT), suspicion [`SUSPECT_TO_DOWN_AFTER`] (2 s).
//! A crashed node is probed within about 3 periods by some member, turns suspect one period
//! later, and down after the suspicion time: [`DOWN_DETECTION_BOUND`] = 5 s on loopback.
//! An alive node refutes a suspicion as soon as it hears of it (gossip every 200 ms), so a
//! false "down" needs 2 s of lost packets in both directions.
//!
//! # Identity and restarts
//! [`NodeIdentity`] carries an `incarnation` (unix ms at start by default). A restarted node
//! has a higher one and wins the address conflict with its old identity (foca `Rename`); a
//! node declared down renews itself (`Identity::renew`, incarnation + 1) and rejoins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Config, Foca, Invalidates, OwnedNotification,
    PeriodicParams, PostcardCodec, Timer,
};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::stats::MeshStats;
use crate::transport::{LatencyTable, Transport, PEERS_MAX, SWIM_PACKET_MAX_BYTES};
use crate::MeshError;

/// Wire protocol version carried in every identity.
pub const PROTOCOL_VERSION: u16 = 1;
/// SWIM probe period.
pub const PROBE_PERIOD: Duration = Duration::from_millis(600);
/// How long a direct probe waits for its ack before asking others to probe indirectly.
pub const PROBE_RTT: Duration = Duration::from_millis(300);
/// How long a member stays suspect before it is declared down (unless it refutes).
pub const SUSPECT_TO_DOWN_AFTER: Duration = Duration::from_secs(2);
/// Stated bound: a crashed node is seen as down by every member within this time
/// (loopback, demo latencies up to 150 ms RTT).
pub const DOWN_DETECTION_BOUND: Duration = Duration::from_secs(5);
/// Stated bound: nodes started together with a common seed all see each other alive within
/// this time.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(5);
/// Down members are forgotten after this long.
pub const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(300);
/// Extra cluster gossip interval (and fan-out [`GOSSIP_FANOUT`]).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Members gossiped to per [`GOSSIP_INTERVAL`].
pub const GOSSIP_FANOUT: usize = 3;
/// Down members re-announced to per [`ANNOUNCE_DOWN_INTERVAL`] (heals partitions).
pub const ANNOUNCE_DOWN_INTERVAL: Duration = Duration::from_secs(3);
/// Times one update (or metadata broadcast) is piggybacked.
pub const MAX_TRANSMISSIONS: u8 = 6;
/// First retry delay of the seed join loop; doubles up to [`JOIN_RETRY_MAX`].
pub const JOIN_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Largest retry delay of the seed join loop.
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);
/// Own metadata is re-broadcast this often (so late joiners learn it).
pub const METADATA_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest encoded metadata broadcast.
pub const METADATA_MAX_BYTES: usize = 512;
/// Member snapshot refresh interval.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(200);
/// Timer events queued for the membership loop (foca keeps O(members) timers pending).
pub const TIMER_QUEUE_MAX_EVENTS: usize = 4096;
/// Commands queued for the membership loop.
pub const COMMAND_QUEUE_MAX: usize = 64;

/// A node's SWIM identity: what every SWIM packet carries about its sender.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node name (unique in the cluster, also the certificate's name).
    pub node_id: String,
    /// Region the node serves.
    pub region: String,
    /// Mesh (QUIC) address peers reach it at.
    pub addr: SocketAddr,
    /// Grows on every restart and renewal; the higher one wins.
    pub incarnation: u64,
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Ends suspicions that foca forgot to time out.
///
/// foca declares a suspect down with a timer, and it invalidates every pending timer when it
/// goes idle, undead or rejoins (it bumps its timer token). A member suspected just before
/// that stays `Suspect` in this node's view for good unless the member itself refutes, which
/// it cannot when it never hears of the suspicion: the member is then neither alive nor down
/// here while every other node sees it alive (found by the simulator, `meridian-sim`). Call
/// [`SuspicionSweep::expired`] periodically with the membership and apply what it returns with
/// `Foca::apply_many`: a member suspect for longer than [`SUSPICION_SWEEP_AFTER`] at the same
/// incarnation is declared down, learns it (foca's announce to down members) and rejoins with a
/// renewed identity, as after any other false suspicion.
#[derive(Debug, Default)]
pub struct SuspicionSweep {
    since: HashMap<NodeIdentity, (foca::Incarnation, tokio::time::Instant)>,
}

/// A suspicion older than this is stale (the timer would have fired after
/// [`SUSPECT_TO_DOWN_AFTER`]); two probe periods of slack.
pub const SUSPICION_SWEEP_AFTER: Duration = Duration::from_millis(
    SUSPECT_TO_DOWN_AFTER.as_millis() as u64 + 2 * PROBE_PERIOD.as_millis() as u64,
);

impl SuspicionSweep {
    /// The members to declare down now. `now` is tokio's clock (simulated under turmoil).
    pub fn expired<'a>(
        &mut self,
        members: impl Iterator<Item = &'a foca::Member<NodeIdentity>>,
        now: tokio::time::Instant,
    ) -> Vec<foca::Member<NodeIdentity>> {
        let mut seen = HashMap::with_capacity(self.since.len());
        let mut out = Vec::new();
        for m in members {
            if m.state() != foca::State::Suspect {
                continue;
            }
            let inc = m.incarnation();
            let start = match self.since.get(m.id()) {
                Some((i, t)) if *i == inc => *t,
                _ => now,
            };
            if now.duration_since(start) >= SUSPICION_SWEEP_AFTER {
                out.push(foca::Member::new(m.id().clone(), inc, foca::State::Down));
            } else {
                seen.insert(m.id().clone(), (inc, start));
            }
        }
        self.since = seen;
        out
    }
}

/// What a node advertises about itself, gossiped to every member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetadata {
    /// Public HTTP API base URL, e.g. `http://127.0.0.1:7700`.
    pub api_url: String,
    /// Host clients use to reach this region's dedicated game servers.
    pub game_host: String,
    /// First game server port (0 when none).
    pub game_port: u16,
    /// UDP beacon address clients ping.
    pub beacon_addr: Option<SocketAddr>,
    /// Dedicated game server slots this node can host.
    pub dgs_capacity: u32,
    /// Current load, 0.0 (idle) ..= 1.0 (full).
    pub load: f32,
    /// Software version of the node (informational).
    pub build_version: String,
    /// Id of the economy cluster the node's shards belong to (0 = none
    /// yet); nodes of another cluster are never added as voters.
    pub economy_cluster: u64,
    /// The node is draining: no new matches, its Raft voters move away.
    pub draining: bool,
}

/// SWIM state of a member as seen by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; down unless it refutes within [`SUSPECT_TO_DOWN_AFTER`].
    Suspect,
    /// Declared down (crashed, partitioned away, or left).
    Down,
}

impl From<foca::State> for MemberState {
    fn from(s: foca::State) -> Self {
        match s {
            foca::State::Alive => Self::Alive,
            foca::State::Suspect => Self::Suspect,
            foca::State::Down => Self::Down,
        }
    }
}

/// Returns the incarnation for this start and records it in `state_file`:
/// `max(previous + 1, unix time in ms)`. Persisting it makes a restart win over the old
/// identity even when the clock went backwards (skew, NTP step). Pass the result as
/// [`crate::MeshConfig::incarnation`].
pub fn next_incarnation(state_file: &std::path::Path) -> std::io::Result<u64> {
    let previous = match std::fs::read_to_string(state_file) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let next = previous.saturating_add(1).max(now_ms);
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(state_file, next.to_string())?;
    Ok(next)
}

/// The foca configuration the mesh runs with (see the module docs for the bound).
pub fn swim_config() -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    c.probe_period = PROBE_PERIOD;
    c.probe_rtt = PROBE_RTT;
    c.suspect_to_down_after = SUSPECT_TO_DOWN_AFTER;
    c.remove_down_after = Some(REMOVE_DOWN_AFTER);
    c.max_packet_size = NonZeroUsize::new(SWIM_PACKET_MAX_BYTES).unwrap_or(NonZeroUsize::MIN);
    c.max_transmissions = NonZeroU8::new(MAX_TRANSMISSIONS).unwrap_or(NonZeroU8::MIN);
    c.notify_down_members = true;
    c.periodic_gossip = Some(PeriodicParams {
        frequency: GOSSIP_INTERVAL,
        num_members: NonZeroUsize::new(GOSSIP_FANOUT).unwrap_or(NonZeroUsize::MIN),
    });
    c.periodic_announce = Some(PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: ANNOUNCE_DOWN_INTERVAL,
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

// ---------------------------------------------------------------------------------------
// Metadata broadcasts.

#[derive(Serialize, Deserialize)]
struct MetaUpdate {
    node_id: String,
    incarnation: u64,
    seq: u64,
    meta: NodeMetadata,
}

/// Dissemination key of a metadata broadcast: newer (incarnation, seq) of the same node
/// replaces older ones in foca's backlog.
#[derive(Debug)]
pub(crate) struct MetaKey {
    node_id: String,
    version: (u64, u64),
}

impl Invalidates for MetaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id && self.version >= other.version
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata broadcast: {0}")]
pub(crate) struct MetaDecodeError(postcard::Error);

#[derive(Clone, Debug)]
pub(crate) struct MetaEntry {
    version: (u64, u64),
    pub(crate) meta: NodeMetadata,
}

struct MetaHandler {
    shared: Arc<Shared>,
}

impl BroadcastHandler<NodeIdentity> for MetaHandler {
    type Key = MetaKey;
    type Error = MetaDecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<MetaKey>, MetaDecodeError> {
        let update: MetaUpdate = postcard::from_bytes(data).map_err(MetaDecodeError)?;
        let version = (update.incarnation, update.seq);
        let mut meta = self.shared.meta.lock().unwrap_or_else(|e| e.into_inner());
        match meta.get(&update.node_id) {
            Some(have) if have.version >= version => return Ok(None),
            None if meta.len() >= PEERS_MAX => return Ok(None),
            _ => {}
        }
        meta.insert(
            update.node_id.clone(),
            MetaEntry {
                version,
                meta: update.meta,
            },
        );
        Ok(Some(MetaKey {
            node_id: update.node_id,
            version,
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Shared state read by the facade.

/// One row of the membership snapshot.
#[derive(Clone, Debug)]
pub(crate) struct MemberRow {
    pub(crate) id: NodeIdentity,
    pub(crate) state: MemberState,
}

/// State shared between the membership loop and [`crate::MeshHandle`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) identity: RwLock<NodeIdentity>,
    pub(crate) members: RwLock<Vec<MemberRow>>,
    pub(crate) meta: Mutex<HashMap<String, MetaEntry>>,
}

impl Shared {
    pub(crate) fn new(identity: NodeIdentity, meta: NodeMetadata) -> Self {
        let mut map = HashMap::new();
        map.insert(
            identity.node_id.clone(),
            MetaEntry {
                version: (identity.incarnation, 0),
                meta,
            },
        );
        Self {
            identity: RwLock::new(identity),
            members: RwLock::new(Vec::new()),
            meta: Mutex::new(map),
        }
    }
}

/// Commands from the facade to the membership loop.
pub(crate) enum Command {
    UpdateMetadata(NodeMetadata, oneshot::Sender<Result<(), MeshError>>),
    Leave(oneshot::Sender<()>),
}

/// What the membership loop needs.
pub(crate) struct LoopParams {
    pub(crate) identity: NodeIdentity,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) transport: Transport,
    pub(crate) swim_rx: mpsc::Receiver<Bytes>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<MeshStats>,
    pub(crate) latency: Arc<LatencyTable>,
    pub(crate) injected_rtt_by_region: HashMap<String, Duration>,
}

type MeshFoca = Foca<NodeIdentity, PostcardCodec, StdRng, MetaHandler>;

struct Loop {
    foca: MeshFoca,
    rt: AccumulatingRuntime<NodeIdentity>,
    timer_tx: mpsc::Sender<Timer<NodeIdentity>>,
    transport: Transport,
    shared: Arc<Shared>,
    stats: Arc<MeshStats>,
    latency: Arc<LatencyTable>,
    injected_rtt_by_region: HashMap<String, Duration>,
    applied_latency: HashMap<SocketAddr, Duration>,
    meta_seq: u64,
    dirty: bool,
}

/// Runs the membership loop until a `Leave` command (or the command channel closes).
pub(crate) async fn run(p: LoopParams) {
    let LoopParams {
        identity,
        seeds,
        transport,
        mut swim_rx,
        mut commands,
        shared,
        stats,
        latency,
        injected_rtt_by_region,
    } = p;
    let seeds: Vec<SocketAddr> = seeds.into_iter().filter(|s| *s != identity.addr).collect();
    let rng: StdRng = rand::make_rng();
    let foca = Foca::with_custom_broadcast(
        identity.clone(),
        swim_config(),
        rng,
        PostcardCodec,
        MetaHandler {
            shared: shared.clone(),
        },
    );
    let (timer_tx, mut timer_rx) = mpsc::channel(TIMER_QUEUE_MAX_EVENTS);
    let mut l = Loop {
        foca,
        rt: AccumulatingRuntime::new(),
        timer_tx,
        transport,
        shared,
        stats,
        latency,
        injected_rtt_by_region,
        applied_latency: HashMap::new(),
        meta_seq: 0,
        dirty: true,
    };
    l.broadcast_own_metadata();

    let mut join_delay = JOIN_RETRY_INITIAL;
    let mut next_join = Instant::now();
    let mut join_failures: u32 = 0;
    let mut joined = false;
    if seeds.is_empty() {
        tracing::info!(node = %identity.node_id, "mesh: no seeds configured; waiting for others to join");
    }
    let mut tick = tokio::time::interval(SNAPSHOT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_meta_refresh = Instant::now();
    let mut suspicions = SuspicionSweep::default();

    loop {
        tokio::select! {
            Some(packet) = swim_rx.recv() => {
                if let Err(e) = l.foca.handle_data(&packet, &mut l.rt) {
                    MeshStats::inc(&l.stats.swim_packets_rejected);
                    tracing::debug!(error = %e, "mesh: SWIM packet rejected");
                }
            }
            Some(timer) = timer_rx.recv() => {
                if matches!(timer, Timer::ProbeRandomMember(_)) {
                    MeshStats::inc(&l.stats.swim_probes);
                }
                if let Err(e) = l.foca.handle_timer(timer, &mut l.rt) {
                    tracing::debug!(error = %e, "mesh: timer error");
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::UpdateMetadata(meta, reply)) => {
                    let result = l.set_own_metadata(meta);
                    let _ = reply.send(result);
                }
                Some(Command::Leave(done)) => {
                    l.leave().await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    l.leave().await;
                    return;
                }
            },
            _ = tick.tick() => {
                l.dirty = true;
                let stale = suspicions.expired(l.foca.iter_membership_state(), tokio::time::Instant::now());
                if !stale.is_empty() {
                    for m in &stale {
                        MeshStats::inc(&l.stats.swim_stale_suspicions_expired);
                        tracing::warn!(node = %m.id().node_id, "mesh: suspicion outlived its timer; declaring the member down");
                    }
                    if let Err(e) = l.foca.apply_many(stale.into_iter(), true, &mut l.rt) {
                        tracing::debug!(error = %e, "mesh: applying expired suspicions failed");
                    }
                }
                let now = Instant::now();
                if l.foca.num_members() == 0 {
                    if joined {
                        joined = false;
                        join_delay = JOIN_RETRY_INITIAL;
                        next_join = now;
                    }
                    if !seeds.is_empty() && now >= next_join {
                        if join_failures >= 3 {
                            tracing::warn!(
                                seeds = ?seeds,
                                attempts = join_failures,
                                retry_in_ms = join_delay.as_millis() as u64,
                                "mesh: no seed answered; is any seed node running and reachable with a certificate of this cluster's CA? retrying"
                            );
                        } else {
                            tracing::info!(seeds = ?seeds, "mesh: joining via seeds");
                        }
                        MeshStats::inc(&l.stats.seed_join_attempts);
                        for seed in &seeds {
                            let placeholder = NodeIdentity {
                                node_id: String::new(),
                                region: String::new(),
                                addr: *seed,
                                incarnation: 0,
                                version: PROTOCOL_VERSION,
                            };
                            if let Err(e) = l.foca.announce(placeholder, &mut l.rt) {
                                tracing::debug!(error = %e, "mesh: announce failed");
                            }
                        }
                        join_failures = join_failures.saturating_add(1);
                        next_join = now + join_delay;
                        join_delay = (join_delay * 2).min(JOIN_RETRY_MAX);
                    }
                } else if !joined {
                    joined = true;
                    join_failures = 0;
                    join_delay = JOIN_RETRY_INITIAL;
                    tracing::info!(members = l.foca.num_members(), "mesh: joined");
                }
                if last_meta_refresh.elapsed() >= METADATA_REFRESH_INTERVAL {
                    last_meta_refresh = Instant::now();
                    l.broadcast_own_metadata();
                }
            }
        }
        l.drain();
        if l.dirty {
            l.refresh_snapshot();
        }
    }
}

impl Loop {
    fn drain(&mut self) {
        while let Some((to, packet)) = self.rt.to_send() {
            self.transport.send_swim(to.addr, packet);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            if matches!(timer, Timer::ChangeSuspectToDown { .. }) {
                MeshStats::inc(&self.stats.swim_suspicions);
            }
            let tx = self.timer_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer).await;
            });
        }
        let mut rebroadcast = false;
        while let Some(n) = self.rt.to_notify() {
            self.dirty = true;
            match n {
                OwnedNotification::MemberUp(id) => {
                    MeshStats::inc(&self.stats.members_up_events);
                    tracing::info!(node = %id.node_id, region = %id.region, addr = %id.addr, incarnation = id.incarnation, "mesh: member up");
                    rebroadcast = true;
                }
                OwnedNotification::MemberDown(id) => {
                    MeshStats::inc(&self.stats.members_down_events);
                    tracing::warn!(node = %id.node_id, region = %id.region, addr = %id.addr, "mesh: member down");
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(node = %new.node_id, old_incarnation = old.incarnation, new_incarnation = new.incarnation, "mesh: member restarted");
                }
                OwnedNotification::Rejoin(id) => {
                    MeshStats::inc(&self.stats.self_rejoins);
                    tracing::warn!(
                        incarnation = id.incarnation,
                        "mesh: this node was declared down; rejoined with a renewed identity"
                    );
                    *self
                        .shared
                        .identity
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = id;
                    rebroadcast = true;
                }
                OwnedNotification::Active => tracing::debug!("mesh: active"),
                OwnedNotification::Idle => tracing::warn!("mesh: no active member left"),
                OwnedNotification::Defunct => {
                    // Unreachable with a renewing identity; recover anyway.
                    tracing::warn!("mesh: identity defunct; renewing");
                    let renewed = foca::Identity::renew(self.foca.identity());
                    if let Some(id) = renewed {
                        *self
                            .shared
                            .identity
                            .write()
                            .unwrap_or_else(|e| e.into_inner()) = id.clone();
                        let _ = self.foca.change_identity(id, &mut self.rt);
                    }
                }
            }
        }
        if rebroadcast {
            self.broadcast_own_metadata();
            // The rebroadcast and any identity change produced more work.
            while let Some((to, packet)) = self.rt.to_send() {
                self.transport.send_swim(to.addr, packet);
            }
        }
    }

    fn own_meta(&self) -> (NodeIdentity, NodeMetadata) {
        let id = self
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
            .get(&id.node_id)
            .map(|e| e.meta.clone())
            .unwrap_or_default();
        (id, meta)
    }

    fn encode_meta(&mut self, id: &NodeIdentity, meta: NodeMetadata) -> Result<Vec<u8>, MeshError> {
        self.meta_seq += 1;
        let update = MetaUpdate {
            node_id: id.node_id.clone(),
            incarnation: id.incarnation,
            seq: self.meta_seq,
            meta,
        };
        let data =
            postcard::to_allocvec(&update).map_err(|e| MeshError::Protocol(e.to_string()))?;
        if data.len() > METADATA_MAX_BYTES {
            return Err(MeshError::MetadataTooLarge);
        }
        Ok(data)
    }

    fn set_own_metadata(&mut self, meta: NodeMetadata) -> Result<(), MeshError> {
        let (id, _) = self.own_meta();
        let data = self.encode_meta(&id, meta)?;
        // add_broadcast runs our handler, which stores it as our own entry.
        self.foca
            .add_broadcast(&data)
            .map_err(|e| MeshError::Protocol(e.to_string()))?;
        self.dirty = true;
        Ok(())
    }

    fn broadcast_own_metadata(&mut self) {
        let (id, meta) = self.own_meta();
        if let Err(e) = self.set_own_metadata(meta) {
            tracing::warn!(error = %e, node = %id.node_id, "mesh: cannot broadcast own metadata");
        }
    }

    fn refresh_snapshot(&mut self) {
        self.dirty = false;
        let rows: Vec<MemberRow> = self
            .foca
            .iter_membership_state()
            .map(|m| MemberRow {
                id: m.id().clone(),
                state: m.state().into(),
            })
            .collect();
        for row in &rows {
            let rtt = self
                .injected_rtt_by_region
                .get(&row.id.region)
                .copied()
                .unwrap_or_default();
            if self.applied_latency.get(&row.id.addr) != Some(&rtt)
                && self.applied_latency.len() < PEERS_MAX
            {
                // The configured value is a round trip; each side delays its sends by half.
                self.latency.set(row.id.addr, rtt / 2);
                self.applied_latency.insert(row.id.addr, rtt);
            }
        }
        *self
            .shared
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner()) = rows;
    }

    async fn leave(&mut self) {
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "mesh: leave failed");
        }
        while let Some((to, packet)) = self.rt.to_send() {
            self.transport.send_swim(to.addr, packet);
        }
        tracing::info!("mesh: left the cluster");
        // Let the per-peer send queues flush before the transport closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_suspicions_expire_and_fresh_ones_do_not() {
        let id = |n: &str| NodeIdentity {
            node_id: n.into(),
            region: "r".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
            version: PROTOCOL_VERSION,
        };
        let (a, b) = (id("a"), id("b"));
        let t0 = tokio::time::Instant::now();
        let mut sweep = SuspicionSweep::default();
        let view = |sa: foca::State, inc_a: u16, sb: foca::State| {
            vec![
                foca::Member::new(a.clone(), inc_a, sa),
                foca::Member::new(b.clone(), 0, sb),
            ]
        };
        use foca::State::{Alive, Suspect};
        assert!(sweep.expired(view(Suspect, 0, Alive).iter(), t0).is_empty());
        // Just before the bound: still a fresh suspicion.
        let almost = t0 + SUSPICION_SWEEP_AFTER - Duration::from_millis(1);
        assert!(sweep
            .expired(view(Suspect, 0, Suspect).iter(), almost)
            .is_empty());
        // At the bound: `a` (suspect since t0) is declared down at its incarnation; `b` (suspect
        // since `almost`) is not.
        let due = sweep.expired(view(Suspect, 0, Suspect).iter(), t0 + SUSPICION_SWEEP_AFTER);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id(), &a);
        assert_eq!(due[0].state(), foca::State::Down);
        // A refutation (higher incarnation, suspected again) restarts the clock.
        let later = t0 + SUSPICION_SWEEP_AFTER * 2;
        assert!(sweep
            .expired(view(Suspect, 1, Alive).iter(), later)
            .is_empty());
        assert!(sweep
            .expired(
                view(Suspect, 1, Alive).iter(),
                later + SUSPICION_SWEEP_AFTER / 2
            )
            .is_empty());
        // A member that turned alive is forgotten.
        assert!(sweep
            .expired(view(Alive, 1, Alive).iter(), later)
            .is_empty());
        assert!(sweep.since.is_empty());
    }

    #[test]
    fn incarnation_always_grows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh").join("incarnation");
        // A value far in the future (clock went backwards since) is still exceeded.
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, (u64::MAX / 2).to_string()).unwrap();
        let a = next_incarnation(&file).unwrap();
        let b = next_incarnation(&file).unwrap();
        assert_eq!(a, u64::MAX / 2 + 1);
        assert_eq!(b, a + 1);
    }

    #[test]
    fn newer_metadata_invalidates_older() {
        let k = |v| MetaKey {
            node_id: "a".into(),
            version: v,
        };
        assert!(k((2, 0)).invalidates(&k((1, 9))));
        assert!(!k((1, 1)).invalidates(&k((1, 2))));
        let other = MetaKey {
            node_id: "b".into(),
            version: (9, 9),
        };
        assert!(!other.invalidates(&k((1, 1))));
    }

    #[test]
    fn identity_renewal_wins() {
        use foca::Identity;
        let id = NodeIdentity {
            node_id: "a".into(),
            region: "eu".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 5,
            version: PROTOCOL_VERSION,
        };
        let renewed = id.renew().unwrap();
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
    }

    #[test]
    fn swim_config_is_valid_and_bounded() {
        let c = swim_config();
        assert!(c.probe_rtt < c.probe_period);
        // Worst case: probed within 3 periods, one more to fail, then the suspicion.
        assert!(c.probe_period * 4 + c.suspect_to_down_after <= DOWN_DETECTION_BOUND);
        assert!(c.max_packet_size.get() <= SWIM_PACKET_MAX_BYTES);
    }
}
