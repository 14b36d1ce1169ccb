//! The Agones backend: matches run on game servers of an Agones fleet in
//! Kubernetes. [`Orchestrator::allocate`] creates a `GameServerAllocation`
//! (`allocation.agones.dev/v1`) through kube-rs and maps its outcome:
//!
//! | Agones answer | result |
//! |---|---|
//! | `status.state = Allocated` | [`Allocation`] at `status.address` : the port named `port_name` (or the first) |
//! | `status.state = UnAllocated` | [`AllocateError::Unavailable`] (no Ready server matched the selectors) |
//! | `status.state = Contention`, HTTP 409 | retried `contention_retries` times, then [`AllocateError::Unavailable`] |
//! | other HTTP errors, timeouts | [`AllocateError::Unavailable`] at once |
//!
//! Selectors, in Agones' order of preference: one per `preferred_labels`
//! entry (each merged with the required labels), then the required ones
//! alone (`agones.dev/fleet: <fleet>` plus `required_labels`); only `Ready`
//! game servers are taken. The allocation's `metadata` puts the session on
//! the game server: label `meridian.dev/session-id`, annotations
//! `meridian.dev/sdk-url`, `meridian.dev/sdk-token`, `meridian.dev/mode`,
//! `meridian.dev/players` (the same values the Process backend passes in its
//! environment). The game server reads them (Agones SDK `WatchGameServer`)
//! and talks to the node's SDK endpoint like a process does (ready, health,
//! player connect/disconnect with the players' session tokens, result);
//! the session ends at its result or shutdown, or fails at the ready,
//! health or drain deadlines.
//!
//! TLS: kube-rs is built with rustls on aws-lc-rs only (no ring, no
//! OpenSSL); the node installs aws-lc-rs as the process-wide provider.
//!
//! Not tested against a real cluster (none can run here): `dgs/tests/agones.rs`
//! drives the kube client against a scripted API server that checks the
//! request and answers with recorded Agones responses.
//!
//! `allocate` is synchronous (the trait's); this backend waits for the API
//! server with `block_in_place`, bounded by `allocate_timeout_ms`, so it
//! needs a multi-threaded Tokio runtime (an error otherwise, never a panic).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::game::MatchSpec;
use crate::orchestrator::{
    AllocateError, Allocation, Capacity, Orchestrator, SessionReport, SessionStatus,
};
use crate::process::{random_credential, ProcessConfig, ProcessOrchestrator};
use crate::token::TokenSigner;
use crate::SessionId;

/// Preferred selectors at most (Agones tries them in order).
pub const PREFERRED_SELECTORS_MAX: usize = 8;
/// Labels per selector at most.
pub const SELECTOR_LABELS_MAX: usize = 16;
/// Retries after `Contention` or HTTP 409, at most.
pub const CONTENTION_RETRIES_MAX: u32 = 10;

/// Configuration of the Agones backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgonesConfig {
    /// Kubernetes API server, e.g. `http://127.0.0.1:8001` (`kubectl proxy`).
    /// Unset: in-cluster service account or `~/.kube/config` (kube's inference).
    pub api_url: Option<String>,
    pub namespace: String,
    /// The fleet (`agones.dev/fleet` label) to allocate from.
    pub fleet: String,
    /// More labels every allocated server must have.
    pub required_labels: BTreeMap<String, String>,
    /// Label sets preferred in this order (e.g. a newer build, a zone).
    pub preferred_labels: Vec<BTreeMap<String, String>>,
    /// `Packed` or `Distributed`.
    pub scheduling: String,
    /// Game-server port clients dial, by name; unset = the first port.
    pub port_name: Option<String>,
    /// The node's SDK endpoint as game servers in the cluster reach it
    /// (put in the allocation's annotations), e.g. `http://meridian-eu:39000`.
    pub sdk_public_url: String,
    /// Where the node binds the SDK endpoint.
    pub sdk_bind: SocketAddr,
    /// Sessions at once; set by the embedding application (the node: `dgs.sessions_max`).
    #[serde(skip)]
    pub sessions_max: usize,
    /// Player token lifetime; set by the application (the node: `dgs.token_ttl_s`).
    #[serde(skip)]
    pub token_ttl_s: u64,
    /// Bound on one `GameServerAllocation` request.
    pub allocate_timeout_ms: u64,
    pub contention_retries: u32,
    /// An allocated server that has not called `/sdk/ready` by then fails its session.
    pub ready_timeout_ms: u64,
    pub health_timeout_ms: u64,
    pub health_interval_ms: u64,
}

impl Default for AgonesConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            namespace: "default".into(),
            fleet: String::new(),
            required_labels: BTreeMap::new(),
            preferred_labels: Vec::new(),
            scheduling: "Packed".into(),
            port_name: None,
            sdk_public_url: String::new(),
            sdk_bind: SocketAddr::from(([0, 0, 0, 0], 39_000)),
            sessions_max: 1_000,
            token_ttl_s: 120,
            allocate_timeout_ms: 5_000,
            contention_retries: 3,
            ready_timeout_ms: 30_000,
            health_timeout_ms: 10_000,
            health_interval_ms: 1_000,
        }
    }
}

impl AgonesConfig {
    /// Errors name the key (relative to this section).
    pub fn validate(&self) -> Result<(), String> {
        if self.fleet.is_empty() {
            return Err("fleet is required".into());
        }
        if self.namespace.is_empty() {
            return Err("namespace must not be empty".into());
        }
        if !matches!(self.scheduling.as_str(), "Packed" | "Distributed") {
            return Err(format!(
                "scheduling must be Packed or Distributed (got {:?})",
                self.scheduling
            ));
        }
        if !(self.sdk_public_url.starts_with("http://")
            || self.sdk_public_url.starts_with("https://"))
        {
            return Err("sdk_public_url must be an http(s) URL game servers can reach".into());
        }
        if self.preferred_labels.len() > PREFERRED_SELECTORS_MAX {
            return Err(format!(
                "preferred_labels: at most {PREFERRED_SELECTORS_MAX} selectors"
            ));
        }
        if self.required_labels.len() > SELECTOR_LABELS_MAX
            || self
                .preferred_labels
                .iter()
                .any(|l| l.len() > SELECTOR_LABELS_MAX)
        {
            return Err(format!(
                "required_labels/preferred_labels: at most {SELECTOR_LABELS_MAX} labels per selector"
            ));
        }
        if self.contention_retries > CONTENTION_RETRIES_MAX {
            return Err(format!(
                "contention_retries must be at most {CONTENTION_RETRIES_MAX}"
            ));
        }
        if self.allocate_timeout_ms == 0 {
            return Err("allocate_timeout_ms must be at least 1".into());
        }
        if self.sessions_max == 0 {
            return Err("sessions_max must be at least 1".into());
        }
        if let Some(u) = &self.api_url {
            u.parse::<http::Uri>()
                .map_err(|e| format!("api_url is not a URL: {e}"))?;
        }
        Ok(())
    }
}

/// The `GameServerAllocation` body for one session.
pub fn allocation_request(
    cfg: &AgonesConfig,
    session_id: SessionId,
    spec: &MatchSpec,
    credential: &str,
) -> serde_json::Value {
    let mut required: BTreeMap<String, String> = cfg.required_labels.clone();
    required.insert("agones.dev/fleet".into(), cfg.fleet.clone());
    let mut selectors: Vec<serde_json::Value> = cfg
        .preferred_labels
        .iter()
        .map(|p| {
            let mut l = p.clone();
            l.extend(required.clone());
            json!({"matchLabels": l, "gameServerState": "Ready"})
        })
        .collect();
    selectors.push(json!({"matchLabels": required, "gameServerState": "Ready"}));
    let players: Vec<String> = spec
        .roster()
        .iter()
        .map(|r| format!("{}:{}", r.player_id, r.team))
        .collect();
    json!({
        "apiVersion": "allocation.agones.dev/v1",
        "kind": "GameServerAllocation",
        "metadata": {"generateName": "meridian-"},
        "spec": {
            "selectors": selectors,
            "scheduling": cfg.scheduling,
            "metadata": {
                "labels": {"meridian.dev/session-id": session_id.to_string()},
                "annotations": {
                    "meridian.dev/sdk-url": cfg.sdk_public_url,
                    "meridian.dev/sdk-token": credential,
                    "meridian.dev/mode": spec.mode,
                    "meridian.dev/players": players.join(","),
                }
            }
        }
    })
}

/// What one `GameServerAllocation` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationOutcome {
    Allocated {
        game_server: String,
        address: String,
        port: u16,
    },
    UnAllocated,
    Contention,
}

/// Reads `status` of a `GameServerAllocation` response.
pub fn parse_allocation(
    v: &serde_json::Value,
    port_name: Option<&str>,
) -> Result<AllocationOutcome, String> {
    let status = &v["status"];
    match status["state"].as_str() {
        Some("Allocated") => {
            let address = status["address"]
                .as_str()
                .filter(|a| !a.is_empty())
                .ok_or("Allocated without status.address")?
                .to_string();
            let ports = status["ports"]
                .as_array()
                .ok_or("Allocated without status.ports")?;
            let port = ports
                .iter()
                .find(|p| port_name.is_none_or(|n| p["name"].as_str() == Some(n)))
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| match port_name {
                    Some(n) => format!("Allocated without a port named {n:?}"),
                    None => "Allocated without a port".to_string(),
                })?;
            Ok(AllocationOutcome::Allocated {
                game_server: status["gameServerName"].as_str().unwrap_or("").to_string(),
                address,
                port,
            })
        }
        Some("UnAllocated") => Ok(AllocationOutcome::UnAllocated),
        Some("Contention") => Ok(AllocationOutcome::Contention),
        other => Err(format!("unknown allocation state {other:?}")),
    }
}

/// Game servers of an Agones fleet.
#[derive(Clone)]
pub struct AgonesOrchestrator {
    cfg: AgonesConfig,
    api: Api<DynamicObject>,
    /// The SDK endpoint and session registry (shared with the Process backend).
    sdk: ProcessOrchestrator,
}

impl AgonesOrchestrator {
    /// Builds the kube client (no request yet) and binds the SDK endpoint.
    pub async fn start(
        cfg: AgonesConfig,
        signer: TokenSigner,
    ) -> io::Result<(Self, mpsc::Receiver<SessionReport>)> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let kube_cfg = match &cfg.api_url {
            Some(url) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
                kube::Config::new(uri)
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| io::Error::other(format!("kubernetes config: {e}")))?,
        };
        let client = kube::Client::try_from(kube_cfg)
            .map_err(|e| io::Error::other(format!("kubernetes client: {e}")))?;
        let gvk = GroupVersionKind::gvk("allocation.agones.dev", "v1", "GameServerAllocation");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "gameserverallocations");
        let api = Api::namespaced_with(client, &cfg.namespace, &ar);
        let mut pcfg = ProcessConfig::new("");
        pcfg.sdk_bind = cfg.sdk_bind;
        pcfg.sessions_max = cfg.sessions_max;
        pcfg.token_ttl_s = cfg.token_ttl_s;
        pcfg.ready_timeout_ms = cfg.ready_timeout_ms;
        pcfg.health_timeout_ms = cfg.health_timeout_ms;
        pcfg.health_interval_ms = cfg.health_interval_ms;
        let (sdk, reports) = ProcessOrchestrator::start(pcfg, signer).await?;
        Ok((Self { cfg, api, sdk }, reports))
    }

    /// Address of the node's SDK endpoint.
    pub fn sdk_addr(&self) -> SocketAddr {
        self.sdk.sdk_addr()
    }

    /// One allocation with retries on contention.
    async fn request(&self, body: serde_json::Value) -> Result<(String, u16), AllocateError> {
        let unavailable = AllocateError::Unavailable;
        let obj: DynamicObject = serde_json::from_value(body)
            .map_err(|e| unavailable(format!("building the allocation: {e}")))?;
        let timeout = Duration::from_millis(self.cfg.allocate_timeout_ms);
        let mut attempt = 0;
        loop {
            let res =
                tokio::time::timeout(timeout, self.api.create(&PostParams::default(), &obj)).await;
            let contention = match res {
                Err(_) => return Err(unavailable(format!("no answer within {timeout:?}"))),
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => format!("HTTP 409: {}", s.message),
                Ok(Err(kube::Error::Api(s))) => {
                    return Err(unavailable(format!(
                        "HTTP {} {}: {}",
                        s.code, s.reason, s.message
                    )))
                }
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Ok(Ok(created)) => {
                    let v = serde_json::to_value(&created)
                        .map_err(|e| unavailable(format!("allocation response: {e}")))?;
                    match parse_allocation(&v, self.cfg.port_name.as_deref())
                        .map_err(unavailable)?
                    {
                        AllocationOutcome::Allocated { address, port, .. } => {
                            return Ok((address, port))
                        }
                        AllocationOutcome::UnAllocated => {
                            return Err(unavailable(format!(
                            "UnAllocated: no Ready game server in fleet {:?} matched the selectors",
                            self.cfg.fleet
                        )))
                        }
                        AllocationOutcome::Contention => "Contention".to_string(),
                    }
                }
            };
            if attempt >= self.cfg.contention_retries {
                return Err(unavailable(format!(
                    "contention after {} attempts ({contention})",
                    attempt + 1
                )));
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
        }
    }
}

impl Orchestrator for AgonesOrchestrator {
    fn allocate(&self, spec: MatchSpec) -> Result<Allocation, AllocateError> {
        spec.validate()?;
        self.sdk.check_capacity()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| AllocateError::Unavailable("no Tokio runtime".into()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(AllocateError::Unavailable(
                "the Agones backend needs a multi-threaded Tokio runtime".into(),
            ));
        }
        let session_id = uuid::Uuid::new_v4();
        let credential = random_credential();
        let body = allocation_request(&self.cfg, session_id, &spec, &credential);
        let (host, port) = tokio::task::block_in_place(|| handle.block_on(self.request(body)))?;
        Ok(self
            .sdk
            .register_external(spec, session_id, credential, host, port))
    }

    fn status(&self, session_id: SessionId) -> Option<SessionStatus> {
        self.sdk.status(session_id)
    }

    fn capacity(&self) -> Capacity {
        self.sdk.capacity()
    }

    fn drain(&self, deadline: Duration) {
        self.sdk.drain(deadline)
    }

    fn drained(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.sdk.drained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgonesConfig {
        AgonesConfig {
            fleet: "arena".into(),
            sdk_public_url: "http://node:39000".into(),
            ..Default::default()
        }
    }

    #[test]
    fn validate_names_the_key() {
        assert!(cfg().validate().is_ok());
        let e = AgonesConfig::default().validate().unwrap_err();
        assert!(e.contains("fleet"), "{e}");
        let mut c = cfg();
        c.scheduling = "Random".into();
        assert!(c.validate().unwrap_err().contains("scheduling"));
        let mut c = cfg();
        c.preferred_labels = vec![BTreeMap::new(); PREFERRED_SELECTORS_MAX];
        assert!(c.validate().is_ok());
        c.preferred_labels.push(BTreeMap::new());
        assert!(c.validate().unwrap_err().contains("preferred_labels"));
        let mut c = cfg();
        c.required_labels = (0..SELECTOR_LABELS_MAX)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(c.validate().is_ok());
        c.required_labels.insert("one-more".into(), "v".into());
        assert!(c.validate().unwrap_err().contains("required_labels"));
        let mut c = cfg();
        c.contention_retries = CONTENTION_RETRIES_MAX;
        assert!(c.validate().is_ok());
        c.contention_retries = CONTENTION_RETRIES_MAX + 1;
        assert!(c.validate().unwrap_err().contains("contention_retries"));
        let mut c = cfg();
        c.sdk_public_url = "node:39000".into();
        assert!(c.validate().unwrap_err().contains("sdk_public_url"));
    }

    #[test]
    fn parse_outcomes() {
        let v = json!({"status": {"state": "Allocated", "gameServerName": "gs-1",
            "address": "10.0.0.7", "ports": [{"name": "admin", "port": 9000}, {"name": "game", "port": 7604}]}});
        assert_eq!(
            parse_allocation(&v, Some("game")).unwrap(),
            AllocationOutcome::Allocated {
                game_server: "gs-1".into(),
                address: "10.0.0.7".into(),
                port: 7604
            }
        );
        assert!(matches!(
            parse_allocation(&v, None).unwrap(),
            AllocationOutcome::Allocated { port: 9000, .. }
        ));
        assert!(parse_allocation(&v, Some("nope")).is_err());
        let v = json!({"status": {"state": "UnAllocated"}});
        assert_eq!(
            parse_allocation(&v, None).unwrap(),
            AllocationOutcome::UnAllocated
        );
        let v = json!({"status": {"state": "Contention"}});
        assert_eq!(
            parse_allocation(&v, None).unwrap(),
            AllocationOutcome::Contention
        );
        assert!(parse_allocation(&json!({}), None).is_err());
        let v =
            json!({"status": {"state": "Allocated", "address": "a", "ports": [{"port": 70000}]}});
        assert!(parse_allocation(&v, None).is_err());
    }
}
