//! Load bots: `meridian bots --target URL --players N --scenario NAME --duration D`.
//!
//! Two load models:
//! - closed loop (default): `concurrency` workers each issue the next request when the previous
//!   one finished;
//! - open loop (`rate`): requests start on a fixed schedule whatever the answers, and latency is
//!   measured from the *intended* start, so a stalled server shows up in the tail instead of
//!   being hidden by coordinated omission.
//!
//! Safety: only loopback targets unless `allow_remote`; duration, rate, players and in-flight
//! requests are bounded, so a run always ends by itself.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DURATION_MAX: Duration = Duration::from_secs(3600);
pub const PLAYERS_MAX: usize = 1_000_000;
pub const RATE_MAX_PER_S: u64 = 1_000_000;
pub const CONCURRENCY_MAX: usize = 10_000;
/// Open-loop requests in flight at once; beyond it, a late request counts as an error.
pub const OPEN_LOOP_INFLIGHT_MAX: usize = 20_000;
/// Players set up at once before the run.
const SETUP_CONCURRENCY: usize = 64;

pub const SCENARIOS: &[&str] = &[
    "login-storm",
    "profile-read",
    "telemetry",
    "economy",
    "leaderboard",
    "full-session",
    "ws-idle",
    "replication-lag",
];
/// In the replication-lag scenario, how long a bot polls the other region
/// before it records a timeout.
pub const REPLICATION_WAIT_MAX: Duration = Duration::from_secs(10);
/// ...and how often it polls.
pub const REPLICATION_POLL: Duration = Duration::from_millis(5);
/// Open file descriptors this process asks for (idle-connection runs need
/// one per connection); capped by the kernel's `fs.nr_open`.
pub const FD_LIMIT_WANTED: u64 = 1_048_576;
/// Idle WebSockets opened per source address (127.0.0.x), under the
/// ephemeral port range of one address.
pub const WS_PER_SOURCE_IP: usize = 20_000;
/// In the full-session scenario, how long a bot waits to be matched.
pub const MATCH_WAIT_MAX: Duration = Duration::from_secs(60);
/// In the leaderboard scenario, one step in this many is a server submit; the rest are reads.
pub const LEADERBOARD_SUBMIT_EVERY: u64 = 10;
/// Coins each economy bot is granted at setup.
pub const ECONOMY_SETUP_COINS: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct BotConfig {
    pub targets: Vec<String>,
    pub players: usize,
    pub scenario: String,
    pub duration: Duration,
    /// Open loop at this many requests per second; `None` = closed loop.
    pub rate: Option<u64>,
    pub concurrency: usize,
    pub allow_remote: bool,
    pub progress: bool,
    /// Bearer token with the `server` role (grants for the economy scenario).
    pub server_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("{0}")]
    Config(String),
    #[error("setup failed: {0}")]
    Setup(String),
}

/// Parse `10s`, `2m`, `500ms`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    })
}

fn is_loopback(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or("");
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

impl BotConfig {
    pub fn validate(&self) -> Result<(), BotError> {
        let e = |m: String| Err(BotError::Config(m));
        if self.targets.is_empty() {
            return e("--target: give at least one URL".into());
        }
        for t in &self.targets {
            if !t.starts_with("http://") {
                return e(format!("--target: {t} must be an http:// URL"));
            }
            if !self.allow_remote && !is_loopback(t) {
                return e(format!(
                    "--target: {t} is not loopback; pass --allow-remote to load a remote node"
                ));
            }
        }
        if !SCENARIOS.contains(&self.scenario.as_str()) {
            return e(format!(
                "--scenario: unknown {:?} (known: {})",
                self.scenario,
                SCENARIOS.join(", ")
            ));
        }
        if self.players == 0 || self.players > PLAYERS_MAX {
            return e(format!("--players: must be 1..={PLAYERS_MAX}"));
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return e(format!(
                "--duration: must be more than 0 and at most {}s",
                DURATION_MAX.as_secs()
            ));
        }
        if let Some(r) = self.rate {
            if r == 0 || r > RATE_MAX_PER_S {
                return e(format!("--rate: must be 1..={RATE_MAX_PER_S}"));
            }
        }
        if matches!(
            self.scenario.as_str(),
            "economy" | "leaderboard" | "full-session"
        ) && self.server_token.is_none()
        {
            return e(format!(
                "--server-token: the {} scenario needs a server-role token",
                self.scenario
            ));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return e(format!("--concurrency: must be 1..={CONCURRENCY_MAX}"));
        }
        Ok(())
    }
}

/// Per-operation results.
#[derive(Default)]
struct Recorder {
    ops: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Recorder {
    fn ok(&self, op: &'static str, latency: Duration) {
        let us = latency.as_micros().clamp(1, 60_000_000) as u64;
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let h = ops.entry(op).or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
        });
        let _ = h.record(us);
        self.done.fetch_add(1, Ordering::Relaxed);
    }
    fn err(&self, op: &'static str, code: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(format!("{op}: {code}"))
            .or_default() += 1;
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One bot identity.
#[derive(Clone)]
struct Player {
    target: usize,
    username: String,
    password: String,
    player_id: String,
    token: String,
}

/// The final report: per-operation latency and errors by code.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub mode: String,
    pub duration_s: f64,
    pub players: usize,
    pub operations: Vec<OpReport>,
    pub errors: BTreeMap<String, u64>,
    pub total_ok: u64,
    pub total_errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OpReport {
    pub op: String,
    pub count: u64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} ({}), {} players, {:.1}s\n{:<16} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            self.scenario, self.mode, self.players, self.duration_s, "operation", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
        );
        for o in &self.operations {
            out.push_str(&format!(
                "{:<16} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                o.op, o.count, o.ops_per_s, o.p50_ms, o.p90_ms, o.p99_ms, o.p999_ms, o.max_ms
            ));
        }
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            out.push_str("errors by code:\n");
            for (k, v) in &self.errors {
                out.push_str(&format!("  {k}: {v}\n"));
            }
        }
        out
    }
}

struct Ctx {
    /// When the measured run ends (set when it starts).
    run_end: std::sync::OnceLock<Instant>,
    cfg: BotConfig,
    http: reqwest::Client,
    rec: Recorder,
    players: Vec<Player>,
    seq: AtomicU64,
    run_id: String,
}

async fn post(
    ctx: &Ctx,
    target: usize,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    let mut req = ctx
        .http
        .post(format!("{}{}", ctx.cfg.targets[target], path))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    read(req.send().await).await
}

async fn read(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Value, String> {
    let resp = resp.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_string()
        } else {
            "connect".to_string()
        }
    })?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(format!(
            "{status} {}",
            body["error"]["code"].as_str().unwrap_or("?")
        ))
    }
}

async fn setup_player(ctx: &Ctx, i: usize) -> Result<Player, String> {
    let target = i % ctx.cfg.targets.len();
    let username = format!("b{}{i}", ctx.run_id);
    let password = format!("bot-password-{i}");
    let body = if ctx.cfg.scenario == "login-storm" {
        return Ok(Player {
            target,
            username,
            password,
            player_id: String::new(),
            token: String::new(),
        });
    } else {
        json!({"device_id": format!("bot-{}-{i}", ctx.run_id)})
    };
    let r = post(ctx, target, "/auth/device", None, &body).await?;
    if ctx.cfg.scenario == "leaderboard" {
        // Every bot has a score, so around-me always has a neighbourhood.
        let body = json!({"player_id": r["player_id"], "score": (i as u64 * 7919) % 1_000_000});
        post(
            ctx,
            target,
            "/leaderboards/arena/scores",
            ctx.cfg.server_token.as_deref(),
            &body,
        )
        .await?;
    }
    if matches!(ctx.cfg.scenario.as_str(), "economy" | "full-session") {
        let grant = json!({
            "player_id": r["player_id"], "currency": "coins", "amount": ECONOMY_SETUP_COINS,
            "reason": "bots", "idempotency_key": format!("bots-{}-{i}", ctx.run_id)
        });
        post(
            ctx,
            target,
            "/economy/grant",
            ctx.cfg.server_token.as_deref(),
            &grant,
        )
        .await?;
    }
    Ok(Player {
        target,
        username,
        password,
        player_id: r["player_id"].as_str().unwrap_or_default().to_string(),
        token: r["access_token"].as_str().unwrap_or_default().to_string(),
    })
}

/// One scenario step for `player`; records its operations.
async fn step(ctx: &Ctx, player: &Player, intended: Instant) {
    let n = ctx.seq.fetch_add(1, Ordering::Relaxed);
    match ctx.cfg.scenario.as_str() {
        "login-storm" => {
            // Each player registers once, then logs in.
            let name = format!("{}x{n}", player.username);
            let res = post(
                ctx,
                player.target,
                "/auth/register",
                None,
                &json!({"username": name, "password": player.password}),
            )
            .await;
            match res {
                Ok(_) => ctx.rec.ok("register", intended.elapsed()),
                Err(code) => return ctx.rec.err("register", code),
            }
            let t = Instant::now();
            match post(
                ctx,
                player.target,
                "/auth/login",
                None,
                &json!({"username": name, "password": player.password}),
            )
            .await
            {
                Ok(_) => ctx.rec.ok("login", t.elapsed()),
                Err(code) => ctx.rec.err("login", code),
            }
        }
        "profile-read" => {
            let other = &ctx.players[(n as usize).wrapping_mul(7919) % ctx.players.len()];
            let url = format!(
                "{}/player/{}/profile",
                ctx.cfg.targets[player.target], other.player_id
            );
            match read(ctx.http.get(url).bearer_auth(&player.token).send().await).await {
                Ok(_) => ctx.rec.ok("profile_read", intended.elapsed()),
                Err(code) => ctx.rec.err("profile_read", code),
            }
        }
        "telemetry" => {
            let now = chrono::Utc::now().timestamp_millis();
            let events: Vec<Value> = (0..20)
                .map(|k| json!({"event_id": format!("{}-{n}-{k}", ctx.run_id), "event_type": "bot.tick", "payload": {"k": k}, "timestamp": now}))
                .collect();
            match post(
                ctx,
                player.target,
                "/game/telemetry",
                Some(&player.token),
                &json!({"events": events}),
            )
            .await
            {
                Ok(_) => ctx.rec.ok("telemetry_batch20", intended.elapsed()),
                Err(code) => ctx.rec.err("telemetry_batch20", code),
            }
        }
        "full-session" => full_session(ctx, player, n).await,
        "replication-lag" => replication_lag(ctx, player, n).await,
        "economy" => {
            let body = json!({"item_id": "potion", "quantity": 1, "currency": "coins", "idempotency_key": format!("{}-{n}", ctx.run_id)});
            let receipt = match post(
                ctx,
                player.target,
                "/store/purchase",
                Some(&player.token),
                &body,
            )
            .await
            {
                Ok(r) => {
                    ctx.rec.ok("purchase", intended.elapsed());
                    r
                }
                Err(code) => return ctx.rec.err("purchase", code),
            };
            // Use what was bought, like a player, so stacks stay under their limit.
            let Some(stack) = receipt["items"]
                .as_array()
                .and_then(|items| items.first())
                .and_then(|i| i["id"].as_str())
            else {
                return ctx.rec.err("consume", "no_item_in_receipt".into());
            };
            let t = Instant::now();
            let body = json!({"quantity": 1, "idempotency_key": format!("{}-{n}-use", ctx.run_id)});
            match post(
                ctx,
                player.target,
                &format!("/inventory/me/items/{stack}/consume"),
                Some(&player.token),
                &body,
            )
            .await
            {
                Ok(_) => ctx.rec.ok("consume", t.elapsed()),
                Err(code) => ctx.rec.err("consume", code),
            }
        }
        "leaderboard" => {
            let base = &ctx.cfg.targets[player.target];
            if n.is_multiple_of(LEADERBOARD_SUBMIT_EVERY) {
                let body = json!({"player_id": player.player_id, "score": (n * 7919) % 1_000_000});
                match post(
                    ctx,
                    player.target,
                    "/leaderboards/arena/scores",
                    ctx.cfg.server_token.as_deref(),
                    &body,
                )
                .await
                {
                    Ok(_) => ctx.rec.ok("submit", intended.elapsed()),
                    Err(code) => ctx.rec.err("submit", code),
                }
            } else if n.is_multiple_of(2) {
                let url = format!("{base}/leaderboards/arena?limit=100");
                match read(ctx.http.get(url).bearer_auth(&player.token).send().await).await {
                    Ok(_) => ctx.rec.ok("top100", intended.elapsed()),
                    Err(code) => ctx.rec.err("top100", code),
                }
            } else {
                let url = format!("{base}/leaderboards/arena?around={}&n=5", player.player_id);
                match read(ctx.http.get(url).bearer_auth(&player.token).send().await).await {
                    Ok(_) => ctx.rec.ok("around_me", intended.elapsed()),
                    Err(code) => ctx.rec.err("around_me", code),
                }
            }
        }
        _ => ctx.rec.err("unknown", "scenario".into()),
    }
}

/// Write in the player's region, poll the next region until the write is
/// visible there: `score_lag` and `profile_lag` are the time from the
/// write's acknowledgement to visibility in the other region.
async fn replication_lag(ctx: &Ctx, player: &Player, n: u64) {
    let other = (player.target + 1) % ctx.cfg.targets.len();
    let base = &ctx.cfg.targets[other];
    if n.is_multiple_of(2) {
        let score = 1 + (n as i64 % 1_000_000);
        let body = json!({"player_id": player.player_id, "score": score});
        // `arena` keeps the best score; n grows, so every write raises it.
        match post(
            ctx,
            player.target,
            "/leaderboards/arena/scores",
            ctx.cfg.server_token.as_deref(),
            &body,
        )
        .await
        {
            Ok(_) => {}
            Err(code) => return ctx.rec.err("score_write", code),
        }
        let acked = Instant::now();
        let url = format!("{base}/leaderboards/arena?around={}&n=0", player.player_id);
        while acked.elapsed() < REPLICATION_WAIT_MAX {
            if let Ok(v) = read(ctx.http.get(&url).send().await).await {
                let seen = v["entries"].as_array().is_some_and(|e| {
                    e.iter().any(|x| {
                        x["player_id"] == player.player_id.as_str()
                            && x["score"].as_i64().is_some_and(|s| s >= score)
                    })
                });
                if seen {
                    return ctx.rec.ok("score_lag", acked.elapsed());
                }
            }
            tokio::time::sleep(REPLICATION_POLL).await;
        }
        ctx.rec.err("score_lag", "timeout".into());
    } else {
        let name = format!("r{n}");
        match ctx
            .http
            .patch(format!(
                "{}/player/me/profile",
                ctx.cfg.targets[player.target]
            ))
            .bearer_auth(&player.token)
            .json(&json!({"display_name": name}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                return ctx
                    .rec
                    .err("profile_write", r.status().as_u16().to_string())
            }
            Err(_) => return ctx.rec.err("profile_write", "connect".into()),
        }
        let acked = Instant::now();
        let url = format!("{base}/player/{}/profile", player.player_id);
        while acked.elapsed() < REPLICATION_WAIT_MAX {
            if let Ok(v) = read(ctx.http.get(&url).bearer_auth(&player.token).send().await).await {
                if v["display_name"] == name.as_str() {
                    return ctx.rec.ok("profile_lag", acked.elapsed());
                }
            }
            tokio::time::sleep(REPLICATION_POLL).await;
        }
        ctx.rec.err("profile_lag", "timeout".into());
    }
}

/// Login is done at setup; here: queue for a duel, wait for the match, play
/// it over UDP with the session token, then buy an item.
async fn full_session(ctx: &Ctx, player: &Player, n: u64) {
    let base = &ctx.cfg.targets[player.target];
    let region = match read(ctx.http.get(format!("{base}/regions")).send().await).await {
        Ok(v) => v
            .as_array()
            .and_then(|r| r.iter().find(|x| x["status"] == "self"))
            .and_then(|x| x["region"].as_str())
            .unwrap_or("")
            .to_string(),
        Err(code) => return ctx.rec.err("regions", code),
    };
    let t = Instant::now();
    let body = json!({"game_mode": "duel", "latencies": {region: 20.0}});
    let ticket = match post(
        ctx,
        player.target,
        "/matchmaking/join",
        Some(&player.token),
        &body,
    )
    .await
    {
        Ok(v) => v["ticket_id"].as_str().unwrap_or_default().to_string(),
        Err(code) => return ctx.rec.err("join", code),
    };
    let m = loop {
        let url = format!("{base}/matchmaking/status?ticket_id={ticket}");
        match read(ctx.http.get(url).bearer_auth(&player.token).send().await).await {
            Ok(v) if v["status"] == "matched" => break v["match"].clone(),
            Ok(v) if v["status"] == "searching" => {}
            Ok(v) => return ctx.rec.err("match_wait", format!("ticket {}", v["status"])),
            Err(code) => return ctx.rec.err("match_wait", code),
        }
        if ctx.run_end.get().is_some_and(|end| Instant::now() > *end) {
            // The run is over and no partner will come: withdraw, not an error.
            let url = format!("{base}/matchmaking/tickets/{ticket}");
            let _ = ctx.http.delete(url).bearer_auth(&player.token).send().await;
            return;
        }
        if t.elapsed() > MATCH_WAIT_MAX {
            return ctx.rec.err("match_wait", "timeout".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ctx.rec.ok("match_wait", t.elapsed());
    let addr = format!("{}:{}", m["host"].as_str().unwrap_or(""), m["port"]);
    let (Ok(addr), Ok(token)) = (
        addr.parse::<std::net::SocketAddr>(),
        meridian_dgs::token::SessionToken::from_base64(m["token"].as_str().unwrap_or("")),
    ) else {
        return ctx.rec.err("play", "bad_match_info".into());
    };
    let t = Instant::now();
    match meridian_dgs::bot::run_bot(addr, &token, &meridian_dgs::bot::BotConfig::default()).await {
        Ok(o) if matches!(o.end, meridian_dgs::bot::BotEnd::Ended { .. }) => {
            ctx.rec.ok("play", t.elapsed())
        }
        Ok(o) => return ctx.rec.err("play", format!("{:?}", o.end)),
        Err(e) => return ctx.rec.err("play", e.to_string()),
    }
    let t = Instant::now();
    let body = json!({"item_id": "potion", "quantity": 1, "currency": "coins", "idempotency_key": format!("{}-{n}-fs", ctx.run_id)});
    match post(
        ctx,
        player.target,
        "/store/purchase",
        Some(&player.token),
        &body,
    )
    .await
    {
        Ok(_) => ctx.rec.ok("purchase", t.elapsed()),
        Err(code) => ctx.rec.err("purchase", code),
    }
}

/// Run the bots and return the report.
pub async fn run(cfg: BotConfig) -> Result<Report, BotError> {
    cfg.validate()?;
    raise_fd_limit();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(cfg.concurrency.max(64))
        .build()
        .map_err(|e| BotError::Config(e.to_string()))?;
    // Unique per process: several bots processes started in the same
    // millisecond must not share device ids or idempotency keys.
    let run_id = format!(
        "{:x}{:x}",
        chrono::Utc::now().timestamp_millis() % 0xffff_ffff,
        std::process::id()
    );
    let mut ctx = Ctx {
        run_end: std::sync::OnceLock::new(),
        cfg: cfg.clone(),
        http,
        rec: Recorder::default(),
        players: Vec::new(),
        seq: AtomicU64::new(0),
        run_id,
    };

    // Setup: create the players (device login: no password hashing to wait for).
    let sem = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let shared = Arc::new(ctx);
    let mut handles = Vec::with_capacity(cfg.players);
    for i in 0..cfg.players {
        let (ctx, sem) = (shared.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            setup_player(&ctx, i).await
        }));
    }
    let mut players = Vec::with_capacity(cfg.players);
    for h in handles {
        match h.await {
            Ok(Ok(p)) => players.push(p),
            Ok(Err(e)) => return Err(BotError::Setup(e)),
            Err(e) => return Err(BotError::Setup(e.to_string())),
        }
    }
    ctx = Arc::try_unwrap(shared).map_err(|_| BotError::Setup("setup still running".into()))?;
    ctx.players = players;
    let ctx = Arc::new(ctx);

    let start = Instant::now();
    let end = start + cfg.duration;
    let _ = ctx.run_end.set(end);
    let progress = cfg.progress.then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = start.elapsed().as_secs_f64();
                let done = ctx.rec.done.load(Ordering::Relaxed);
                let failed = ctx.rec.failed.load(Ordering::Relaxed);
                eprint!(
                    "\r[{:>5.1}s / {}s] {done} ok ({:.0}/s), {failed} errors   ",
                    s,
                    cfg.duration.as_secs(),
                    done as f64 / s
                );
            }
        })
    });

    if cfg.scenario == "ws-idle" {
        ws_idle(&ctx, end).await;
    } else {
        run_steps(&ctx, &cfg, start, end).await;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    report(&ctx, &cfg, start)
}

/// Raise this process's open-file limit (root may raise the hard limit).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = libc::rlimit {
            rlim_cur: FD_LIMIT_WANTED,
            rlim_max: FD_LIMIT_WANTED.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return FD_LIMIT_WANTED;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            lim.rlim_max
        } else {
            lim.rlim_cur
        }
    }
}

/// Open one WebSocket per player, keep them all idle until `end`.
async fn ws_idle(ctx: &Arc<Ctx>, end: Instant) {
    use futures::StreamExt;
    let sem = Arc::new(tokio::sync::Semaphore::new(ctx.cfg.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, player) in ctx.players.iter().cloned().enumerate() {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.spawn(async move {
            let opened = {
                let _permit = sem.acquire().await;
                if Instant::now() >= end {
                    return;
                }
                let t = Instant::now();
                match open_ws(&ctx.cfg.targets[player.target], &player.token, i).await {
                    Ok(ws) => {
                        ctx.rec.ok("ws_connect", t.elapsed());
                        ws
                    }
                    Err(code) => return ctx.rec.err("ws_connect", code),
                }
            };
            // Idle: read whatever the node pushes until the run ends.
            let (_sink, mut stream) = opened.split();
            let _ = tokio::time::timeout(end.saturating_duration_since(Instant::now()), async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connect from 127.0.0.(1 + i / WS_PER_SOURCE_IP) so one client address's
/// ephemeral ports do not cap the count.
async fn open_ws(base: &str, token: &str, i: usize) -> Result<Ws, String> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let addr: std::net::SocketAddr = tokio::net::lookup_host(hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or("resolve")?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if addr.ip().is_loopback() {
        let k = 1 + (i / WS_PER_SOURCE_IP) % 250;
        let _ = socket.bind(std::net::SocketAddr::from(([127, 0, 0, k as u8], 0)));
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {e}"))?;
    let url = format!("ws://{hostport}/ws?access_token={token}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("handshake {e}"))?;
    Ok(ws)
}

async fn run_steps(ctx: &Arc<Ctx>, cfg: &BotConfig, start: Instant, end: Instant) {
    match cfg.rate {
        None => {
            let mut workers = Vec::new();
            for w in 0..cfg.concurrency {
                let ctx = ctx.clone();
                workers.push(tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < end {
                        let player = ctx.players[i % ctx.players.len()].clone();
                        step(&ctx, &player, Instant::now()).await;
                        i += ctx.cfg.concurrency;
                    }
                }));
            }
            for w in workers {
                let _ = w.await;
            }
        }
        Some(rate) => {
            let inflight = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_INFLIGHT_MAX));
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut tasks = tokio::task::JoinSet::new();
            let mut i: u64 = 0;
            loop {
                let intended = start + interval.mul_f64(i as f64);
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                let player = ctx.players[i as usize % ctx.players.len()].clone();
                match inflight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let ctx = ctx.clone();
                        tasks.spawn(async move {
                            step(&ctx, &player, intended).await;
                            drop(permit);
                        });
                    }
                    Err(_) => ctx.rec.err("schedule", "inflight_limit".into()),
                }
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
        }
    }
}

fn report(ctx: &Ctx, cfg: &BotConfig, start: Instant) -> Result<Report, BotError> {
    let elapsed = start.elapsed().as_secs_f64();
    let ops = ctx.rec.ops.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |v: u64| v as f64 / 1000.0;
    let operations = ops
        .iter()
        .map(|(op, h)| OpReport {
            op: op.to_string(),
            count: h.len(),
            ops_per_s: h.len() as f64 / elapsed,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
        .collect();
    let errors = ctx
        .rec
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        scenario: cfg.scenario.clone(),
        mode: match cfg.rate {
            Some(r) => format!("open loop {r}/s"),
            None => format!("closed loop x{}", cfg.concurrency),
        },
        duration_s: elapsed,
        players: cfg.players,
        operations,
        total_ok: ctx.rec.done.load(Ordering::Relaxed),
        total_errors: ctx.rec.failed.load(Ordering::Relaxed),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BotConfig {
        BotConfig {
            targets: vec!["http://127.0.0.1:7700".into()],
            players: 10,
            scenario: "profile-read".into(),
            duration: Duration::from_secs(1),
            rate: None,
            concurrency: 4,
            allow_remote: false,
            progress: false,
            server_token: None,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn refuses_remote_and_out_of_bounds() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.targets = vec!["http://10.0.0.1:7700".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--allow-remote"));
        c.allow_remote = true;
        assert!(c.validate().is_ok());
        let mut c = cfg();
        c.duration = DURATION_MAX + Duration::from_secs(1);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.players = PLAYERS_MAX + 1;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.scenario = "nope".into();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.rate = Some(0);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.scenario = "economy".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--server-token"));
    }
}
