//! Start-up and shutdown of one region node.
//!
//! Shutdown (SIGINT/SIGTERM): readiness turns 503 while the node keeps
//! serving for `limits.shutdown_prestop_ms`; then the listener stops
//! accepting, in-flight requests drain (bounded by
//! `limits.shutdown_drain_timeout_ms`), game servers drain (running matches
//! finish or hit `dgs.drain_deadline_s`), the node leaves the mesh, and
//! storage is flushed.

use crate::api::{self, AppState};
use crate::auth::accounts::Accounts;
use crate::auth::ratelimit::RateLimiter;
use crate::auth::tokens::Keyring;
use crate::config::Config;
use crate::profiles::Profiles;
use crate::regions::{self, Region};
use crate::telemetry::Telemetry;
use anyhow::Context;
use meridian_replication::Storage;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the telemetry retention task runs.
const RETENTION_INTERVAL_S: u64 = 60;

pub fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// The region this node serves: its file in the catalog, or, where there is
/// no catalog directory, built-in loopback defaults (API.md's ports).
pub fn resolve_region(cfg: &Config) -> anyhow::Result<(Region, BTreeMap<String, Region>)> {
    if cfg.regions_dir.is_dir() {
        let catalog = regions::check_catalog(&cfg.regions_dir).map_err(|errs| {
            let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("region catalog is invalid:\n  {}", lines.join("\n  "))
        })?;
        let region = catalog.get(&cfg.region).cloned().with_context(|| {
            format!(
                "region {:?} has no file in {} (known: {})",
                cfg.region,
                cfg.regions_dir.display(),
                catalog.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        return Ok((region, catalog));
    }
    let region = Region {
        name: cfg.region.clone(),
        display_name: cfg.region.clone(),
        latency_group: "default".into(),
        location: regions::Location { lat: 0.0, lon: 0.0 },
        bind_host: [127, 0, 0, 1].into(),
        public_host: "127.0.0.1".into(),
        ports: regions::Ports {
            http: 7700,
            game: 7777,
            beacon: 7778,
            mesh: 7946,
        },
        capacity: regions::Capacity {
            max_players: 10_000,
            max_matches: 500,
        },
        cloud: regions::Cloud {
            provider: "local".into(),
            region: "local".into(),
            instance_type: "-".into(),
        },
    };
    let catalog = BTreeMap::from([(region.name.clone(), region.clone())]);
    Ok((region, catalog))
}

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Build the shared state: open storage and every service.
pub async fn build_state(cfg: Config) -> anyhow::Result<Arc<AppState>> {
    let (region, catalog) = resolve_region(&cfg)?;
    let store_dir = cfg.data_dir.join("store");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("creating data dir {}", store_dir.display()))?;
    let storage = Storage::open_sled(&store_dir)?;
    for p in crate::replica::REPLICATED_PREFIXES {
        storage.replicate_prefix(p.as_bytes())?;
    }
    let replica = crate::replica::Replica::default();
    let keys = Arc::new(Keyring::open(&storage, &region.name).await?);
    let accounts = Accounts::new(
        storage.clone(),
        keys,
        &region.name,
        cfg.auth.access_token_ttl_s,
        cfg.auth.refresh_token_ttl_s,
        cfg.auth.password_hash_concurrency,
    )?;
    let profiles = Profiles::new(storage.clone(), &cfg.profiles);
    let telemetry = Telemetry::new(storage.clone(), cfg.telemetry.clone());
    let limiter = RateLimiter::new(cfg.rate_limits.enabled, cfg.rate_limits.tracked_keys_max);
    if !cfg.rate_limits.enabled {
        tracing::warn!(
            "rate limits are OFF (MERIDIAN_RATE_LIMITS=off): for load tests on loopback only"
        );
    }
    if cfg.admin_token.is_none() {
        tracing::info!("no admin token configured: admin endpoints answer 403");
    }
    let mut catalog_cfg = cfg.economy.catalog.clone();
    if catalog_cfg.items.is_empty() {
        catalog_cfg = crate::api::economy::default_catalog();
    }
    let economy = meridian_replication::economy::Economy::open(
        storage.clone(),
        meridian_replication::economy::EconomyConfig {
            shards: cfg.economy.shards,
            catalog: catalog_cfg,
            leader_wait_ms: cfg.economy.leader_wait_ms,
            commit_timeout_ms: cfg.economy.commit_timeout_ms,
            heartbeat_interval_ms: cfg.economy.heartbeat_interval_ms,
            // A leader refuses writes when its last quorum ack is older than
            // this; acks come once per heartbeat.
            quorum_ack_max_age_ms: (4 * cfg.economy.heartbeat_interval_ms).max(1_000),
            node_id: crate::replica::raft_id(&cfg.node_name()),
            node_addr: cfg.node_name(),
            // A cluster of several founders is founded later, by the
            // replication manager, once they see each other.
            bootstrap: cfg.economy.bootstrap_expect <= 1,
            transport: meridian_replication::economy::RaftTransport::Custom(replica.net.clone()),
            ..Default::default()
        },
    )
    .await
    .context("opening the economy")?;
    accounts.set_directory(Arc::new(crate::replica::RaftDirectory(economy.clone())));
    let payments = if cfg.payments.enabled {
        let secret = cfg
            .payments
            .webhook_secret
            .clone()
            .filter(|s| s.len() >= 16)
            .context(
                "payments.webhook_secret (16+ characters) is required when payments are enabled",
            )?;
        let gateway: Arc<dyn meridian_replication::economy::PaymentGateway> = Arc::new(
            meridian_replication::economy::TestGateway::new(secret.as_bytes()),
        );
        let processor =
            meridian_replication::economy::WebhookProcessor::new(economy.clone(), gateway.clone());
        Some((gateway, processor))
    } else {
        None
    };
    let mut lb_cfg = cfg.leaderboards.clone();
    if lb_cfg.boards.is_empty() {
        lb_cfg.boards = crate::api::leaderboards::default_boards();
    }
    let lb_storage = storage.clone();
    let node_id = meridian_replication::crdt::node_id_from_name(&cfg.node_name());
    let lb_region = region.name.clone();
    let started = std::time::Instant::now();
    let leaderboards = tokio::task::spawn_blocking(move || {
        meridian_replication::leaderboard::LeaderboardEngine::open(
            lb_storage, &lb_cfg, node_id, &lb_region,
        )
    })
    .await
    .context("leaderboard rebuild task")?
    .context("opening the leaderboards")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "leaderboard indexes rebuilt"
    );
    let http_port = cfg.http_addr.unwrap_or_else(|| region.http_addr()).port();
    let game_addr = cfg.game_addr.unwrap_or_else(|| region.game_addr());
    let (games, reports) = crate::games::Games::start(
        &region.name,
        &region.public_host,
        game_addr,
        cfg.matchmaking.clone(),
        &cfg.dgs,
    )
    .await?;
    let (mesh, beacon) = if cfg.mesh.enabled {
        let c = crate::cluster::start(&cfg, &region, &catalog, http_port).await?;
        (Some(c.mesh), Some(c.beacon))
    } else {
        tracing::info!("mesh disabled (mesh.enabled = false): single-node mode");
        (None, None)
    };
    let state = Arc::new(AppState {
        mesh: std::sync::RwLock::new(mesh),
        beacon,
        economy,
        leaderboards,
        games,
        payments,
        cfg,
        region,
        catalog,
        storage,
        accounts,
        profiles,
        telemetry,
        limiter,
        metrics: install_metrics()?,
        ready: false.into(),
        draining: false.into(),
        replica,
    });
    let client = state.with_mesh(|m| {
        crate::replica::register(&state, m);
        crate::offers::register(&state, m);
        m.client()
    });
    if let Some(client) = client {
        crate::replica::spawn(&state, client);
    }
    // Matcher passes and session reports.
    let tick_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(
            tick_state.games.config().tick_interval_ms,
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let out = tick_state.games.tick();
            if !out.offers.is_empty() || !out.remote_matches.is_empty() {
                tokio::spawn(crate::offers::after_tick(tick_state.clone(), out));
            }
        }
    });
    let report_state = state.clone();
    let mut reports = reports;
    tokio::spawn(async move {
        while let Some(r) = reports.recv().await {
            report_state.games.apply_report(&report_state, r).await;
        }
    });
    Ok(state)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let state = build_state(cfg).await?;
    let http_addr = state
        .cfg
        .http_addr
        .unwrap_or_else(|| state.region.http_addr());
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding HTTP {http_addr}"))?;
    let local = listener.local_addr()?;

    let retention_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(RETENTION_INTERVAL_S));
        loop {
            tick.tick().await;
            match retention_state
                .telemetry
                .enforce_retention(chrono::Utc::now())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "telemetry retention"),
                Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
            }
        }
    });

    let app = api::router(state.clone());
    state.ready.store(true, Ordering::Release);
    tracing::info!(region = %state.region.name, http = %local, data_dir = %state.cfg.data_dir.display(), "meridian node listening on http://{local}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Set by SIGTERM/SIGINT only (an admin drain turns readiness off too,
    // but keeps serving until the process is stopped).
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping_tx = stopping.clone();
    let drain_state = state.clone();
    let drain_timeout = Duration::from_millis(state.cfg.limits.shutdown_drain_timeout_ms);
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping_tx.store(true, Ordering::Release);
        drain_state.ready.store(false, Ordering::Release);
        // Pre-stop: still serving, but not ready, so traffic moves away first.
        let prestop = Duration::from_millis(drain_state.cfg.limits.shutdown_prestop_ms);
        if !prestop.is_zero() {
            tracing::info!(
                prestop_ms = prestop.as_millis() as u64,
                "not ready; serving until the listener closes"
            );
            tokio::time::sleep(prestop).await;
        }
        let _ = stop_tx.send(());
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        res = &mut server => res?,
        _ = async {
            // Bound the drain: once readiness is off, wait at most the timeout.
            while !stopping.load(Ordering::Acquire) { tokio::time::sleep(Duration::from_millis(50)).await; }
            tokio::time::sleep(drain_timeout + Duration::from_millis(state.cfg.limits.shutdown_prestop_ms)).await;
        } => tracing::warn!("drain timeout: closing with requests in flight"),
    }
    // Economy: move this node's Raft voter seats to other regions first
    // (only when other nodes share its shards).
    let handoff = Duration::from_secs(state.cfg.economy.handoff_timeout_s);
    crate::replica::hand_off_voters(&state, handoff).await;
    // Game servers: no new allocations; running matches finish or hit the deadline.
    {
        use meridian_dgs::orchestrator::Orchestrator;
        let deadline = Duration::from_secs(state.cfg.dgs.drain_deadline_s);
        state.games.orchestrator().drain(deadline);
        if tokio::time::timeout(
            deadline + Duration::from_secs(2),
            state.games.orchestrator().drained(),
        )
        .await
        .is_err()
        {
            tracing::warn!("game servers did not drain in time");
        }
        // Let the last session reports be applied.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mesh = state.mesh.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mesh) = mesh {
        mesh.shutdown().await;
        tracing::info!("left the mesh");
    }
    state.economy.shutdown().await;
    state.storage.flush_blocking()?;
    tracing::info!("storage flushed; bye");
    Ok(())
}
