//! Cross-region replication of a node: the economy's Raft RPCs over the mesh,
//! the economy's cluster life (founding, voter placement across regions), and
//! CRDT sync of accounts, signing keys, profiles and leaderboards.
//!
//! CRDT sync is pull-based with pokes. Every replicated write is logged in the
//! store's change feed with a local version (`Storage::changes_since`; the
//! leaderboard engine keeps its own log, `delta_since`). Each node keeps one
//! cursor `(peer epoch, peer version)` per peer and stream; that cursor set
//! is the node's version vector. A local change pokes every peer (coalesced);
//! a poked peer pulls from its cursor at once, and every peer also pulls on
//! the anti-entropy period, so a node back from a partition or a crash
//! catches up from its cursors without moving unchanged data, and a new node
//! (cursor 0) bootstraps everything. A merged change is logged again locally,
//! so changes also travel through intermediate nodes.
//!
//! Merge rules (each is commutative, associative and idempotent):
//! - `prof/`: automerge document merge;
//! - `acct/`: last writer wins by `(last_login, bytes)`;
//! - `user/`, `mail/`, `dev/`: the smaller player id wins a clash;
//! - `rt/` (refresh tokens): `spent` is an OR; two different spending regions
//!   of one token are a reuse, and the login (family) is revoked everywhere;
//! - `rtf/` (logins): `revoked` is an OR;
//! - `keys/pub/`: add-only; a new key is trusted for verification at once.
//!
//! Not for: the Raft protocol (replication::economy) or the transport (mesh).

use crate::api::Shared;
use crate::auth::accounts::{Account, Family, RefreshRecord};
use crate::auth::tokens::PublicJwk;
use meridian_mesh::{MemberState, MeshClient};
use meridian_replication::economy::{BoxFuture, NodeId, RaftRpc, ShardNetwork};
use meridian_replication::{Batch, Storage, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Mesh service carrying the economy's Raft RPCs.
pub const RAFT_SERVICE: &str = "raft";
/// Mesh service answering "what changed after my cursor".
pub const PULL_SERVICE: &str = "sync.pull";
/// Mesh one-way service: "I have changes, pull now".
pub const POKE_SERVICE: &str = "sync.poke";
/// Mesh service answering "who are the voters of each shard, as you see it"
/// (a draining node waits until nobody counts it as a voter).
pub const VOTERS_SERVICE: &str = "econ.voters";
/// Key prefixes replicated through the store's change feed.
pub const REPLICATED_PREFIXES: &[&str] = &[
    "acct/",
    "user/",
    "mail/",
    "dev/",
    "rt/",
    "rtf/",
    "keys/pub/",
    "prof/",
    "gone/",
];
/// Longest node name accepted in a poke.
pub const POKE_BODY_MAX_BYTES: usize = 256;
/// How long one Raft RPC may take on the mesh (snapshots included).
pub const RAFT_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one pull may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new voter may take to catch up as a learner.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

const CURSOR_PREFIX: &str = "sync/cursor/";

/// Counters shown in `/metrics` and `/admin/replication`.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    pub pulls: AtomicU64,
    pub changes_applied: AtomicU64,
    pub changes_unchanged: AtomicU64,
    pub changes_refused: AtomicU64,
    pub replies_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pokes_sent: AtomicU64,
    pub voter_changes: AtomicU64,
    pub leader_moves: AtomicU64,
}

/// The replication side of a node (lives in `AppState`).
pub struct Replica {
    pub net: Arc<MeshRaftNet>,
    pub stats: ReplicaStats,
    /// A drain moved every voter seat of this node away (or it had none to
    /// move).
    pub seats_moved: std::sync::atomic::AtomicBool,
    pullers: Mutex<HashMap<String, mpsc::Sender<()>>>,
}

impl Default for Replica {
    fn default() -> Self {
        Self {
            net: Arc::new(MeshRaftNet::default()),
            stats: ReplicaStats::default(),
            seats_moved: Default::default(),
            pullers: Mutex::new(HashMap::new()),
        }
    }
}

/// The economy's [`ShardNetwork`] over the mesh: Raft node ids are
/// `node_id_from_name(node name)`, resolved through the member list.
#[derive(Default)]
pub struct MeshRaftNet {
    client: OnceLock<MeshClient>,
    names: RwLock<HashMap<NodeId, String>>,
}

impl MeshRaftNet {
    pub fn attach(&self, client: MeshClient) {
        let _ = self.client.set(client);
    }

    fn name_of(&self, id: NodeId) -> Option<String> {
        if let Some(n) = self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Some(n.clone());
        }
        let client = self.client.get()?;
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        for m in client.members() {
            names.insert(raft_id(&m.node_id), m.node_id);
        }
        names.get(&id).cloned()
    }
}

/// The Raft node id of a node name.
pub fn raft_id(name: &str) -> NodeId {
    meridian_replication::crdt::node_id_from_name(name)
}

impl ShardNetwork for MeshRaftNet {
    fn send(&self, target: NodeId, rpc: RaftRpc) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let client = self.client.get().cloned();
        let name = self.name_of(target);
        Box::pin(async move {
            let client = client.ok_or("the mesh is not running")?;
            let name = name.ok_or_else(|| format!("raft node {target} is not a mesh member"))?;
            let body = postcard::to_allocvec(&rpc).map_err(|e| e.to_string())?;
            client
                .rpc_timeout(&name, RAFT_SERVICE, &body, RAFT_RPC_TIMEOUT)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stream {
    Kv,
    Leaderboards,
}

#[derive(Debug, Serialize, Deserialize)]
struct PullRequest {
    stream: Stream,
    since: u64,
    keys_max: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PullReply {
    /// The serving store's epoch; a cursor from another epoch restarts at 0.
    epoch: u64,
    /// The cursor to ask from next time.
    version: u64,
    /// More changes are waiting.
    more: bool,
    /// `Kv`: changed keys and their values (`None` = deleted there; not
    /// replicated).
    kv: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// `Leaderboards`: an encoded `leaderboard::Delta`.
    leaderboards: Vec<u8>,
}

/// Register the mesh services; handlers hold the state weakly.
pub fn register(state: &Shared, mesh: &meridian_mesh::MeshHandle) {
    let weak = Arc::downgrade(state);
    let w = weak.clone();
    mesh.register_rpc_handler(
        RAFT_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let rpc: RaftRpc = postcard::from_bytes(&body)
                    .map_err(|e| refuse(&state, format!("malformed raft rpc: {e}")))?;
                state
                    .economy
                    .handle_raft_rpc(rpc)
                    .await
                    .map(bytes::Bytes::from)
            }
        }),
    );
    let w = weak.clone();
    mesh.register_rpc_handler(
        PULL_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let req: PullRequest = postcard::from_bytes(&body)
                    .map_err(|e| refuse(&state, format!("malformed pull: {e}")))?;
                let reply = serve_pull(&state, &req)?;
                let out = postcard::to_allocvec(&reply).map_err(|e| e.to_string())?;
                state
                    .replica
                    .stats
                    .bytes_out
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                Ok(bytes::Bytes::from(out))
            }
        }),
    );
    let w = weak.clone();
    mesh.register_rpc_handler(
        VOTERS_SERVICE,
        Arc::new(move |_from, _body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                let view: Vec<Vec<String>> = state
                    .economy
                    .shards()
                    .into_iter()
                    .map(|s| s.voter_names)
                    .collect();
                postcard::to_allocvec(&view)
                    .map(bytes::Bytes::from)
                    .map_err(|e| e.to_string())
            }
        }),
    );
    let w = weak;
    mesh.register_rpc_handler(
        POKE_SERVICE,
        Arc::new(move |_from, body: bytes::Bytes| {
            let w = w.clone();
            async move {
                let state = w.upgrade().ok_or("node stopping")?;
                if body.len() > POKE_BODY_MAX_BYTES {
                    return Err(refuse(&state, "poke too large".into()));
                }
                let peer = String::from_utf8_lossy(&body).into_owned();
                let tx = state
                    .replica
                    .pullers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&peer)
                    .cloned();
                if let Some(tx) = tx {
                    let _ = tx.try_send(());
                }
                Ok(bytes::Bytes::new())
            }
        }),
    );
}

/// A request from a peer that breaks the protocol: counted, and answered with
/// the mesh's protocol-violation marker (the mesh then closes the connection).
fn refuse(state: &Shared, what: String) -> String {
    state
        .replica
        .stats
        .replies_refused
        .fetch_add(1, Ordering::Relaxed);
    format!("{}{what}", meridian_mesh::PROTOCOL_VIOLATION)
}

fn serve_pull(state: &Shared, req: &PullRequest) -> Result<PullReply, String> {
    let rcfg = &state.cfg.replication;
    let keys_max = (req.keys_max as usize).clamp(1, rcfg.batch_keys_max.max(1));
    let mut reply = PullReply {
        epoch: state.storage.feed_epoch(),
        version: req.since,
        ..Default::default()
    };
    match req.stream {
        Stream::Kv => {
            let changes = state
                .storage
                .changes_since(req.since, keys_max, rcfg.batch_bytes_max)
                .map_err(|e| e.to_string())?;
            if let Some(last) = changes.last() {
                reply.version = last.version;
            }
            reply.more = reply.version < state.storage.feed_version();
            reply.kv = changes.into_iter().map(|c| (c.key, c.value)).collect();
        }
        Stream::Leaderboards => {
            let delta = state
                .leaderboards
                .delta_since(req.since, keys_max)
                .map_err(|e| e.to_string())?;
            reply.version = delta.version;
            reply.more = delta.version < state.leaderboards.version();
            reply.leaderboards = delta.to_bytes();
        }
    }
    Ok(reply)
}

/// `/admin/replication`: counters, this node's feed and leaderboard
/// versions, and its cursor (version vector entry) for each peer.
pub fn view(state: &Shared) -> Result<serde_json::Value, StoreError> {
    let st = &state.replica.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut cursors = BTreeMap::new();
    for (k, v) in state
        .storage
        .scan_prefix(CURSOR_PREFIX.as_bytes(), crate::replica::CURSORS_LISTED_MAX)?
    {
        let name = String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]).into_owned();
        let (epoch, version): (u64, u64) = postcard::from_bytes(&v).unwrap_or((0, 0));
        cursors.insert(
            name,
            serde_json::json!({"epoch": epoch, "version": version}),
        );
    }
    let heartbeat = state.cfg.economy.heartbeat_interval_ms;
    Ok(serde_json::json!({
        "raft_heartbeat_interval_ms": heartbeat,
        "peers_slower_than_heartbeat": peers_slower_than_heartbeat(state),
        "feed_epoch": state.storage.feed_epoch(),
        "feed_version": state.storage.feed_version(),
        "leaderboard_version": state.leaderboards.version(),
        "cursors": cursors,
        "pulls": get(&st.pulls),
        "changes_applied": get(&st.changes_applied),
        "changes_unchanged": get(&st.changes_unchanged),
        "changes_refused": get(&st.changes_refused),
        "replies_refused": get(&st.replies_refused),
        "bytes_in": get(&st.bytes_in),
        "bytes_out": get(&st.bytes_out),
        "pokes_sent": get(&st.pokes_sent),
        "voter_changes": get(&st.voter_changes),
        "leader_moves": get(&st.leader_moves),
    }))
}

/// Peers whose smoothed mesh RTT is above 80 % of the Raft heartbeat
/// interval (which is also openraft's AppendEntries timeout): Raft traffic to
/// them times out. Raise `economy.heartbeat_interval_ms` above the largest RTT.
pub fn peers_slower_than_heartbeat(state: &Shared) -> Vec<String> {
    let limit = state.cfg.economy.heartbeat_interval_ms as f64 * 0.8;
    state
        .with_mesh(|mesh| {
            mesh.members()
                .into_iter()
                .filter(|m| !m.is_self && m.rtt_ms.is_some_and(|r| r > limit))
                .map(|m| m.node_id)
                .collect()
        })
        .unwrap_or_default()
}

/// Most cursors `/admin/replication` lists.
pub const CURSORS_LISTED_MAX: usize = 4_096;

fn cursor_key(peer: &str, stream: Stream) -> Vec<u8> {
    format!("{CURSOR_PREFIX}{peer}/{stream:?}").into_bytes()
}

fn read_cursor(storage: &Storage, peer: &str, stream: Stream) -> (u64, u64) {
    storage
        .get(&cursor_key(peer, stream))
        .ok()
        .flatten()
        .and_then(|v| postcard::from_bytes(&v).ok())
        .unwrap_or((0, 0))
}

/// Start the replication tasks: pokes, per-peer pulls and the economy's
/// cluster manager. They stop when the state is dropped.
pub fn spawn(state: &Shared, client: MeshClient) {
    state.replica.net.attach(client.clone());
    tokio::spawn(poke_loop(Arc::downgrade(state), client.clone()));
    tokio::spawn(puller_supervisor(Arc::downgrade(state), client.clone()));
    tokio::spawn(economy_manager(Arc::downgrade(state), client));
}

/// Tell every peer about local changes, at most once per coalescing window.
async fn poke_loop(weak: Weak<crate::api::AppState>, client: MeshClient) {
    let Some(state) = weak.upgrade() else { return };
    let mut feed = state.storage.feed_subscribe();
    let window = Duration::from_millis(state.cfg.replication.poke_coalesce_ms.max(1));
    let me = state.cfg.node_name();
    let mut lb_seen = state.leaderboards.version();
    drop(state);
    loop {
        // Wake on a feed change, or look at the leaderboard log each window.
        let _ = tokio::time::timeout(window.max(Duration::from_millis(50)), feed.changed()).await;
        tokio::time::sleep(window).await;
        let Some(state) = weak.upgrade() else { return };
        let lb_now = state.leaderboards.version();
        let kv_changed = feed.has_changed().unwrap_or(false) || {
            let v = *feed.borrow_and_update();
            v != 0 && v == state.storage.feed_version()
        };
        if !kv_changed && lb_now == lb_seen {
            continue;
        }
        lb_seen = lb_now;
        feed.borrow_and_update();
        let n = client.broadcast(POKE_SERVICE, me.as_bytes()).await;
        state
            .replica
            .stats
            .pokes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One puller task per live peer.
async fn puller_supervisor(weak: Weak<crate::api::AppState>, client: MeshClient) {
    loop {
        {
            let Some(state) = weak.upgrade() else { return };
            let peers = client.peers();
            let mut pullers = state
                .replica
                .pullers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pullers.retain(|name, tx| !tx.is_closed() && peers.iter().any(|(n, _)| n == name));
            for (name, _) in peers {
                if !pullers.contains_key(&name) {
                    let (tx, rx) = mpsc::channel(1);
                    pullers.insert(name.clone(), tx);
                    tokio::spawn(pull_loop(weak.clone(), client.clone(), name, rx));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pull_loop(
    weak: Weak<crate::api::AppState>,
    client: MeshClient,
    peer: String,
    mut poked: mpsc::Receiver<()>,
) {
    let period = match weak.upgrade() {
        Some(s) => Duration::from_millis(s.cfg.replication.anti_entropy_interval_ms.max(10)),
        None => return,
    };
    loop {
        for stream in [Stream::Kv, Stream::Leaderboards] {
            // Drain: keep pulling while the peer says there is more.
            for _ in 0..1_000 {
                let Some(state) = weak.upgrade() else { return };
                match pull_once(&state, &client, &peer, stream).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(peer = %peer, ?stream, error = %e, "replication pull");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            p = poked.recv() => if p.is_none() { return },
            _ = tokio::time::sleep(period) => {}
        }
        if !client.peers().iter().any(|(n, _)| *n == peer) {
            return;
        }
    }
}

/// Pull one batch of `stream` from `peer` and merge it. Returns whether the
/// peer has more.
async fn pull_once(
    state: &Shared,
    client: &MeshClient,
    peer: &str,
    stream: Stream,
) -> Result<bool, String> {
    let (epoch, since) = read_cursor(&state.storage, peer, stream);
    let req = PullRequest {
        stream,
        since,
        keys_max: state.cfg.replication.batch_keys_max as u32,
    };
    let body = postcard::to_allocvec(&req).map_err(|e| e.to_string())?;
    let raw = client
        .rpc_timeout(peer, PULL_SERVICE, &body, PULL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let stats = &state.replica.stats;
    stats.pulls.fetch_add(1, Ordering::Relaxed);
    stats
        .bytes_in
        .fetch_add(raw.len() as u64, Ordering::Relaxed);
    let reply: PullReply = postcard::from_bytes(&raw).map_err(|e| {
        stats.replies_refused.fetch_add(1, Ordering::Relaxed);
        client.disconnect(peer);
        format!("malformed pull reply: {e}")
    })?;
    if reply.kv.len() > state.cfg.replication.batch_keys_max {
        stats.replies_refused.fetch_add(1, Ordering::Relaxed);
        client.disconnect(peer);
        return Err(format!("pull reply with {} keys", reply.kv.len()));
    }
    let store_cursor = |epoch: u64, version: u64| {
        let mut b = Batch::new();
        b.put(
            cursor_key(peer, stream),
            postcard::to_allocvec(&(epoch, version)).unwrap_or_default(),
        );
        b
    };
    if epoch != 0 && reply.epoch != epoch {
        // The peer's store was replaced: start over from its beginning.
        tracing::info!(peer, ?stream, "peer store epoch changed; re-pulling from 0");
        state
            .storage
            .commit(&store_cursor(reply.epoch, 0))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(true);
    }
    match stream {
        Stream::Kv => {
            for (key, value) in &reply.kv {
                let Some(value) = value else { continue };
                match apply_kv(state, key, value).await {
                    Ok(true) => stats.changes_applied.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => stats.changes_unchanged.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(peer, key = %String::from_utf8_lossy(key), error = %e, "replicated change refused");
                        stats.changes_refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
        Stream::Leaderboards => {
            let delta = meridian_replication::leaderboard::Delta::from_bytes(&reply.leaderboards)
                .map_err(|e| {
                stats.replies_refused.fetch_add(1, Ordering::Relaxed);
                client.disconnect(peer);
                format!("malformed leaderboard delta: {e}")
            })?;
            let r = state
                .leaderboards
                .merge_remote(&delta, chrono::Utc::now())
                .await
                .map_err(|e| {
                    stats.replies_refused.fetch_add(1, Ordering::Relaxed);
                    e.to_string()
                })?;
            stats
                .changes_applied
                .fetch_add(r.applied as u64, Ordering::Relaxed);
            stats
                .changes_unchanged
                .fetch_add(r.unchanged as u64, Ordering::Relaxed);
            stats
                .changes_refused
                .fetch_add(r.skipped as u64, Ordering::Relaxed);
        }
    }
    if reply.version != since || epoch == 0 {
        state
            .storage
            .commit(&store_cursor(reply.epoch, reply.version))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(reply.more && reply.version > since)
}

/// Merge one replicated key; returns whether local state changed.
async fn apply_kv(state: &Shared, key: &[u8], remote: &[u8]) -> Result<bool, String> {
    let k = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    if !REPLICATED_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return Err("key outside the replicated prefixes".into());
    }
    if let Some(player) = k.strip_prefix(crate::erasure::TOMBSTONE_PREFIX) {
        let t: crate::erasure::Tombstone =
            serde_json::from_slice(remote).map_err(|e| e.to_string())?;
        if t.player_id != player {
            return Err("tombstone does not match its key".into());
        }
        let changed = cas_merge(&state.storage, key, |local| {
            Ok(local.is_none().then(|| remote.to_vec()))
        })
        .await?;
        crate::erasure::erase_local(state, player)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(changed);
    }
    // A stale copy of an erased player's data is never merged back.
    if let Some(owner) = crate::erasure::owner_of(k, remote) {
        if crate::erasure::is_erased(state, &owner) {
            return Ok(false);
        }
    }
    if let Some(player) = k.strip_prefix("prof/") {
        return state
            .profiles
            .merge_remote(player, remote)
            .await
            .map_err(|e| e.to_string());
    }
    if k.starts_with("keys/pub/") {
        let jwk: PublicJwk = serde_json::from_slice(remote).map_err(|e| e.to_string())?;
        if format!("keys/pub/{}", jwk.kid) != k {
            return Err("kid does not match the key".into());
        }
        let changed = cas_merge(&state.storage, key, |local| {
            Ok(local.is_none().then(|| remote.to_vec()))
        })
        .await?;
        state
            .accounts
            .keys()
            .add_public(jwk)
            .map_err(|e| e.to_string())?;
        return Ok(changed);
    }
    if k.starts_with("rt/") {
        // Two regions spent one refresh token: a reuse; revoke the login.
        let theirs: RefreshRecord = serde_json::from_slice(remote).map_err(|e| e.to_string())?;
        let mine: Option<RefreshRecord> = state
            .storage
            .get(key)
            .map_err(|e| e.to_string())?
            .and_then(|v| serde_json::from_slice(&v).ok());
        if mine.is_some_and(|m| cross_region_reuse(&m, &theirs)) {
            tracing::warn!(player_id = %theirs.player_id, family = %theirs.family, "refresh token spent in two regions: revoking login");
            let fam = format!("rtf/{}", theirs.family);
            cas_merge(&state.storage, fam.as_bytes(), |local| {
                let Some(local) = local else { return Ok(None) };
                let mut f: Family = serde_json::from_slice(local).map_err(|e| e.to_string())?;
                if f.revoked {
                    return Ok(None);
                }
                f.revoked = true;
                serde_json::to_vec(&f).map(Some).map_err(|e| e.to_string())
            })
            .await?;
        }
    }
    let merged = merge_value(k, remote)?;
    cas_merge(&state.storage, key, merged).await
}

type Merge = Box<dyn Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, String> + Send + Sync>;

/// The merge function of one non-document key: given the local value, the
/// value to write (`None` = keep local).
fn merge_value(k: &str, remote: &[u8]) -> Result<Merge, String> {
    let remote = remote.to_vec();
    if k.starts_with("acct/") {
        let theirs: Account = serde_json::from_slice(&remote).map_err(|e| e.to_string())?;
        if format!("acct/{}", theirs.player_id) != k {
            return Err("player id does not match the key".into());
        }
        return Ok(Box::new(move |local| {
            let Some(local) = local else {
                return Ok(Some(remote.clone()));
            };
            let mine: Account = serde_json::from_slice(local).map_err(|e| e.to_string())?;
            let newer =
                (theirs.last_login.as_str(), remote.as_slice()) > (mine.last_login.as_str(), local);
            Ok(newer.then(|| remote.clone()))
        }));
    }
    if k.starts_with("user/") || k.starts_with("mail/") || k.starts_with("dev/") {
        uuid::Uuid::parse_str(std::str::from_utf8(&remote).map_err(|e| e.to_string())?)
            .map_err(|_| "index value is not a player id".to_string())?;
        return Ok(Box::new(move |local| match local {
            None => Ok(Some(remote.clone())),
            Some(l) if remote.as_slice() < l => {
                tracing::warn!(key = %String::from_utf8_lossy(&remote), "name claimed in two regions; the smaller player id wins");
                Ok(Some(remote.clone()))
            }
            Some(_) => Ok(None),
        }));
    }
    if k.starts_with("rtf/") {
        let theirs: Family = serde_json::from_slice(&remote).map_err(|e| e.to_string())?;
        return Ok(Box::new(move |local| {
            let Some(local) = local else {
                return Ok(Some(remote.clone()));
            };
            let mut mine: Family = serde_json::from_slice(local).map_err(|e| e.to_string())?;
            if theirs.revoked && !mine.revoked {
                mine.revoked = true;
                return serde_json::to_vec(&mine)
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
            Ok(None)
        }));
    }
    if k.starts_with("rt/") {
        let theirs: RefreshRecord = serde_json::from_slice(&remote).map_err(|e| e.to_string())?;
        return Ok(Box::new(move |local| {
            let Some(local) = local else {
                return Ok(Some(remote.clone()));
            };
            let mine: RefreshRecord = serde_json::from_slice(local).map_err(|e| e.to_string())?;
            let mut merged = mine.clone();
            merged.spent = mine.spent || theirs.spent;
            merged.spent_in = match (&mine.spent_in, &theirs.spent_in) {
                (Some(a), Some(b)) => Some(a.min(b).clone()),
                (a, b) => a.clone().or_else(|| b.clone()),
            };
            if merged == mine {
                return Ok(None);
            }
            serde_json::to_vec(&merged)
                .map(Some)
                .map_err(|e| e.to_string())
        }));
    }
    Err("no merge rule for this key".into())
}

/// Read-merge-write with a compare-and-set, retried on a concurrent write.
async fn cas_merge(
    storage: &Storage,
    key: &[u8],
    merge: impl Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, String>,
) -> Result<bool, String> {
    for _ in 0..8 {
        let local = storage.get(key).map_err(|e| e.to_string())?;
        let Some(new) = merge(local.as_deref())? else {
            return Ok(false);
        };
        let mut b = Batch::new();
        b.require_value(key.to_vec(), local).put(key.to_vec(), new);
        match storage.commit(&b).await {
            Ok(()) => return Ok(true),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("key kept changing during the merge".into())
}

/// Whether two replicas of one refresh token were spent in different
/// regions (a reuse across regions); checked after merges.
pub fn cross_region_reuse(a: &RefreshRecord, b: &RefreshRecord) -> bool {
    matches!((&a.spent_in, &b.spent_in), (Some(x), Some(y)) if x != y)
}

// ----------------------------------------------------------- economy ----

/// The name directory on the economy's Raft shards.
pub struct RaftDirectory(pub meridian_replication::economy::Economy);

impl crate::auth::accounts::NameDirectory for RaftDirectory {
    fn claim(
        &self,
        name: String,
        owner: String,
    ) -> crate::auth::accounts::BoxFuture<Result<bool, crate::auth::accounts::AuthError>> {
        let eco = self.0.clone();
        Box::pin(async move {
            use meridian_replication::economy::EconomyError;
            match eco.claim_name(&name, &owner).await {
                Ok(()) => Ok(true),
                Err(EconomyError::NameTaken { .. }) => Ok(false),
                Err(e) if e.is_retryable() => {
                    Err(crate::auth::accounts::AuthError::Unavailable(e.to_string()))
                }
                Err(e) => Err(crate::auth::accounts::AuthError::Internal(e.to_string())),
            }
        })
    }

    fn release(&self, name: String, owner: String) -> crate::auth::accounts::BoxFuture<()> {
        let eco = self.0.clone();
        Box::pin(async move {
            if let Err(e) = eco.release_name(&name, &owner).await {
                tracing::warn!(name, error = %e, "releasing a directory name");
            }
        })
    }
}

/// Rendezvous placement: the `k` voters of `shard` among `candidates`
/// (`(name, region)`), one per region first, then more per region only when
/// there are fewer regions than `k`. Adding a node moves only the shards
/// that now rank it in their top `k`.
pub fn place_voters(shard: u16, candidates: &[(String, String)], k: usize) -> Vec<String> {
    let mut ranked: Vec<(u64, &String, &String)> = candidates
        .iter()
        .map(|(n, r)| {
            let d = Sha256::new()
                .chain_update(shard.to_be_bytes())
                .chain_update(n.as_bytes())
                .finalize();
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            (u64::from_be_bytes(b), n, r)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    let mut out: Vec<String> = Vec::new();
    let mut regions = std::collections::BTreeSet::new();
    for (_, n, r) in &ranked {
        if out.len() < k && regions.insert((*r).clone()) {
            out.push((*n).clone());
        }
    }
    for (_, n, _) in &ranked {
        if out.len() < k && !out.contains(n) {
            out.push((*n).clone());
        }
    }
    out.sort();
    out
}

/// Founds the economy cluster (once), then keeps every led shard's voters
/// placed across regions.
async fn economy_manager(weak: Weak<crate::api::AppState>, client: MeshClient) {
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    let mut advertised = 0u64;
    let mut last_balance = Instant::now();
    let mut slow_peers: Vec<String> = Vec::new();
    loop {
        let Some(state) = weak.upgrade() else { return };
        let slow = peers_slower_than_heartbeat(&state);
        if slow != slow_peers {
            if !slow.is_empty() {
                tracing::warn!(peers = ?slow, heartbeat_interval_ms = state.cfg.economy.heartbeat_interval_ms, "Raft traffic to these peers times out: their RTT is near or above economy.heartbeat_interval_ms; raise it above the largest RTT between regions");
            }
            slow_peers = slow;
        }
        let period = Duration::from_millis(state.cfg.economy.placement_interval_ms.max(50));
        let me = state.cfg.node_name();
        let members = client.members();
        let now = Instant::now();
        for m in &members {
            if m.state == MemberState::Down {
                down_since.entry(m.node_id.clone()).or_insert(now);
            } else {
                down_since.remove(&m.node_id);
            }
        }
        let initialized = state.economy.is_initialized().await;
        let mut cluster = read_cluster_id(&state.storage);
        if !initialized {
            found_if_due(&state, &members, &me).await;
        } else if cluster == 0 {
            cluster = adopt_cluster_id(&state, &members).await;
        }
        if cluster != 0
            && advertised != cluster
            && client
                .update_metadata(|m| m.economy_cluster = cluster)
                .await
                .is_ok()
        {
            advertised = cluster;
        }
        if initialized && cluster != 0 {
            place_led_shards(&state, &members, &me, &down_since, cluster).await;
            let ecfg = &state.cfg.economy;
            if last_balance.elapsed() >= Duration::from_secs(ecfg.leader_balance_interval_s.max(1))
            {
                last_balance = Instant::now();
                if ecfg.leader_follows_writes && !state.is_draining() {
                    let moves = state.economy.leadership_moves(
                        ecfg.leader_balance_min_writes,
                        ecfg.leader_balance_share,
                    );
                    for (shard, to) in moves {
                        match state
                            .economy
                            .hand_over(shard, to, Duration::from_secs(5))
                            .await
                        {
                            Ok(()) => {
                                state
                                    .replica
                                    .stats
                                    .leader_moves
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::info!(
                                    shard,
                                    to,
                                    "economy leadership moved to where the writes come in"
                                );
                            }
                            Err(e) => {
                                tracing::info!(shard, to, error = %e, "economy leadership hand-over")
                            }
                        }
                    }
                }
            }
        }
        drop(state);
        tokio::time::sleep(period).await;
    }
}

async fn found_if_due(state: &Shared, members: &[meridian_mesh::MemberView], me: &str) {
    let expect = state.cfg.economy.bootstrap_expect.max(1);
    let alive: Vec<&meridian_mesh::MemberView> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .collect();
    if alive.iter().any(|m| {
        !m.is_self
            && m.metadata
                .as_ref()
                .is_some_and(|md| md.economy_cluster != 0)
    }) {
        // A cluster exists: wait for a shard leader to add this node.
        return;
    }
    if alive.len() < expect {
        return;
    }
    let mut names: Vec<&str> = alive.iter().map(|m| m.node_id.as_str()).collect();
    names.sort();
    names.dedup();
    let founders: BTreeMap<NodeId, String> = names
        .iter()
        .take(expect)
        .map(|n| (raft_id(n), n.to_string()))
        .collect();
    if !founders.values().any(|n| n == me) {
        return;
    }
    let id = cluster_id_of(founders.values());
    if let Err(e) = write_cluster_id(&state.storage, id).await {
        tracing::error!(error = %e, "storing the economy cluster id");
        return;
    }
    let n = state.economy.initialize(&founders).await;
    tracing::info!(
        shards = n,
        founders = ?founders.values().collect::<Vec<_>>(),
        "economy cluster founded"
    );
}

const CLUSTER_ID_KEY: &[u8] = b"econ/cluster-id";

fn cluster_id_of<'a>(names: impl Iterator<Item = &'a String>) -> u64 {
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

fn read_cluster_id(storage: &Storage) -> u64 {
    storage
        .get(CLUSTER_ID_KEY)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

async fn write_cluster_id(storage: &Storage, id: u64) -> Result<(), StoreError> {
    let mut b = Batch::new();
    b.put(CLUSTER_ID_KEY, id.to_be_bytes().to_vec());
    storage.commit(&b).await
}

/// A node that was added to an existing cluster takes the cluster id its
/// fellow voters advertise.
async fn adopt_cluster_id(state: &Shared, members: &[meridian_mesh::MemberView]) -> u64 {
    let voters: std::collections::BTreeSet<String> = state
        .economy
        .shards()
        .into_iter()
        .flat_map(|s| s.voter_names)
        .collect();
    let id = members
        .iter()
        .filter(|m| !m.is_self && voters.contains(&m.node_id))
        .filter_map(|m| m.metadata.as_ref().map(|md| md.economy_cluster))
        .find(|id| *id != 0)
        .or_else(|| {
            // Founded alone at start (`bootstrap_expect = 1`).
            let me = state.cfg.node_name();
            (voters.len() == 1 && voters.contains(&me)).then(|| cluster_id_of([me].iter()))
        });
    match id {
        Some(id) => match write_cluster_id(&state.storage, id).await {
            Ok(()) => id,
            Err(_) => 0,
        },
        None => 0,
    }
}

async fn place_led_shards(
    state: &Shared,
    members: &[meridian_mesh::MemberView],
    me: &str,
    down_since: &HashMap<String, Instant>,
    cluster: u64,
) {
    let cfg = &state.cfg.economy;
    let down_timeout = Duration::from_secs(cfg.voter_down_timeout_s);
    let healthy: Vec<(String, String)> = members
        .iter()
        .filter(|m| m.state != MemberState::Down)
        .filter(|m| !m.metadata.as_ref().is_some_and(|md| md.draining))
        // Only pristine nodes and nodes of this cluster may become voters.
        .filter(|m| {
            m.is_self
                || m.metadata
                    .as_ref()
                    .is_some_and(|md| md.economy_cluster == 0 || md.economy_cluster == cluster)
        })
        .filter(|m| !(m.is_self && state.is_draining()))
        .map(|m| (m.node_id.clone(), m.region.clone()))
        .collect();
    let region_of: HashMap<&str, &str> = members
        .iter()
        .map(|m| (m.node_id.as_str(), m.region.as_str()))
        .collect();
    for (shard, voters) in state.economy.led_shards() {
        // Voters that are down but not yet gone keep their seat.
        let mut candidates = healthy.clone();
        for name in voters.values() {
            let draining = members
                .iter()
                .any(|m| &m.node_id == name && m.metadata.as_ref().is_some_and(|md| md.draining))
                || (name == me && state.is_draining());
            let gone = draining
                || down_since
                    .get(name)
                    .is_some_and(|t| t.elapsed() >= down_timeout)
                || !region_of.contains_key(name.as_str());
            if !gone && !candidates.iter().any(|(n, _)| n == name) {
                let region = region_of.get(name.as_str()).copied().unwrap_or("?");
                candidates.push((name.clone(), region.to_string()));
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let desired = place_voters(shard, &candidates, cfg.voters_per_shard.max(1));
        let mut current: Vec<&String> = voters.values().collect();
        current.sort();
        if current
            .iter()
            .map(|s| s.as_str())
            .eq(desired.iter().map(|s| s.as_str()))
        {
            continue;
        }
        let wanted: BTreeMap<NodeId, String> =
            desired.iter().map(|n| (raft_id(n), n.clone())).collect();
        match state
            .economy
            .change_voters(shard, &wanted, CATCH_UP_TIMEOUT)
            .await
        {
            Ok(()) => {
                state
                    .replica
                    .stats
                    .voter_changes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(shard, voters = ?desired, "economy shard voters moved");
            }
            Err(e) => tracing::warn!(shard, error = %e, "economy voter change"),
        }
    }
}

/// Drain the economy's part of this node before it leaves: advertise
/// `draining` (shard leaders, this one included, move its voter seats to
/// other nodes) and wait until no live peer counts it as a voter, at most
/// `within`. Returns whether the seats all moved.
pub async fn hand_off_voters(state: &Shared, within: Duration) -> bool {
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let done = |ok: bool| {
        state.replica.seats_moved.store(ok, Ordering::Release);
        ok
    };
    let Some(client) = state.with_mesh(|m| m.client()) else {
        return done(true);
    };
    let _ = client.update_metadata(|m| m.draining = true).await;
    let me = state.cfg.node_name();
    let deadline = Instant::now() + within;
    loop {
        // A node that shares no shard with another voter has nothing to move.
        let shared = state
            .economy
            .shards()
            .iter()
            .any(|sh| sh.voter_names.contains(&me) && sh.voter_names.len() > 1);
        if !shared && state.economy.led_shards().iter().all(|(_, v)| v.len() <= 1) {
            return done(true);
        }
        let mut held = false;
        // This node's own view counts while it leads (its manager moves it).
        if !state.economy.led_shards().is_empty() {
            held = true;
        }
        for m in client.members() {
            if m.is_self || m.state != MemberState::Alive {
                continue;
            }
            match client
                .rpc_timeout(&m.node_id, VOTERS_SERVICE, &[], Duration::from_secs(2))
                .await
                .ok()
                .and_then(|b| postcard::from_bytes::<Vec<Vec<String>>>(&b).ok())
            {
                Some(view) => held |= view.iter().any(|v| v.contains(&me)),
                None => held = true,
            }
        }
        if !held {
            tracing::info!("economy voter seats handed off");
            return done(true);
        }
        if Instant::now() >= deadline {
            tracing::warn!("economy voter seats not all handed off in time");
            return done(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn placement_spreads_regions_and_moves_few_shards() {
        let three = c(&[("a", "r1"), ("b", "r2"), ("c", "r3")]);
        for s in 0..16 {
            assert_eq!(place_voters(s, &three, 3), vec!["a", "b", "c"]);
        }
        // Two nodes in one region: one per region first.
        let same = c(&[("a", "r1"), ("a2", "r1"), ("b", "r2")]);
        for s in 0..16 {
            let p = place_voters(s, &same, 2);
            assert!(p.contains(&"b".to_string()), "{p:?}");
        }
        // A fourth region takes a share; every shard still has 3 voters.
        let four = c(&[("a", "r1"), ("b", "r2"), ("c", "r3"), ("d", "r4")]);
        let moved = (0..64)
            .filter(|s| place_voters(*s, &four, 3).contains(&"d".to_string()))
            .count();
        assert!((24..=60).contains(&moved), "{moved} of 64 shards took d");
        assert!((0..64).all(|s| place_voters(s, &four, 3).len() == 3));
        // Fewer nodes than k: all of them.
        assert_eq!(place_voters(3, &c(&[("a", "r1")]), 3), vec!["a"]);
    }

    #[test]
    fn refresh_merge_detects_reuse_across_regions() {
        let rec = |spent_in: Option<&str>| RefreshRecord {
            player_id: "p".into(),
            family: "f".into(),
            spent: spent_in.is_some(),
            expires_at: 0,
            spent_in: spent_in.map(str::to_string),
        };
        assert!(cross_region_reuse(&rec(Some("eu")), &rec(Some("us"))));
        assert!(!cross_region_reuse(&rec(Some("eu")), &rec(Some("eu"))));
        assert!(!cross_region_reuse(&rec(None), &rec(Some("us"))));
    }
}
