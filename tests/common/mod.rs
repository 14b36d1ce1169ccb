//! Test harness: start the real `meridian` binary on free loopback ports with
//! its own data dir, and talk to it over HTTP.
#![allow(dead_code)]

pub mod bank;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SERVER_TOKEN: &str = "test-server-token-0123456789";

/// Harness-only: a config file passed as `--config` (not given to the node as env).
pub const TEST_CONFIG_ENV: &str = "TEST_MERIDIAN_CONFIG_FILE";

/// Ports for test nodes come from below the kernel's ephemeral range
/// (32768-60999 here), bindable for TCP and UDP at the time, and never handed
/// out twice in one test process. A port the kernel picked for us would go
/// back into the ephemeral pool: a node killed and restarted by one test binds
/// its ports again, and any socket bound to port 0 meanwhile (another test's
/// node, a client) could have taken it ("Address already in use").
fn unique_port() -> u16 {
    unique_ports(1)
}

/// `n` consecutive ports (see [`unique_port`]); the first is returned.
pub fn unique_ports(n: u32) -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Spread test processes over the span so two binaries rarely start equal.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let at = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        assert!(at + n <= SPAN, "test ports exhausted");
        let first = (start + at) % SPAN;
        if first + n > SPAN {
            continue; // the block would wrap around the span
        }
        let free = (0..n).all(|i| {
            let port = (LOW + first + i) as u16;
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return (LOW + first) as u16;
        }
    }
}

pub fn free_port() -> u16 {
    unique_port()
}

pub fn free_udp_port() -> u16 {
    unique_port()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct Node {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub envs: Vec<(String, String)>,
    pub log: PathBuf,
    /// Command prefix, e.g. `ip netns exec NS`.
    pub prefix: Vec<String>,
}

impl Node {
    /// Start a node with rate limits off (most tests) and extra env vars.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Node {
        Self::start_at(
            data_dir,
            extra_env,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            Vec::new(),
        )
    }

    /// Start with a given HTTP address and a command prefix (network namespaces).
    pub fn start_at(
        data_dir: &Path,
        extra_env: &[(&str, &str)],
        addr: SocketAddr,
        prefix: Vec<String>,
    ) -> Node {
        let mut envs = vec![
            ("MERIDIAN_RATE_LIMITS".to_string(), "off".to_string()),
            ("MERIDIAN_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
            (
                "MERIDIAN_AUTH__SERVER_TOKENS".to_string(),
                format!("[\"{SERVER_TOKEN}\"]"),
            ),
            (
                "MERIDIAN_REGIONS_DIR".to_string(),
                repo_root().join("regions").display().to_string(),
            ),
            (
                "MERIDIAN_MESH_ADDR".to_string(),
                format!("127.0.0.1:{}", free_udp_port()),
            ),
            (
                "MERIDIAN_BEACON_ADDR".to_string(),
                format!("127.0.0.1:{}", free_udp_port()),
            ),
            (
                "MERIDIAN_GAME_ADDR".to_string(),
                format!("127.0.0.1:{}", free_udp_port()),
            ),
            (
                "MERIDIAN_MESH__SEED_CATALOG".to_string(),
                "false".to_string(),
            ),
        ];
        for (k, v) in extra_env {
            envs.retain(|(ek, _)| ek != k);
            envs.push((k.to_string(), v.to_string()));
        }
        let mut n = Node {
            child: None,
            addr,
            data_dir: data_dir.to_path_buf(),
            envs,
            log: data_dir.join("node.log"),
            prefix,
        };
        n.spawn();
        n
    }

    pub fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_meridian"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_meridian")),
        };
        let region = self.env("MERIDIAN_REGION").unwrap_or("eu-west").to_string();
        if let Some(config) = self.env(TEST_CONFIG_ENV) {
            cmd.arg("up").arg("--config").arg(config);
            cmd.args(["--region", &region, "--log-format", "json", "--http"])
        } else {
            cmd.args(["up", "--region", &region, "--log-format", "json", "--http"])
        }
        .arg(self.addr.to_string())
        .arg("--data-dir")
        .arg(&self.data_dir)
        .env_remove("MERIDIAN_LOG")
        .stdout(Stdio::null())
        .stderr(log);
        for (k, v) in self.envs.iter().filter(|(k, _)| k != TEST_CONFIG_ENV) {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn meridian"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "meridian exited early ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = probe::blocking_get(&format!("{}/readyz", self.url())) {
                if resp == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("meridian did not become ready; log:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // openraft logs ~7 INFO lines per shard when it stops, which would push
        // the line that says why the node stopped out of the tail.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !(l.contains("\"level\":\"INFO\"") && l.contains("\"target\":\"openraft")))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.envs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("meridian did not stop on SIGTERM");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal blocking probe without a runtime (used while waiting for start-up).
mod probe {
    use std::io::{Read, Write};
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Send a request and return (status, headers, JSON body or Null).
pub async fn call(
    req: reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// Register a user and return the response body.
pub async fn register(base: &str, username: &str, password: &str) -> serde_json::Value {
    let (s, _, b) = call(
        client()
            .post(format!("{base}/auth/register"))
            .json(&serde_json::json!({
                "username": username, "password": password
            })),
    )
    .await;
    assert_eq!(s, 201, "register {username}: {b}");
    b
}

/// Assert the API's JSON error shape and return its code.
pub fn error_code(body: &serde_json::Value) -> String {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no error message in {body}");
    assert!(
        e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "no request id in {body}"
    );
    e["code"].as_str().expect("error code").to_string()
}

/// Poll `check` every 100 ms until it holds; panics after `within`.
/// Returns how long it took.
pub async fn wait_for(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// Send a request built by `make`, again while it answers 503 (a retryable
/// "no quorum / no leader yet", e.g. right after an election) for at most
/// 20 s, as a client would. Returns the first other answer.
pub async fn call_retrying(
    make: impl Fn() -> reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(make()).await;
        if r.0 != 503 || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
