//! The reference external game server for the Process backend: what a
//! Unity or Unreal headless build does, in ~250 lines. The node runs it as
//! `meridian game-server [--duration-s S] [--tick-rate-hz N]
//! [--crash-in-mode MODE --crash-after-ms MS]`; it reads the environment the
//! [`crate::process`] backend passes, binds `MERIDIAN_GAME_PORT` (UDP, the
//! same wire protocol as the embedded game port, so [`crate::bot`] plays
//! it), runs the arena game, and talks to the node's local SDK endpoint:
//! `ready` at start, `health` every 500 ms, `player/connect` for each
//! `Connect` (the node checks the session token; this process never holds
//! the token secret), `player/disconnect`, `result` at the end, then exits.
//!
//! `--crash-in-mode` makes the process abort (SIGABRT) that long after its
//! match started, for crash tests.
//!
//! Not for: production games; the HTTP client is a minimal HTTP/1.1
//! `Connection: close` client for the loopback SDK only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::arena::{ArenaConfig, ArenaGame};
use crate::game::{GameMode, MatchSpec};
use crate::protocol::{ClientMsg, ServerMsg, PACKET_BYTES_MAX};
use crate::token::SessionToken;
use crate::{PlayerId, SessionId};

/// Largest SDK response read, in bytes.
pub const SDK_RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// `ready` refused as unknown (401) is retried this many times, 50 ms apart.
pub const READY_RETRIES_MAX: u32 = 40;
/// Players of one match (the node never allocates more; see [`crate::game`]).
const ROSTER_MAX: usize = crate::game::PLAYERS_PER_MATCH_MAX;

/// Options of the reference server (command-line).
#[derive(Debug, Clone)]
pub struct RefServerOptions {
    pub arena: ArenaConfig,
    /// Wait this long for the whole roster, then start with who is there
    /// (or exit without a result when nobody came).
    pub join_timeout_ms: u64,
    /// Abort the process this long after the match started, in this mode.
    pub crash_in_mode: Option<String>,
    pub crash_after_ms: u64,
}

impl Default for RefServerOptions {
    fn default() -> Self {
        Self {
            arena: ArenaConfig::default(),
            join_timeout_ms: 10_000,
            crash_in_mode: None,
            crash_after_ms: 500,
        }
    }
}

impl RefServerOptions {
    /// Parses `--duration-s`, `--tick-rate-hz`, `--join-timeout-ms`,
    /// `--crash-in-mode`, `--crash-after-ms`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .clone();
            let num = |v: &str| -> Result<f64, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| format!("{flag}: {v:?} is not a positive number"))
            };
            match flag.as_str() {
                "--duration-s" => o.arena.duration_s = num(&value)? as f32,
                "--tick-rate-hz" => o.arena.tick_rate_hz = num(&value)?.min(1000.0) as u32,
                "--join-timeout-ms" => o.join_timeout_ms = num(&value)? as u64,
                "--crash-in-mode" => o.crash_in_mode = Some(value),
                "--crash-after-ms" => o.crash_after_ms = num(&value)? as u64,
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}

/// What the Process backend passes in the environment.
#[derive(Debug, Clone)]
pub struct RefServerEnv {
    pub session_id: SessionId,
    pub game_port: u16,
    /// `host:port` of the SDK endpoint.
    pub sdk_addr: SocketAddr,
    pub sdk_token: String,
    pub spec: MatchSpec,
}

impl RefServerEnv {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The same from any source of `MERIDIAN_*` values (e.g. an Agones
    /// game server's `meridian.dev/*` annotations).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |k: &str| get(k).ok_or_else(|| format!("{k} is not set"));
        let session_id = var("MERIDIAN_SESSION_ID")?
            .parse()
            .map_err(|_| "MERIDIAN_SESSION_ID is not a UUID".to_string())?;
        let game_port = var("MERIDIAN_GAME_PORT")?
            .parse()
            .map_err(|_| "MERIDIAN_GAME_PORT is not a port".to_string())?;
        let url = var("MERIDIAN_SDK_URL")?;
        let sdk_addr = url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| "MERIDIAN_SDK_URL must be http://ip:port".to_string())?;
        let mut teams: Vec<Vec<PlayerId>> = Vec::new();
        for (i, entry) in var("MERIDIAN_PLAYERS")?.split(',').enumerate() {
            if i >= ROSTER_MAX {
                return Err(format!("MERIDIAN_PLAYERS: more than {ROSTER_MAX} players"));
            }
            let (p, t) = entry
                .split_once(':')
                .ok_or_else(|| format!("MERIDIAN_PLAYERS: bad entry {entry:?}"))?;
            let p: PlayerId = p
                .parse()
                .map_err(|_| format!("MERIDIAN_PLAYERS: bad player {p:?}"))?;
            let t: usize = t
                .parse()
                .ok()
                .filter(|t| *t < crate::game::TEAMS_PER_MATCH_MAX)
                .ok_or_else(|| format!("MERIDIAN_PLAYERS: bad team {t:?}"))?;
            if teams.len() <= t {
                teams.resize(t + 1, Vec::new());
            }
            teams[t].push(p);
        }
        let spec = MatchSpec {
            mode: var("MERIDIAN_MODE")?,
            teams,
        };
        spec.validate()
            .map_err(|e| format!("MERIDIAN_PLAYERS: {e}"))?;
        Ok(Self {
            session_id,
            game_port,
            sdk_addr,
            sdk_token: var("MERIDIAN_SDK_TOKEN")?,
            spec,
        })
    }
}

/// POSTs `body` to the SDK; returns the status and the response body.
pub async fn sdk_post(
    addr: SocketAddr,
    credential: &str,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<(u16, serde_json::Value)> {
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {credential}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    (&mut s)
        .take(SDK_RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut buf)
        .await?;
    let text = String::from_utf8_lossy(&buf);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Runs the match described by `env` to its end. Returns an error (and
/// posts no result) when the SDK refuses `ready` or nobody connects.
pub async fn run(env: RefServerEnv, opts: RefServerOptions) -> Result<(), String> {
    let sock = UdpSocket::bind(("0.0.0.0", env.game_port))
        .await
        .map_err(|e| format!("binding UDP {}: {e}", env.game_port))?;
    let sdk = |path: &'static str, body: serde_json::Value| {
        let (addr, cred) = (env.sdk_addr, env.sdk_token.clone());
        async move { sdk_post(addr, &cred, path, &body).await }
    };
    // An Agones game server can see its allocation a moment before the
    // node has recorded the session: retry a refused `ready` briefly.
    let mut tries = 0;
    loop {
        match sdk("/sdk/ready", serde_json::json!({})).await {
            Ok((204, _)) => break,
            Ok((401, _)) if tries < READY_RETRIES_MAX => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Err(format!("SDK ready refused: {other:?}")),
        }
    }
    let health = {
        let (addr, cred) = (env.sdk_addr, env.sdk_token.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = sdk_post(addr, &cred, "/sdk/health", &serde_json::json!({})).await;
            }
        })
    };
    let roster = env.spec.roster();
    let slot_of: HashMap<PlayerId, u8> = roster.iter().map(|r| (r.player_id, r.slot)).collect();
    let mut game = ArenaGame::new(opts.arena.clone(), &env.spec);
    let hz = game.tick_rate_hz().clamp(1, 1000);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / hz as f64));
    let created = Instant::now();
    let mut started: Option<Instant> = None;
    let mut peers: HashMap<SocketAddr, PlayerId> = HashMap::new();
    let mut buf = vec![0u8; PACKET_BYTES_MAX + 1];
    let mut out = [0u8; PACKET_BYTES_MAX];
    let crash = opts.crash_in_mode.as_deref() == Some(env.spec.mode.as_str());
    let send = |msg: &ServerMsg, out: &mut [u8; PACKET_BYTES_MAX]| msg.encode(out).ok();
    let result = loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, addr)) = r else { continue };
                let Ok(msg) = ClientMsg::decode(&buf[..n]) else { continue };
                match msg {
                    ClientMsg::Connect { token } => {
                        let Ok(token) = <[u8; crate::token::TOKEN_BYTES]>::try_from(token) else { continue };
                        let token = SessionToken(token).to_base64();
                        let body = serde_json::json!({"token": token, "client_addr": addr.to_string()});
                        let Ok((200, resp)) = sdk("/sdk/player/connect", body).await else { continue };
                        let Some(player) = resp["player_id"].as_str().and_then(|p| p.parse::<PlayerId>().ok()) else { continue };
                        let Some(&slot) = slot_of.get(&player) else { continue };
                        if peers.insert(addr, player).is_none() {
                            game.on_join(player);
                        }
                        let welcome = ServerMsg::Welcome { session_id: env.session_id, your_slot: slot, tick_rate_hz: hz, roster: roster.clone() };
                        if let Some(n) = send(&welcome, &mut out) {
                            let _ = sock.send_to(&out[..n], addr).await;
                        }
                    }
                    ClientMsg::Input(input) => {
                        if let Some(p) = peers.get(&addr) {
                            let _ = game.on_input(*p, input);
                        }
                    }
                    ClientMsg::Ping { nonce } => {
                        if peers.contains_key(&addr) {
                            if let Some(n) = send(&ServerMsg::Pong { nonce }, &mut out) {
                                let _ = sock.send_to(&out[..n], addr).await;
                            }
                        }
                    }
                    ClientMsg::Disconnect => {
                        if let Some(p) = peers.remove(&addr) {
                            game.on_leave(p);
                            let _ = sdk("/sdk/player/disconnect", serde_json::json!({"player_id": p})).await;
                        }
                    }
                }
            }
            _ = interval.tick() => {
                let Some(t0) = started else {
                    let all_in = peers.len() == roster.len();
                    let timed_out = created.elapsed() >= Duration::from_millis(opts.join_timeout_ms);
                    if timed_out && peers.is_empty() {
                        health.abort();
                        return Err("nobody connected".into());
                    }
                    if all_in || timed_out {
                        started = Some(Instant::now());
                    }
                    continue;
                };
                if crash && t0.elapsed() >= Duration::from_millis(opts.crash_after_ms) {
                    eprintln!("reference game server: crashing on purpose (--crash-in-mode)");
                    std::process::abort();
                }
                let snapshot = game.tick();
                if let Some(n) = send(&ServerMsg::Snapshot(snapshot), &mut out) {
                    for a in peers.keys() {
                        let _ = sock.send_to(&out[..n], a).await;
                    }
                }
                if let Some(r) = game.is_over() {
                    break r;
                }
            }
        }
    };
    let ended = ServerMsg::match_ended(&result, &slot_of);
    for _ in 0..3 {
        if let Some(n) = send(&ended, &mut out) {
            for a in peers.keys() {
                let _ = sock.send_to(&out[..n], a).await;
            }
        }
        interval.tick().await;
    }
    let lines: Vec<serde_json::Value> = result
        .players
        .iter()
        .map(|p| {
            serde_json::json!({"player_id": p.player_id, "score": p.score,
                "kills": p.kills, "deaths": p.deaths})
        })
        .collect();
    let body = serde_json::json!({"winner_team": result.winner_team, "players": lines});
    let r = sdk("/sdk/result", body).await;
    health.abort();
    match r {
        Ok((204, _)) => Ok(()),
        other => Err(format!("SDK result refused: {other:?}")),
    }
}

/// `meridian game-server ARGS`: parse, read the environment, play, exit code.
pub fn main_with_args(args: &[String]) -> std::process::ExitCode {
    let run_it = || -> Result<(), String> {
        let opts = RefServerOptions::parse(args)?;
        let env = RefServerEnv::from_env()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(run(env, opts))
    };
    match run_it() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reference game server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let o = RefServerOptions::parse(&a(&["--duration-s", "3", "--crash-in-mode", "squad"]))
            .unwrap();
        assert_eq!(o.arena.duration_s, 3.0);
        assert_eq!(o.crash_in_mode.as_deref(), Some("squad"));
        assert!(RefServerOptions::parse(&a(&["--duration-s"])).is_err());
        assert!(RefServerOptions::parse(&a(&["--duration-s", "-1"])).is_err());
        assert!(RefServerOptions::parse(&a(&["--nope", "1"])).is_err());
    }

    fn env_of(players: &str) -> Result<RefServerEnv, String> {
        let vars: HashMap<&str, String> = HashMap::from([
            ("MERIDIAN_SESSION_ID", uuid::Uuid::new_v4().to_string()),
            ("MERIDIAN_GAME_PORT", "7000".into()),
            ("MERIDIAN_SDK_URL", "http://127.0.0.1:39000".into()),
            ("MERIDIAN_SDK_TOKEN", "t".into()),
            ("MERIDIAN_MODE", "duel".into()),
            ("MERIDIAN_PLAYERS", players.into()),
        ]);
        RefServerEnv::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn environment_roster_edge_and_errors() {
        let roster = |n: usize| {
            (0..n)
                .map(|i| format!("{}:{}", uuid::Uuid::new_v4(), i % 2))
                .collect::<Vec<_>>()
                .join(",")
        };
        let e = env_of(&roster(ROSTER_MAX)).unwrap();
        assert_eq!(e.spec.teams.len(), 2);
        assert_eq!(e.spec.roster().len(), ROSTER_MAX);
        let err = env_of(&roster(ROSTER_MAX + 1)).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        assert!(env_of("not-a-uuid:0").unwrap_err().contains("bad player"));
        let p = uuid::Uuid::new_v4();
        assert!(env_of(&format!("{p}:99")).unwrap_err().contains("bad team"));
        assert!(env_of(&format!("{p}:0,{p}:1")).is_err(), "duplicate player");
        assert!(RefServerEnv::from_lookup(|_| None)
            .unwrap_err()
            .contains("MERIDIAN_SESSION_ID"));
    }

    #[tokio::test]
    async fn sdk_response_is_bounded() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":\"").await;
            // Far more than the limit, and never closed by the server.
            let junk = vec![b'x'; SDK_RESPONSE_BYTES_MAX * 2];
            let _ = s.write_all(&junk).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(5),
            sdk_post(addr, "c", "/sdk/health", &serde_json::json!({})),
        )
        .await
        .expect("returns at the limit, not at the server's close")
        .unwrap();
        assert_eq!((code, body), (200, serde_json::Value::Null));
    }
}
