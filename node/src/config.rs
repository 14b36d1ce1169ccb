//! Node configuration: a TOML file, overridden by `MERIDIAN_*` environment
//! variables, overridden by command-line flags. Unknown keys anywhere are an
//! error naming the key (serde `deny_unknown_fields`).
//!
//! Environment mapping: `MERIDIAN_HTTP_ADDR` → `http_addr`,
//! `MERIDIAN_AUTH__ACCESS_TOKEN_TTL_S` → `auth.access_token_ttl_s` (double
//! underscore descends into a table). `MERIDIAN_RATE_LIMITS=off` is the
//! documented switch for `rate_limits.enabled = false`. `MERIDIAN_LOG` (the
//! tracing filter) is not a config key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Region name; its file under `regions_dir` gives the default addresses.
    pub region: String,
    /// This node's name in the mesh (defaults to the region name).
    pub node_name: Option<String>,
    pub data_dir: PathBuf,
    pub regions_dir: PathBuf,
    pub http_addr: Option<SocketAddr>,
    pub game_addr: Option<SocketAddr>,
    pub beacon_addr: Option<SocketAddr>,
    pub mesh_addr: Option<SocketAddr>,
    /// Bearer token for the admin role. Unset: admin endpoints answer 403.
    pub admin_token: Option<String>,
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub log_format: String,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub limits: LimitsConfig,
    pub telemetry: TelemetryConfig,
    pub profiles: ProfileConfig,
    pub mesh: MeshSection,
    pub economy: EconomySection,
    /// Cross-region CRDT replication (accounts, keys, profiles, leaderboards).
    pub replication: ReplicationSection,
    pub payments: PaymentsSection,
    /// Boards (`[[leaderboards.boards]]`) and the XP level curve; a few demo
    /// boards when none are configured.
    pub leaderboards: meridian_replication::leaderboard::LeaderboardConfig,
    /// Game modes, matcher cadence and match rewards.
    pub matchmaking: crate::games::GamesConfig,
    /// The game-server fleet: backend (embedded, process), size, arena tunables.
    pub dgs: crate::games::DgsConfig,
    /// Release label shown by `/healthz` (Terraform's `release_version`);
    /// default: the binary's version.
    pub release: Option<String>,
    /// In-place blue/green takeover (`meridian up --takeover`).
    pub takeover: TakeoverSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: "eu-west".into(),
            node_name: None,
            data_dir: PathBuf::from("data"),
            regions_dir: PathBuf::from("regions"),
            http_addr: None,
            game_addr: None,
            beacon_addr: None,
            mesh_addr: None,
            admin_token: None,
            log_format: "auto".into(),
            auth: AuthConfig::default(),
            rate_limits: RateLimitConfig::default(),
            limits: LimitsConfig::default(),
            telemetry: TelemetryConfig::default(),
            profiles: ProfileConfig::default(),
            mesh: MeshSection::default(),
            economy: EconomySection::default(),
            replication: ReplicationSection::default(),
            payments: PaymentsSection::default(),
            leaderboards: Default::default(),
            matchmaking: Default::default(),
            dgs: Default::default(),
            release: None,
            takeover: TakeoverSection::default(),
        }
    }
}

/// In-place blue/green takeover: a new process on the same data dir and
/// ports takes the HTTP listener over from the running one
/// (docs/operations.md, "Upgrade (rolling)").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TakeoverSection {
    /// Listen on `{data_dir}/takeover.sock` for a takeover request.
    pub enabled: bool,
    /// Blue: how long every response carries `Connection: close` before it
    /// stops accepting, so clients leave their keep-alive connections.
    pub close_window_ms: u64,
    /// Blue: bound on handing the leadership of one shard to another voter.
    pub leader_handover_ms: u64,
    /// Green: how long it waits for the running node to pass its listener
    /// (covers the game servers' drain, so above `dgs.drain_deadline_s`).
    pub wait_s: u64,
    /// Green: how long it waits, after it got the listener, for the old
    /// process to exit and release the store before it gives up.
    pub release_wait_ms: u64,
    /// Green: before it accepts, how long it waits at most until the mesh
    /// shows its shards' other voters alive (so forwarded writes reach
    /// their leaders); it accepts anyway after this.
    pub mesh_join_wait_ms: u64,
}

impl Default for TakeoverSection {
    fn default() -> Self {
        Self {
            enabled: true,
            close_window_ms: 750,
            leader_handover_ms: 3_000,
            wait_s: 120,
            release_wait_ms: 30_000,
            mesh_join_wait_ms: 3_000,
        }
    }
}

/// Wallets, inventory and the store, on per-shard Raft groups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EconomySection {
    /// Raft shards; fixed when the store is first created.
    pub shards: u16,
    /// How long a write waits for a shard leader before a 503.
    pub leader_wait_ms: u64,
    /// How long a write waits for its commit before a 503.
    pub commit_timeout_ms: u64,
    /// Raft heartbeat interval. openraft also uses it as the timeout of every
    /// AppendEntries call, so it must be above the largest round trip between
    /// two regions that share shards (with a margin): a shorter one makes
    /// every answer from a far voter time out, and a far voter that raised its
    /// term while cut off then stays a candidate after the heal (found by
    /// `meridian-sim`). Elections time out after 3–6 heartbeats.
    /// `GET /admin/replication` lists peers whose measured RTT is above 80 %
    /// of it. 20..=5000.
    pub heartbeat_interval_ms: u64,
    /// The store catalog (`[[economy.catalog.items]]`); a small demo catalog
    /// when empty.
    pub catalog: meridian_replication::economy::Catalog,
    /// A pristine node founds the economy cluster once it sees this many
    /// mesh members (itself included) and none of them has an economy yet;
    /// the founders are the first `bootstrap_expect` names. 1 = found alone
    /// at start (a single node). Nodes that come later join: a shard leader
    /// adds them as voters.
    pub bootstrap_expect: usize,
    /// Raft voters per shard, in distinct regions where possible (all nodes
    /// when there are fewer).
    pub voters_per_shard: usize,
    /// A voter unreachable this long is replaced by another region's node
    /// (a draining node's voters move at once).
    pub voter_down_timeout_s: u64,
    /// Period of the shard leaders' voter placement check.
    pub placement_interval_ms: u64,
    /// On shutdown, how long the node waits for its voter seats to move to
    /// other nodes before it leaves anyway.
    pub handoff_timeout_s: u64,
    /// A shard leader hands the leadership to the voter where most of the
    /// shard's writes come in (its players' home region), checked every
    /// `leader_balance_interval_s` over the writes since the last check.
    pub leader_follows_writes: bool,
    pub leader_balance_interval_s: u64,
    /// ...when at least this many writes came in...
    pub leader_balance_min_writes: u64,
    /// ...and that voter brought at least this share of them.
    pub leader_balance_share: f64,
}

impl Default for EconomySection {
    fn default() -> Self {
        Self {
            shards: meridian_replication::economy::SHARDS_DEFAULT,
            leader_wait_ms: 2_000,
            commit_timeout_ms: 5_000,
            heartbeat_interval_ms: 250,
            catalog: Default::default(),
            bootstrap_expect: 1,
            voters_per_shard: 3,
            voter_down_timeout_s: 600,
            placement_interval_ms: 1_000,
            handoff_timeout_s: 30,
            leader_follows_writes: true,
            leader_balance_interval_s: 10,
            leader_balance_min_writes: 50,
            leader_balance_share: 0.6,
        }
    }
}

/// Cross-region CRDT replication over the mesh: a local change pokes every
/// peer, which pulls what it misses from its per-peer cursor; a periodic
/// pull is the anti-entropy that catches up after a partition or downtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Period of the anti-entropy pull from every peer.
    pub anti_entropy_interval_ms: u64,
    /// Most changed keys in one pull reply.
    pub batch_keys_max: usize,
    /// About the most value bytes in one pull reply.
    pub batch_bytes_max: usize,
    /// Local changes within this window share one poke to the peers.
    pub poke_coalesce_ms: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        Self {
            anti_entropy_interval_ms: 1_000,
            batch_keys_max: 1_000,
            batch_bytes_max: 1024 * 1024,
            poke_coalesce_ms: 20,
        }
    }
}

/// Real-money purchases through a payment gateway. Only the test gateway
/// (Stripe-like signed webhooks) ships; no card data ever reaches Meridian.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsSection {
    pub enabled: bool,
    /// Shared secret for webhook signatures (HMAC-SHA256).
    pub webhook_secret: Option<String>,
    pub products: Vec<meridian_replication::economy::PaymentProduct>,
}

/// The region mesh (SWIM over mutually authenticated QUIC).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    pub enabled: bool,
    /// Extra seed mesh addresses (`host:port`).
    pub seeds: Vec<String>,
    /// Also use every other region of the catalog as a seed.
    pub seed_catalog: bool,
    /// Cluster CA directory (`ca.pem`, and `ca.key` for dev certs). Default:
    /// `{data_dir}/certs/ca`, created on first start when `auto_dev_certs`.
    pub ca_dir: Option<PathBuf>,
    /// Node certificate directory (`node.pem`, `node.key`). Default:
    /// `{data_dir}/certs/{node_name}`.
    pub cert_dir: Option<PathBuf>,
    /// Create a CA and node certificate under the data dir when missing
    /// (local dev and `meridian demo`); production sets false and issues
    /// certificates with `meridian certs`.
    pub auto_dev_certs: bool,
    /// Demo only: injected round-trip latency (ms) to each region.
    pub injected_rtt_ms: std::collections::BTreeMap<String, u64>,
    /// Demo only: the beacon waits this long before echoing, to simulate a
    /// client's distance to this region when every region is on loopback.
    pub beacon_reply_delay_ms: u64,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            enabled: true,
            seeds: Vec::new(),
            seed_catalog: true,
            ca_dir: None,
            cert_dir: None,
            auto_dev_certs: true,
            injected_rtt_ms: Default::default(),
            beacon_reply_delay_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
    /// Static bearer tokens for external dedicated game servers (role `server`).
    pub server_tokens: Vec<String>,
    /// Password hashes computed at once (argon2id is memory-hard: 19 MiB each).
    pub password_hash_concurrency: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_s: 15 * 60,
            refresh_token_ttl_s: 30 * 24 * 3600,
            server_tokens: Vec::new(),
            password_hash_concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Auth requests per client IP per minute (token bucket, burst = rate).
    pub auth_per_ip_per_min: u32,
    /// Auth attempts per account (username, email or device) per minute.
    pub auth_per_account_per_min: u32,
    /// Other requests per player per minute.
    pub player_per_min: u32,
    /// Buckets tracked at once; the fullest are evicted beyond it.
    pub tracked_keys_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_per_ip_per_min: 120,
            auth_per_account_per_min: 10,
            player_per_min: 1200,
            tracked_keys_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted request body; larger gets 413.
    pub http_body_max_bytes: usize,
    /// Requests in flight at once; more wait.
    pub http_concurrency_max: usize,
    /// A request that takes longer gets 408.
    pub http_request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_drain_timeout_ms: u64,
    /// On SIGTERM, keep serving this long with `/readyz` at 503 before the
    /// listener closes, so load balancers and clients move away first.
    pub shutdown_prestop_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            http_body_max_bytes: 1024 * 1024,
            http_concurrency_max: 4096,
            http_request_timeout_ms: 10_000,
            shutdown_drain_timeout_ms: 10_000,
            shutdown_prestop_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub retention_hours: u64,
    pub batch_events_max: usize,
    pub event_payload_max_bytes: usize,
    pub query_limit_max: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            retention_hours: 7 * 24,
            batch_events_max: 500,
            event_payload_max_bytes: 8 * 1024,
            query_limit_max: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub display_name_max_chars: usize,
    pub avatar_max_bytes: usize,
    pub settings_max_bytes: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            display_name_max_chars: 32,
            avatar_max_bytes: 512,
            settings_max_bytes: 4096,
        }
    }
}

/// Flags that override file and environment (from `meridian up`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub region: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<SocketAddr>,
    pub log_format: Option<String>,
}

/// Environment variables that start with `MERIDIAN_` but are not config keys.
const ENV_NOT_CONFIG: &[&str] = &[
    "MERIDIAN_LOG",
    "MERIDIAN_RATE_LIMITS",
    "MERIDIAN_BIN",
    "MERIDIAN_BOTS_SERVER_TOKEN",
    "MERIDIAN_REQUIRE_NETNS",
    "MERIDIAN_REQUIRE_TERRAFORM",
    "MERIDIAN_TERRAFORM",
];

/// Load: file (optional) → environment → flags.
pub fn load(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> anyhow::Result<Config> {
    let mut root = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("MERIDIAN_") else {
            continue;
        };
        if value.is_empty() {
            continue; // an empty variable counts as unset
        }
        if key == "MERIDIAN_RATE_LIMITS" {
            let enabled = !matches!(value.as_str(), "off" | "false" | "0");
            table_at(&mut root, &["rate_limits"])
                .insert("enabled".into(), toml::Value::Boolean(enabled));
            continue;
        }
        if ENV_NOT_CONFIG.contains(&key.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let (last, parents) = path.split_last().expect("split yields one part");
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        table_at(&mut root, &parents).insert(last.clone(), env_value(&value));
    }
    let mut cfg: Config = toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("config: {}", e.message()))?;
    if let Some(r) = &flags.region {
        cfg.region = r.clone();
    }
    if let Some(d) = &flags.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = flags.http_addr {
        cfg.http_addr = Some(a);
    }
    if let Some(f) = &flags.log_format {
        cfg.log_format = f.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn table_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut t = root;
    for part in path {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t
}

/// Environment values are typed like TOML scalars when they parse as one.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if raw.starts_with('[') {
        if let Ok(t) = format!("v = {raw}").parse::<toml::Table>() {
            if let Some(v) = t.get("v") {
                return v.clone();
            }
        }
    }
    toml::Value::String(raw.to_string())
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.log_format.as_str(), "auto" | "text" | "json") {
            anyhow::bail!("config: log_format must be auto, text or json");
        }
        if !(20..=5_000).contains(&self.economy.heartbeat_interval_ms) {
            anyhow::bail!("config: economy.heartbeat_interval_ms must be 20..=5000");
        }
        if self.auth.access_token_ttl_s == 0 || self.auth.access_token_ttl_s > 24 * 3600 {
            anyhow::bail!("config: auth.access_token_ttl_s must be 1..=86400");
        }
        if self.auth.password_hash_concurrency == 0 {
            anyhow::bail!("config: auth.password_hash_concurrency must be at least 1");
        }
        if self.limits.http_body_max_bytes < 1024 {
            anyhow::bail!("config: limits.http_body_max_bytes must be at least 1024");
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                anyhow::bail!("config: admin_token must be at least 16 characters");
            }
        }
        self.dgs.validate()?;
        if let Some(r) = &self.release {
            if r.is_empty()
                || r.len() > 64
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
            {
                anyhow::bail!(
                    "config: release must be 1-64 characters of A-Z a-z 0-9 . - + _ (got {r:?})"
                );
            }
        }
        let t = &self.takeover;
        if !(50..=10_000).contains(&t.close_window_ms) {
            anyhow::bail!("config: takeover.close_window_ms must be 50..=10000");
        }
        if !(100..=60_000).contains(&t.leader_handover_ms) {
            anyhow::bail!("config: takeover.leader_handover_ms must be 100..=60000");
        }
        if t.wait_s <= self.dgs.drain_deadline_s || t.wait_s > 3600 {
            anyhow::bail!(
                "config: takeover.wait_s must be above dgs.drain_deadline_s ({}) and at most 3600",
                self.dgs.drain_deadline_s
            );
        }
        if !(1_000..=600_000).contains(&t.release_wait_ms) {
            anyhow::bail!("config: takeover.release_wait_ms must be 1000..=600000");
        }
        if t.mesh_join_wait_ms > 60_000 {
            anyhow::bail!("config: takeover.mesh_join_wait_ms must be 0..=60000");
        }
        Ok(())
    }

    /// The release label (`release`, else the binary's version).
    pub fn release(&self) -> &str {
        self.release.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"))
    }

    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| self.region.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let c = load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.auth.access_token_ttl_s, 900);
        assert!(c.rate_limits.enabled);
    }

    #[test]
    fn env_overrides_and_nested_keys() {
        let c = load(
            None,
            env(&[
                ("MERIDIAN_HTTP_ADDR", "127.0.0.1:9000"),
                ("MERIDIAN_AUTH__ACCESS_TOKEN_TTL_S", "60"),
                ("MERIDIAN_RATE_LIMITS", "off"),
                ("MERIDIAN_LOG", "debug"),
                ("OTHER", "x"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.http_addr.unwrap().port(), 9000);
        assert_eq!(c.auth.access_token_ttl_s, 60);
        assert!(!c.rate_limits.enabled);
    }

    #[test]
    fn raft_heartbeat_bounds_are_enforced_at_their_edges() {
        let with = |v: &str| {
            load(
                None,
                env(&[("MERIDIAN_ECONOMY__HEARTBEAT_INTERVAL_MS", v)]),
                &Overrides::default(),
            )
        };
        assert_eq!(with("20").unwrap().economy.heartbeat_interval_ms, 20);
        assert_eq!(with("5000").unwrap().economy.heartbeat_interval_ms, 5_000);
        for bad in ["19", "5001", "0"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("economy.heartbeat_interval_ms"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, "region = \"x\"\n[auth]\nacces_token_ttl_s = 5\n").unwrap();
        let err = load(Some(&p), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("acces_token_ttl_s"), "{err}");
        let err = load(None, env(&[("MERIDIAN_BOGUS", "1")]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn takeover_limits_and_release_are_checked() {
        let c = load(
            None,
            env(&[("MERIDIAN_RELEASE", "0.2.0-rc.1")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.release(), "0.2.0-rc.1");
        assert_eq!(
            load(None, env(&[]), &Overrides::default())
                .unwrap()
                .release(),
            env!("CARGO_PKG_VERSION")
        );
        for (k, v, named) in [
            ("MERIDIAN_RELEASE", "0.2 beta", "release"),
            ("MERIDIAN_TAKEOVER__WAIT_S", "10", "takeover.wait_s"),
            (
                "MERIDIAN_TAKEOVER__CLOSE_WINDOW_MS",
                "0",
                "takeover.close_window_ms",
            ),
            (
                "MERIDIAN_TAKEOVER__LEADER_HANDOVER_MS",
                "5",
                "takeover.leader_handover_ms",
            ),
            (
                "MERIDIAN_TAKEOVER__RELEASE_WAIT_MS",
                "10",
                "takeover.release_wait_ms",
            ),
        ] {
            let err = load(None, env(&[(k, v)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{k}={v}: {err}");
        }
    }

    #[test]
    fn flags_win_over_env() {
        let flags = Overrides {
            region: Some("us-east".into()),
            ..Default::default()
        };
        let c = load(None, env(&[("MERIDIAN_REGION", "ap-south")]), &flags).unwrap();
        assert_eq!(c.region, "us-east");
    }
}
