//! SWIM (foca) over turmoil UDP, shared by the whole-node simulator
//! ([`crate::sim`]) and the membership-only scale runs ([`run_scale`]).
//!
//! [`run_swim`] is one member: foca with the mesh's production
//! `membership::swim_config()` on a simulated UDP port, fed datagrams and
//! timers and drained through foca's `AccumulatingRuntime` after each event.
//! What differs between its users (how it joins, which datagrams are lost,
//! what is observed, when it crashes) is a [`SwimHost`].
//!
//! [`run_scale`] puts N such members, and nothing else, on a turmoil network,
//! lets them join through a few seed nodes the way the mesh does, then
//! crashes some and measures, in simulated time, join convergence and
//! failure detection. See `docs/simulations.md` ("Scale runs").

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use meridian_mesh::membership::{
    swim_config, NodeIdentity, SuspicionSweep, JOIN_RETRY_INITIAL, JOIN_RETRY_MAX, PROBE_PERIOD,
    PROTOCOL_VERSION, SNAPSHOT_INTERVAL,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::mpsc;
use turmoil::net::UdpSocket;

use crate::checks::SimRng;

/// The SWIM port (foca with the mesh's `swim_config()` and identity); the
/// scale runs give co-hosted members the ports after it.
pub const SWIM_PORT: u16 = 7001;

/// A foca instance as the simulators run it (no custom broadcasts).
pub type SimFoca = Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>;

/// The identity of simulated member `name` (the mesh's `NodeIdentity`).
pub fn identity(name: String, region: String, addr: SocketAddr, incarnation: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: name,
        region,
        addr,
        incarnation,
        version: PROTOCOL_VERSION,
    }
}

/// What one [`run_swim`] member asks of whoever runs it.
pub trait SwimHost {
    /// How often [`SwimHost::join`] is asked.
    fn join_interval(&self) -> Duration;
    /// Identities to announce to now (empty: none).
    fn join(&mut self, foca: &SimFoca) -> Vec<NodeIdentity>;
    /// Crash-stop: once true, the member handles no event and sends nothing.
    fn crashed(&self) -> bool {
        false
    }
    /// Drop this outgoing datagram (seeded loss)?
    fn drop_datagram(&mut self) -> bool;
    /// A datagram of `bytes` bytes left.
    fn sent(&mut self, _bytes: usize) {}
    /// After every event: the notifications it produced, then the instance.
    fn observe(&mut self, foca: &SimFoca, notes: &[OwnedNotification<NodeIdentity>]);
}

enum Event {
    Data(usize),
    Timer(foca::Timer<NodeIdentity>),
    Join,
}

/// Run one SWIM member with `config` (the simulators pass the mesh's
/// `swim_config()`) on the simulated UDP port of `me.addr` until `host`
/// crashes it (or the socket fails). `rng_seed` seeds foca.
pub async fn run_swim(
    me: NodeIdentity,
    config: foca::Config,
    rng_seed: u64,
    mut host: impl SwimHost,
) -> std::io::Result<()> {
    let port = me.addr.port();
    let sock = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
    let mut foca: SimFoca = Foca::new(me, config, StdRng::seed_from_u64(rng_seed), PostcardCodec);
    let mut rt = AccumulatingRuntime::new();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel();
    let mut buf = vec![0u8; 65_536];
    let mut join = tokio::time::interval(host.join_interval());
    let mut notes = Vec::new();
    let mut suspicions = SuspicionSweep::default();
    loop {
        let ev = tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => Event::Data(r?.0),
            Some(t) = timer_rx.recv() => Event::Timer(t),
            _ = join.tick() => Event::Join,
        };
        if host.crashed() {
            return Ok(());
        }
        match ev {
            Event::Data(n) => {
                let _ = foca.handle_data(&buf[..n], &mut rt);
            }
            Event::Timer(t) => {
                let _ = foca.handle_timer(t, &mut rt);
            }
            Event::Join => {
                // The mesh's sweep for suspicions foca forgot to time out,
                // on the same tick as its join loop.
                let stale =
                    suspicions.expired(foca.iter_membership_state(), tokio::time::Instant::now());
                if !stale.is_empty() {
                    let _ = foca.apply_many(stale.into_iter(), true, &mut rt);
                }
                for id in host.join(&foca) {
                    let _ = foca.announce(id, &mut rt);
                }
            }
        }
        while let Some((to, packet)) = rt.to_send() {
            if host.drop_datagram() {
                continue;
            }
            host.sent(packet.len());
            let _ = sock.send_to(&packet, to.addr).await;
        }
        while let Some((after, timer)) = rt.to_schedule() {
            let tx = timer_tx.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer);
            });
        }
        notes.clear();
        while let Some(n) = rt.to_notify() {
            notes.push(n);
        }
        host.observe(&foca, &notes);
    }
}

// ------------------------------------------------------- scale runs ----

/// One membership-only run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub seed: u64,
    /// Simulated members.
    pub nodes: usize,
    /// Turmoil hosts the members are spread over (member `i` on host
    /// `i mod hosts`, port [`SWIM_PORT`] + `i / hosts`).
    pub hosts: usize,
    /// Members every other member joins through (`n0..`, at most N-1),
    /// like the mesh's configured seeds.
    pub seeds: usize,
    /// Members crashed after the steady window.
    pub crashes: usize,
    /// Outgoing datagram loss probability, whole run.
    pub loss: f64,
    /// Turmoil tick, simulated ms (timer and delivery resolution).
    pub tick_ms: u64,
    /// Steady window between full convergence and the crash, simulated s.
    pub steady_s: u64,
    /// Give up on full convergence after this long, simulated s.
    pub join_timeout_s: u64,
    /// Give up on detection after this long past the crash, simulated s.
    pub detect_timeout_s: u64,
    /// Experiment only: override the mesh's `MAX_TRANSMISSIONS` (times an
    /// update is piggybacked). `None` runs the production config.
    pub max_transmissions: Option<u8>,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 10,
            hosts: 32,
            seeds: 3,
            crashes: 1,
            loss: 0.0,
            tick_ms: 5,
            steady_s: 10,
            join_timeout_s: 120,
            detect_timeout_s: 60,
            max_transmissions: None,
        }
    }
}

impl ScaleConfig {
    /// Largest `--nodes` accepted.
    pub const MAX_NODES: usize = 10_000;

    /// Join seeds in use: `seeds`, at most every member but one.
    pub fn join_seeds(&self) -> usize {
        self.seeds.min(self.nodes.saturating_sub(1))
    }

    /// Why this configuration cannot run, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=Self::MAX_NODES).contains(&self.nodes) {
            return Err(format!(
                "--nodes must be between 2 and {} for --membership-only (got {})",
                Self::MAX_NODES,
                self.nodes
            ));
        }
        if self.seeds == 0 {
            return Err("--join-seeds must be at least 1".into());
        }
        if self.crashes > self.nodes - self.join_seeds() {
            return Err(format!(
                "--crashes must be at most the {} members that are not join seeds (got {})",
                self.nodes - self.join_seeds(),
                self.crashes
            ));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(format!("--swim-loss must be in [0, 1) (got {})", self.loss));
        }
        if !(1..=100).contains(&self.tick_ms) {
            return Err(format!(
                "--tick-ms must be between 1 and 100 (got {})",
                self.tick_ms
            ));
        }
        if self.max_transmissions == Some(0) {
            return Err("--max-transmissions must be at least 1".into());
        }
        if self.join_timeout_s == 0 || self.detect_timeout_s == 0 {
            return Err("--join-timeout and --detect-timeout must be at least 1".into());
        }
        if self.hosts == 0 {
            return Err("--hosts must be at least 1".into());
        }
        if self.nodes.div_ceil(self.hosts) > usize::from(u16::MAX - SWIM_PORT) {
            return Err(format!(
                "--hosts {} leaves too many members per host for the port range",
                self.hosts
            ));
        }
        Ok(())
    }
}

/// The outcome of one run: simulated times only (the same seed gives the
/// same report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleReport {
    pub seed: u64,
    pub nodes: usize,
    pub hosts: usize,
    pub tick_ms: u64,
    /// First time 50 %, 99 %, 99.99 % and 100 % of the N(N-1)
    /// (observer, member) pairs were known active, ms from the start.
    pub pairs_ms: [Option<u64>; 4],
    /// Share of pairs known when the join phase ended.
    pub pairs_known_at_join_end: f64,
    /// When the steady window began (full convergence, or the join timeout).
    pub join_end_ms: u64,
    /// Datagrams and bytes sent per member per simulated second in the
    /// steady window.
    pub steady_datagrams_per_node_s: f64,
    pub steady_bytes_per_node_s: f64,
    /// Crashed members and when (ms from the start).
    pub crashed: Vec<usize>,
    pub crash_ms: Option<u64>,
    /// Per crashed member: crash → first live member declares it down, ms.
    pub detect_first_ms: Vec<Option<u64>>,
    /// Per crashed member: crash → 50 %, 99 %, 99.99 % and 100 % of the
    /// live members that knew it declared it down, ms.
    pub detect_ms: Vec<Vec<Option<u64>>>,
    /// Per crashed member: share of those members that did, at the end.
    pub detect_share: Vec<f64>,
    /// "Down" notices about members that were alive (false positives).
    pub false_downs: u64,
    /// Simulated time the run took, ms.
    pub sim_ms: u64,
    /// Hash of every membership notification (time, observer, kind,
    /// member): the determinism check.
    pub events_hash: u64,
}

/// Quantiles of [`ScaleReport::pairs_ms`].
pub const PAIR_QUANTILES: [f64; 4] = [0.5, 0.99, 0.9999, 1.0];

/// What the driver and every member share (single-threaded).
struct Obs {
    n: usize,
    cfg: ScaleConfig,
    /// `known[o * n + m]`: observer `o` has member `m` active.
    known: Vec<bool>,
    known_pairs: usize,
    pairs_ms: [Option<u64>; 4],
    crashed: Vec<bool>,
    /// Per member: live observers expected to declare it down (they knew
    /// it at the crash), and when each did (ms from the start).
    expect: Vec<usize>,
    down_at: Vec<Vec<u64>>,
    false_downs: u64,
    datagrams: u64,
    bytes: u64,
    hash: u64,
}

impl Obs {
    fn mix(&mut self, x: u64) {
        self.hash = (self.hash ^ x).wrapping_mul(0x0100_0000_01b3);
    }

    fn note(&mut self, o: usize, up: bool, m: usize) {
        let t = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        self.mix(t << 32 | (o as u64) << 17 | u64::from(up) << 16 | m as u64);
        let n = self.n;
        let k = o * n + m;
        if up {
            if !self.known[k] {
                self.known[k] = true;
                self.known_pairs += 1;
                let total = (n * (n - 1)) as f64;
                for (q, at) in PAIR_QUANTILES.iter().zip(self.pairs_ms.iter_mut()) {
                    if at.is_none() && self.known_pairs as f64 >= (q * total).ceil() {
                        *at = Some(t);
                    }
                }
            }
            return;
        }
        if self.known[k] {
            self.known[k] = false;
            self.known_pairs -= 1;
        }
        if !self.crashed[m] {
            self.false_downs += 1;
        } else if !self.crashed[o] {
            self.down_at[m].push(t);
        }
    }
}

fn member_index(id: &NodeIdentity) -> Option<usize> {
    id.node_id.strip_prefix('n')?.parse().ok()
}

fn member_addr(i: usize, hosts: usize) -> (String, u16) {
    (format!("h{}", i % hosts), SWIM_PORT + (i / hosts) as u16)
}

/// A scale-run member: joins like the mesh (announce to the seeds while it
/// knows no member, retry delay doubling from `JOIN_RETRY_INITIAL` to
/// `JOIN_RETRY_MAX`), reports notifications to the shared observer.
struct ScaleMember {
    obs: Rc<RefCell<Obs>>,
    idx: usize,
    seeds: Vec<SocketAddr>,
    next_join: tokio::time::Instant,
    join_delay: Duration,
    loss: SimRng,
}

impl SwimHost for ScaleMember {
    fn join_interval(&self) -> Duration {
        SNAPSHOT_INTERVAL
    }

    fn join(&mut self, foca: &SimFoca) -> Vec<NodeIdentity> {
        let now = tokio::time::Instant::now();
        if foca.num_members() > 0 {
            self.join_delay = JOIN_RETRY_INITIAL;
            self.next_join = now;
            return Vec::new();
        }
        if now < self.next_join {
            return Vec::new();
        }
        self.next_join = now + self.join_delay;
        self.join_delay = (self.join_delay * 2).min(JOIN_RETRY_MAX);
        // The mesh announces to placeholder identities of its seeds.
        self.seeds
            .iter()
            .map(|a| identity(String::new(), String::new(), *a, 0))
            .collect()
    }

    fn crashed(&self) -> bool {
        self.obs.borrow().crashed[self.idx]
    }

    fn drop_datagram(&mut self) -> bool {
        let p = self.obs.borrow().cfg.loss;
        self.loss.chance(p)
    }

    fn sent(&mut self, bytes: usize) {
        let mut o = self.obs.borrow_mut();
        o.datagrams += 1;
        o.bytes += bytes as u64;
    }

    fn observe(&mut self, _foca: &SimFoca, notes: &[OwnedNotification<NodeIdentity>]) {
        if notes.is_empty() {
            return;
        }
        let mut o = self.obs.borrow_mut();
        for note in notes {
            let (up, id) = match note {
                OwnedNotification::MemberUp(id) => (true, id),
                OwnedNotification::MemberDown(id) => (false, id),
                _ => continue,
            };
            if let Some(m) = member_index(id).filter(|m| *m < o.n) {
                o.note(self.idx, up, m);
            }
        }
    }
}

async fn scale_host(obs: Rc<RefCell<Obs>>, h: usize) -> turmoil::Result {
    let (n, hosts, seeds, seed, max_tx) = {
        let o = obs.borrow();
        (
            o.n,
            o.cfg.hosts,
            o.cfg.join_seeds(),
            o.cfg.seed,
            o.cfg.max_transmissions,
        )
    };
    let mut config = swim_config();
    if let Some(tx) = max_tx.and_then(std::num::NonZeroU8::new) {
        config.max_transmissions = tx;
    }
    let addr = |i: usize| {
        let (host, port) = member_addr(i, hosts);
        SocketAddr::new(turmoil::lookup(host), port)
    };
    let members = (h..n).step_by(hosts).map(|i| {
        let me = addr(i);
        let member = ScaleMember {
            obs: obs.clone(),
            idx: i,
            seeds: (0..seeds).map(addr).filter(|a| *a != me).collect(),
            next_join: tokio::time::Instant::now(),
            join_delay: JOIN_RETRY_INITIAL,
            loss: SimRng::new(seed ^ 0x5ca1e ^ ((i as u64) << 16)),
        };
        let id = identity(format!("n{i}"), "r0".into(), me, 1);
        // Members start at seeded times within the first probe period, so
        // their probe and gossip timers are not in lockstep.
        let start = SimRng::new(seed ^ 0x57a7 ^ i as u64).range(0, PROBE_PERIOD.as_millis() as u64);
        let config = config.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(start)).await;
            run_swim(id, config, seed ^ ((i as u64) << 32), member).await
        }
    });
    for r in futures::future::join_all(members).await {
        r?;
    }
    Ok(())
}

/// Run one membership-only simulation (see the module docs).
pub fn run_scale(cfg: &ScaleConfig) -> Result<ScaleReport, String> {
    cfg.validate()?;
    let n = cfg.nodes;
    let hosts = cfg.hosts.min(n);
    let cfg = ScaleConfig {
        hosts,
        ..cfg.clone()
    };
    let obs = Rc::new(RefCell::new(Obs {
        n,
        cfg: cfg.clone(),
        known: vec![false; n * n],
        known_pairs: 0,
        pairs_ms: [None; 4],
        crashed: vec![false; n],
        expect: vec![0; n],
        down_at: vec![Vec::new(); n],
        false_downs: 0,
        datagrams: 0,
        bytes: 0,
        hash: 0xcbf2_9ce4_8422_2325,
    }));
    let tick = Duration::from_millis(cfg.tick_ms);
    let limit = cfg.join_timeout_s + cfg.steady_s + cfg.detect_timeout_s + 10;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(limit))
        .tick_duration(tick)
        // Any latency up to one tick is delivered on the next tick, like
        // the loopback traffic between members sharing a host.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(tick)
        .udp_capacity(4_096)
        .rng_seed(cfg.seed)
        .build();
    for h in 0..hosts {
        let obs = obs.clone();
        sim.host(format!("h{h}").as_str(), move || scale_host(obs.clone(), h));
    }
    let mut pick = SimRng::new(cfg.seed ^ 0xc4a5);
    let mut candidates: Vec<usize> = (cfg.join_seeds()..n).collect();
    let victims: Vec<usize> = (0..cfg.crashes)
        .map(|_| candidates.swap_remove(pick.range(0, candidates.len() as u64) as usize))
        .collect();
    let ms = |d: Duration| d.as_millis() as u64;
    let mut join_end: Option<(Duration, u64, u64)> = None;
    let mut crash_at: Option<Duration> = None;
    let mut pairs_known_at_join_end = 0.0;
    let mut steady = (0.0, 0.0);
    loop {
        sim.step().map_err(|e| e.to_string())?;
        let t = sim.elapsed();
        let mut o = obs.borrow_mut();
        match (join_end, crash_at) {
            (None, _) => {
                if o.pairs_ms[3].is_some() || t >= Duration::from_secs(cfg.join_timeout_s) {
                    pairs_known_at_join_end = o.known_pairs as f64 / (n * (n - 1)) as f64;
                    join_end = Some((t, o.datagrams, o.bytes));
                }
            }
            (Some((t0, d0, b0)), None) => {
                if t >= t0 + Duration::from_secs(cfg.steady_s) {
                    let secs = (t - t0).as_secs_f64().max(1e-3) * n as f64;
                    steady = (
                        (o.datagrams - d0) as f64 / secs,
                        (o.bytes - b0) as f64 / secs,
                    );
                    for v in &victims {
                        o.crashed[*v] = true;
                    }
                    for v in &victims {
                        o.expect[*v] = (0..n)
                            .filter(|x| !o.crashed[*x] && o.known[x * n + v])
                            .count();
                    }
                    crash_at = Some(t);
                }
            }
            (Some(_), Some(c)) => {
                let done = victims.iter().all(|v| o.down_at[*v].len() >= o.expect[*v]);
                if done || t >= c + Duration::from_secs(cfg.detect_timeout_s) {
                    break;
                }
            }
        }
    }
    let o = obs.borrow();
    let crash_ms = crash_at.map(ms);
    // Crash → the q-th share of the expected observers declared it down.
    let detect = |v: usize| -> Vec<Option<u64>> {
        let (at, want) = (&o.down_at[v], o.expect[v]);
        PAIR_QUANTILES
            .iter()
            .map(|q| {
                let k = ((q * want as f64).ceil() as usize).max(1);
                Some(at.get(k - 1)? - crash_ms?)
            })
            .collect()
    };
    Ok(ScaleReport {
        seed: cfg.seed,
        nodes: n,
        hosts,
        tick_ms: cfg.tick_ms,
        pairs_ms: o.pairs_ms,
        pairs_known_at_join_end,
        join_end_ms: join_end.map(|j| ms(j.0)).unwrap_or(0),
        steady_datagrams_per_node_s: steady.0,
        steady_bytes_per_node_s: steady.1,
        crashed: victims.clone(),
        crash_ms,
        detect_first_ms: victims
            .iter()
            .map(|v| Some(o.down_at[*v].first()? - crash_ms?))
            .collect(),
        detect_ms: victims.iter().map(|v| detect(*v)).collect(),
        detect_share: victims
            .iter()
            .map(|v| o.down_at[*v].len() as f64 / o.expect[*v].max(1) as f64)
            .collect(),
        false_downs: o.false_downs,
        sim_ms: ms(sim.elapsed()),
        events_hash: o.hash,
    })
}
