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

/// On a takeover, how long the old process waits for its QUIC connections
/// to finish closing before it exits (the new one binds the same port).
const TAKEOVER_QUIC_IDLE_WAIT: Duration = Duration::from_millis(100);

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

/// Open the store; while another process holds its lock, retry for at
/// most `lock_wait` (a takeover: the old process is exiting).
async fn open_storage(store_dir: &std::path::Path, lock_wait: Duration) -> anyhow::Result<Storage> {
    let deadline = std::time::Instant::now() + lock_wait;
    loop {
        match Storage::open_sled(store_dir) {
            Ok(s) => return Ok(s),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "the store {} is in use by another process (a node already runs on this \
                         data dir; to replace it in place use `meridian up --takeover`): {e}",
                        store_dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Build the shared state: open storage and every service.
pub async fn build_state(cfg: Config) -> anyhow::Result<Arc<AppState>> {
    build_state_with(cfg, Duration::ZERO).await
}

/// [`build_state`], waiting up to `lock_wait` for the store's lock.
pub async fn build_state_with(cfg: Config, lock_wait: Duration) -> anyhow::Result<Arc<AppState>> {
    let (region, catalog) = resolve_region(&cfg)?;
    let store_dir = cfg.data_dir.join("store");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("creating data dir {}", store_dir.display()))?;
    let storage = open_storage(&store_dir, lock_wait).await?;
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
            // The mesh (its Raft transport) starts after the economy opens.
            open_waits_for_peers: false,
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
        closing_connections: false.into(),
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

/// How `run`'s serving phase ended.
enum Stop {
    /// SIGTERM/SIGINT: drain and hand off voter seats (leaving for good).
    Signal,
    /// A takeover: the listener went to the new process; leadership and
    /// game servers were already handed off, voter seats stay.
    Takeover,
}

/// Run a node until SIGTERM/SIGINT or a takeover. With `takeover`, first
/// take the HTTP listener over from the node running on this data dir
/// (`meridian up --takeover`).
pub async fn run(cfg: Config, takeover: bool) -> anyhow::Result<()> {
    let mut lock_wait = Duration::ZERO;
    let inherited = if takeover {
        // Check what can be checked before the old node gives anything up.
        let (region, _) = resolve_region(&cfg)?;
        let http = cfg.http_addr.unwrap_or_else(|| region.http_addr());
        let (dir, release) = (cfg.data_dir.clone(), cfg.release().to_string());
        let wait = Duration::from_secs(cfg.takeover.wait_s);
        let inh = tokio::task::spawn_blocking(move || {
            crate::takeover::request(&dir, http, &release, wait)
        })
        .await
        .context("takeover task")??;
        lock_wait = Duration::from_millis(cfg.takeover.release_wait_ms);
        crate::takeover::wait_for_exit(inh.old_pid, lock_wait).await?;
        tracing::info!(
            old_pid = inh.old_pid,
            waited_ms = inh.started.elapsed().as_millis() as u64,
            "takeover: the old node exited; starting"
        );
        Some(inh)
    } else {
        None
    };
    // Bind first (a taken port fails before anything is opened); a takeover
    // inherits the socket instead.
    let (keep, took_over) = match inherited {
        Some(inh) => (
            inh.listener,
            Some((inh.old_pid, inh.old_release, inh.started)),
        ),
        None => {
            let (region, _) = resolve_region(&cfg)?;
            let http_addr = cfg.http_addr.unwrap_or_else(|| region.http_addr());
            let l = tokio::net::TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("binding HTTP {http_addr}"))?;
            (l.into_std()?, None)
        }
    };
    let state = build_state_with(cfg, lock_wait).await?;
    keep.set_nonblocking(true)?;
    let local = keep.local_addr()?;
    // Axum gets a duplicate: when it stops accepting and drops its copy, the
    // socket stays listening through `keep` (connections wait in the backlog).
    let (pause_tx, pause_rx) = tokio::sync::watch::channel(false);
    let listener = crate::takeover::PausableListener {
        inner: tokio::net::TcpListener::from_std(keep.try_clone()?)?,
        paused: pause_rx,
    };
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut takeovers = if state.cfg.takeover.enabled {
        Some(crate::takeover::listen(&state, local, busy.clone())?)
    } else {
        None
    };

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
    if took_over.is_some() {
        let within = Duration::from_millis(state.cfg.takeover.mesh_join_wait_ms);
        let (waited, missing) = crate::takeover::wait_for_peers(&state, within).await;
        if missing.is_empty() {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "takeover: shard peers alive in the mesh, every shard has a leader"
            );
        } else {
            tracing::warn!(
                ?missing,
                "takeover: shard peers or leaders not known yet; serving anyway"
            );
        }
    }
    state.ready.store(true, Ordering::Release);
    if let Some((old_pid, old_release, started)) = &took_over {
        tracing::info!(
            old_pid,
            old_release = %old_release,
            release = %state.release(),
            takeover_ms = started.elapsed().as_millis() as u64,
            "takeover complete: serving on the inherited listener"
        );
    }
    tracing::info!(region = %state.region.name, http = %local, release = %state.release(), data_dir = %state.cfg.data_dir.display(), "meridian node listening on http://{local}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_timeout = Duration::from_millis(state.cfg.limits.shutdown_drain_timeout_ms);
    // Decides how serving ends: a signal (pre-stop, then close) or a takeover
    // (hand-off while serving). A takeover that fails leaves this node serving.
    let controller = {
        let state = state.clone();
        let busy = busy.clone();
        async move {
            let mut signal = std::pin::pin!(shutdown_signal());
            let stop = loop {
                let next = async {
                    match takeovers.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut signal => break Stop::Signal,
                    Some(p) = next => {
                        busy.store(true, Ordering::Release);
                        match crate::takeover::hand_off(&state, p, &keep, &pause_tx).await {
                            Ok(()) => break Stop::Takeover,
                            Err(_) => busy.store(false, Ordering::Release),
                        }
                    }
                }
            };
            busy.store(true, Ordering::Release);
            // From here the socket closes with the server's accept loop
            // (on a signal, new connections are refused; on a takeover the
            // new process holds its own copy).
            drop(keep);
            if let Stop::Signal = stop {
                state.ready.store(false, Ordering::Release);
                // Pre-stop: still serving, but not ready, so traffic moves away first.
                let prestop = Duration::from_millis(state.cfg.limits.shutdown_prestop_ms);
                if !prestop.is_zero() {
                    tracing::info!(
                        prestop_ms = prestop.as_millis() as u64,
                        "not ready; serving until the listener closes"
                    );
                    tokio::time::sleep(prestop).await;
                }
            }
            let _ = stop_tx.send(());
            stop
        }
    };
    let server = axum::serve(
        axum::serve::ListenerExt::tap_io(listener, |_| {}),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    let mut controller = std::pin::pin!(controller);
    let stop = tokio::select! {
        stop = &mut controller => stop,
        res = &mut server => { res?; Stop::Signal }
    };
    // Finish in-flight requests (the server stopped accepting), bounded.
    if tokio::time::timeout(drain_timeout, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing with requests in flight");
    }
    let _ = std::fs::remove_file(crate::takeover::socket_path(&state.cfg.data_dir));
    if let Stop::Signal = stop {
        // Economy: move this node's Raft voter seats to other regions first
        // (only when other nodes share its shards).
        let handoff = Duration::from_secs(state.cfg.economy.handoff_timeout_s);
        crate::replica::hand_off_voters(&state, handoff).await;
        // Game servers: no new allocations; running matches finish or hit the deadline.
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
        match stop {
            Stop::Signal => mesh.shutdown().await,
            // The new process is waiting for this one to exit.
            Stop::Takeover => mesh.shutdown_within(TAKEOVER_QUIC_IDLE_WAIT).await,
        }
        tracing::info!("left the mesh");
    }
    state.economy.shutdown().await;
    state.storage.flush_blocking()?;
    tracing::info!("storage flushed; bye");
    Ok(())
}
