//! In-place blue/green takeover: a newer `meridian up --takeover` (green)
//! replaces the running node (blue) on the same data dir and ports without
//! refusing a connection.
//!
//! Every node listens on `<data_dir>/takeover.sock` (mode 0600; peers must
//! run as the same user). Green connects and asks; blue then, while it keeps
//! serving: hands the Raft leadership of the shards it leads to other voters
//! (its voter seats stay: the same node is back in seconds), drains its game
//! servers (no new allocations; running matches finish or hit
//! `dgs.drain_deadline_s`), answers every response with `Connection: close`
//! for `takeover.close_window_ms`, stops accepting (the listening socket
//! stays open: new connections wait in its accept backlog), and passes the
//! listening socket to green (SCM_RIGHTS). Only then does blue finish its
//! in-flight requests, leave the mesh, stop its Raft groups, flush and exit.
//! Green waits until blue has exited (the store's lock and the UDP ports
//! are free), starts, and accepts on the inherited socket, including the
//! connections that queued meanwhile.
//!
//! Any failure before the socket is passed (green exits, a bound runs out)
//! leaves blue serving; its game servers stay drained until it restarts.
//!
//! Wire format: text lines (≤ [`LINE_MAX`] bytes), green first:
//! `meridian-takeover/1 pid=P release=R http=ADDR`; blue answers
//! `ACCEPTED pid=P release=R` or `REFUSED reason`, then `PROGRESS text`
//! lines, then `LISTENER` carrying the descriptor; green answers `GOT`.

use crate::api::Shared;
use meridian_replication::economy::NodeId;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

/// The socket's file name in the data dir.
pub const SOCKET_FILE: &str = "takeover.sock";
const PROTOCOL: &str = "meridian-takeover/1";
/// Longest protocol line.
pub const LINE_MAX: usize = 512;
/// How long blue waits for green's request line after it connected.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long blue waits for green's `GOT` after passing the socket.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// After accepts stop, connections accepted just before get this long to
/// have their first request read before the graceful close.
pub const ACCEPT_SETTLE_MS: u64 = 100;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// `--takeover` found no running node on this data dir.
#[derive(Debug, thiserror::Error)]
#[error("--takeover: no running node to take over ({path}: {reason}); start it without --takeover")]
pub struct NotRunning {
    pub path: PathBuf,
    pub reason: String,
}

/// The running node refused the takeover (e.g. another HTTP address); it
/// keeps serving, unchanged.
#[derive(Debug, thiserror::Error)]
#[error("--takeover: the running node refused: {0}")]
pub struct Refused(pub String);

/// What green gets from blue.
pub struct Inherited {
    pub listener: std::net::TcpListener,
    pub old_pid: u32,
    pub old_release: String,
    pub started: Instant,
}

// ---------------------------------------------------------------------------
// Descriptor passing (SCM_RIGHTS) on a unix stream socket.

fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<usize> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    }
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receive one byte and any descriptor that came with it.
fn recv_byte(sock: RawFd) -> std::io::Result<(Option<u8>, Option<OwnedFd>)> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: as in send_with_fd.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fd = None;
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
                let owned = OwnedFd::from_raw_fd(raw);
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(((n == 1).then_some(byte[0]), fd))
}

// ---------------------------------------------------------------------------
// Green: ask the running node for its listener.

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Connect to the running node's takeover socket and wait (at most `wait`)
/// until it passes its HTTP listener. Blocking; run it off the runtime.
pub fn request(
    data_dir: &Path,
    http: SocketAddr,
    release: &str,
    wait: Duration,
) -> anyhow::Result<Inherited> {
    let started = Instant::now();
    let path = socket_path(data_dir);
    let mut sock = std::os::unix::net::UnixStream::connect(&path).map_err(|e| NotRunning {
        path: path.clone(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no takeover socket".into(),
            std::io::ErrorKind::ConnectionRefused => "stale socket, nobody listening".into(),
            _ => e.to_string(),
        },
    })?;
    sock.set_write_timeout(Some(Duration::from_secs(5)))?;
    writeln!(
        sock,
        "{PROTOCOL} pid={} release={} http={http}",
        std::process::id(),
        release.replace(char::is_whitespace, "_")
    )?;
    let deadline = started + wait;
    let mut old_pid = 0u32;
    let mut old_release = String::new();
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "--takeover: the running node did not pass its listener within {} s \
                 (takeover.wait_s); it keeps serving",
                wait.as_secs()
            );
        }
        sock.set_read_timeout(Some(left.min(Duration::from_secs(1))))?;
        let (byte, fd) = match recv_byte(sock.as_raw_fd()) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => anyhow::bail!("--takeover: reading from {}: {e}", path.display()),
        };
        let Some(byte) = byte else {
            anyhow::bail!(
                "--takeover: the running node closed the takeover connection{}",
                if old_pid == 0 {
                    String::new()
                } else {
                    format!(" (pid {old_pid}); check its log")
                }
            );
        };
        if let Some(fd) = fd {
            // The listener arrives with the first byte of `LISTENER`.
            let listener = std::net::TcpListener::from(fd);
            let _ = sock.write_all(b"GOT\n");
            let local = listener.local_addr()?;
            tracing::info!(old_pid, %local, "takeover: received the HTTP listener");
            return Ok(Inherited {
                listener,
                old_pid,
                old_release,
                started,
            });
        }
        if byte != b'\n' {
            if line.len() >= LINE_MAX {
                anyhow::bail!("--takeover: protocol line too long");
            }
            line.push(byte);
            continue;
        }
        let text = String::from_utf8_lossy(&line).to_string();
        line.clear();
        if let Some(rest) = text.strip_prefix("REFUSED ") {
            return Err(Refused(rest.to_string()).into());
        } else if text.starts_with("ACCEPTED") {
            old_pid = field(&text, "pid")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            old_release = field(&text, "release").unwrap_or("?").to_string();
            tracing::info!(old_pid, old_release = %old_release, "takeover: accepted by the running node");
        } else if let Some(p) = text.strip_prefix("PROGRESS ") {
            tracing::info!(old_pid, "takeover: {p}");
        } else {
            anyhow::bail!("--takeover: unexpected protocol line {text:?}");
        }
    }
}

/// Wait until the old process has exited, at most `within`.
pub async fn wait_for_exit(pid: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while pid != 0 && !process_gone(pid) {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "--takeover: the old node (pid {pid}) did not exit within {} ms \
                 (takeover.release_wait_ms); not starting: never two processes on one store",
                within.as_millis()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Blue: the socket, and the hand-off while serving.

/// Green, before it accepts: wait (at most `within`) until the mesh shows
/// every other voter of this node's shards alive and every shard has a
/// known leader, so that requests forwarded to a shard leader find it.
/// Returns how long it waited and what is still missing.
pub async fn wait_for_peers(state: &Shared, within: Duration) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let me = state.cfg.node_name();
    let peers: std::collections::BTreeSet<String> = state
        .economy
        .shards()
        .into_iter()
        .flat_map(|s| s.voter_names)
        .filter(|n| *n != me && !n.is_empty())
        .collect();
    loop {
        let alive: std::collections::HashSet<String> = state
            .with_mesh(|m| m.client().members())
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.state == meridian_mesh::MemberState::Alive)
            .map(|m| m.node_id)
            .collect();
        let mut missing: Vec<String> = peers
            .iter()
            .filter(|p| !alive.contains(*p))
            .cloned()
            .collect();
        // ...and every shard's leader is known here (heard from it), so
        // requests can be served or forwarded at once.
        missing.extend(
            state
                .economy
                .shards()
                .into_iter()
                .filter(|s| s.leader.is_none())
                .map(|s| format!("leader of shard {}", s.shard)),
        );
        if missing.is_empty() || started.elapsed() >= within || state.with_mesh(|_| ()).is_none() {
            return (started.elapsed(), missing);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A takeover request that blue accepted for processing.
pub struct Pending {
    stream: UnixStream,
    pub peer_pid: u32,
    pub release: String,
}

async fn write_line(s: &UnixStream, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    let mut off = 0;
    let bytes = data.as_bytes();
    while off < bytes.len() {
        s.writable().await?;
        match s.try_write(&bytes[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_line(s: &UnixStream) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        s.readable().await?;
        let mut b = [0u8; 1];
        match s.try_read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) if b[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into())),
            Ok(_) => {
                if line.len() >= LINE_MAX {
                    return Err(std::io::Error::other("line too long"));
                }
                line.push(b[0]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Resolves when green went away (EOF or error) or sent something unexpected.
async fn gone(s: &UnixStream) {
    let _ = read_line(s).await;
}

/// Bind `<data_dir>/takeover.sock` (replacing a stale one: the caller holds
/// the store's lock, so no other node uses this data dir) and accept
/// requests. `busy` is set while a takeover runs.
pub fn listen(
    state: &Shared,
    local_http: SocketAddr,
    busy: Arc<AtomicBool>,
) -> anyhow::Result<mpsc::Receiver<Pending>> {
    use anyhow::Context;
    let path = socket_path(&state.cfg.data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the takeover socket {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel(1);
    let release = state.release().to_string();
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "takeover socket accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            let busy = busy.clone();
            let release = release.clone();
            tokio::spawn(async move {
                let uid = unsafe { libc::geteuid() };
                let peer = stream.peer_cred().ok();
                if peer.map(|c| c.uid()) != Some(uid) {
                    let _ = write_line(&stream, "REFUSED not the same user").await;
                    return;
                }
                let line =
                    match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_line(&stream)).await {
                        Ok(Ok(Some(l))) => l,
                        _ => return,
                    };
                if !line.starts_with(PROTOCOL) {
                    let _ = write_line(&stream, &format!("REFUSED expected {PROTOCOL}")).await;
                    return;
                }
                let peer_pid = field(&line, "pid")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                let want: Option<SocketAddr> = field(&line, "http").and_then(|a| a.parse().ok());
                if want != Some(local_http) {
                    let _ = write_line(
                        &stream,
                        &format!(
                            "REFUSED this node serves HTTP on {local_http}, the new one is configured for {}; \
                             a takeover keeps the address",
                            field(&line, "http").unwrap_or("?")
                        ),
                    )
                    .await;
                    return;
                }
                if busy.load(Ordering::Acquire) {
                    let _ =
                        write_line(&stream, "REFUSED a takeover or shutdown is in progress").await;
                    return;
                }
                let new_release = field(&line, "release").unwrap_or("?").to_string();
                tracing::info!(peer_pid, from = %release, to = %new_release, "takeover requested");
                let p = Pending {
                    stream,
                    peer_pid,
                    release: new_release,
                };
                if let Err(
                    mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p),
                ) = tx.try_send(p)
                {
                    let _ = write_line(&p.stream, "REFUSED a takeover or shutdown is in progress")
                        .await;
                }
            });
        }
    });
    Ok(rx)
}

/// An accept loop that can stop taking connections without closing the
/// socket: while paused, new connections wait in the kernel's backlog.
pub struct PausableListener {
    pub inner: tokio::net::TcpListener,
    pub paused: watch::Receiver<bool>,
}

impl axum::serve::Listener for PausableListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if *self.paused.borrow_and_update() {
                if self.paused.wait_for(|p| !*p).await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            tokio::select! {
                r = self.inner.accept() => match r {
                    Ok(conn) => return conn,
                    Err(e) if matches!(e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = self.paused.changed() => continue,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Hand the leadership of every shard this node leads to another live voter
/// (voter seats stay). Returns (moved, kept).
async fn move_leadership(state: &Shared, within: Duration) -> (usize, usize) {
    let me = crate::replica::raft_id(&state.cfg.node_name());
    let alive: std::collections::HashSet<String> = state
        .with_mesh(|m| m.client().members())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.is_self && m.state == meridian_mesh::MemberState::Alive)
        .map(|m| m.node_id)
        .collect();
    let alive = &alive;
    let moves = state
        .economy
        .led_shards()
        .into_iter()
        .map(|(shard, voters)| async move {
            // A voter a few entries behind under load catches up within
            // milliseconds: try again until the bound.
            let deadline = Instant::now() + within;
            let candidates: Vec<(&NodeId, &String)> = voters
                .iter()
                .filter(|(id, name)| **id != me && alive.contains(*name))
                .collect();
            if candidates.is_empty() {
                return false; // no other live voter: this shard waits for the new process
            }
            loop {
                for (id, name) in &candidates {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match state.economy.hand_over(shard, **id, left).await {
                        Ok(()) => return true,
                        Err(e) => tracing::debug!(shard, to = %name, error = %e, "takeover: leadership hand-over"),
                    }
                }
                let led = state.economy.led_shards().iter().any(|(s, _)| *s == shard);
                if !led || Instant::now() >= deadline {
                    // Not led here any more (an election moved it): nothing to keep.
                    return !led;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    let results = futures::future::join_all(moves).await;
    let moved = results.iter().filter(|m| **m).count();
    (moved, results.len() - moved)
}

/// Blue's side of one takeover, while the server keeps serving. On `Ok`
/// green holds the listener and accepts have stopped here for good; the
/// caller finishes in-flight requests and shuts down. On `Err` everything
/// HTTP is as before (accepting, keep-alive) and blue keeps serving.
pub async fn hand_off(
    state: &Shared,
    p: Pending,
    keep: &std::net::TcpListener,
    pause: &watch::Sender<bool>,
) -> Result<(), String> {
    let started = Instant::now();
    let cfg = state.cfg.takeover.clone();
    let s = &p.stream;
    let step = |what: String| async move {
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "takeover: {what}"
        );
        let _ = write_line(s, &format!("PROGRESS {what}")).await;
    };
    write_line(
        s,
        &format!(
            "ACCEPTED pid={} release={}",
            std::process::id(),
            state.release()
        ),
    )
    .await
    .map_err(|e| format!("answering: {e}"))?;
    // No leadership may come back here (leadership following the writes
    // would hand shards back, since blue still takes the writes).
    state.economy.refuse_leadership(true);
    let res = async {
        // 1. Raft leadership to other voters.
        let (moved, kept) = tokio::select! {
            r = move_leadership(state, Duration::from_millis(cfg.leader_handover_ms)) => r,
            _ = gone(s) => return Err("the new process went away".to_string()),
        };
        step(format!("economy leadership handed over: {moved} shards moved, {kept} kept")).await;
        // 2. Game servers: no new allocations; running matches finish.
        {
            use meridian_dgs::orchestrator::Orchestrator;
            let deadline = Duration::from_secs(state.cfg.dgs.drain_deadline_s);
            let running = state.games.orchestrator().capacity();
            step(format!("draining game servers ({running:?})")).await;
            state.games.orchestrator().drain(deadline);
            tokio::select! {
                r = tokio::time::timeout(deadline + Duration::from_secs(2), state.games.orchestrator().drained()) => {
                    if r.is_err() { tracing::warn!("takeover: game servers did not drain in time"); }
                }
                _ = gone(s) => return Err("the new process went away while game servers drained".to_string()),
            }
            // Let the last session reports be applied.
            tokio::time::sleep(Duration::from_millis(200)).await;
            step("game servers drained".to_string()).await;
        }
        // 3. Connection: close on every response, so clients stop reusing
        //    their keep-alive connections here.
        state.closing_connections.store(true, Ordering::Release);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.close_window_ms)) => {}
            _ = gone(s) => return Err("the new process went away".to_string()),
        }
        // 4. Stop accepting (the socket stays open; new connections queue).
        pause.send_replace(true);
        tokio::time::sleep(Duration::from_millis(ACCEPT_SETTLE_MS)).await;
        // 5. Pass the listener.
        let line = b"LISTENER\n";
        s.writable().await.map_err(|e| e.to_string())?;
        let sent = loop {
            match s.try_io(Interest::WRITABLE, || send_with_fd(s.as_raw_fd(), line, keep.as_raw_fd())) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    s.writable().await.map_err(|e| e.to_string())?;
                }
                r => break r,
            }
        };
        match sent {
            Ok(n) if n == line.len() => {}
            Ok(n) => return Err(format!("short write passing the listener ({n} bytes)")),
            Err(e) => return Err(format!("passing the listener: {e}")),
        }
        match tokio::time::timeout(ACK_TIMEOUT, read_line(s)).await {
            Ok(Ok(Some(l))) if l == "GOT" => Ok(()),
            other => Err(format!("no acknowledgement from the new process: {other:?}")),
        }
    }
    .await;
    match res {
        Ok(()) => {
            tracing::info!(
                new_pid = p.peer_pid,
                new_release = %p.release,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "takeover: listener passed; finishing in-flight requests and shutting down"
            );
            state.ready.store(false, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            state.economy.refuse_leadership(false);
            pause.send_replace(false);
            state.closing_connections.store(false, Ordering::Release);
            tracing::warn!(
                error = %e,
                "takeover aborted: this node keeps serving (game servers stay drained until it restarts)"
            );
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_passes_over_a_unix_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            send_with_fd(a.as_raw_fd(), b"LISTENER\n", listener.as_raw_fd()).unwrap(),
            9
        );
        drop(listener);
        let (byte, fd) = recv_byte(b.as_raw_fd()).unwrap();
        assert_eq!(byte, Some(b'L'));
        let got = std::net::TcpListener::from(fd.expect("a descriptor"));
        assert_eq!(got.local_addr().unwrap(), addr);
        // Still listening although the sender closed its copy.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(got.accept().is_ok());
        // The rest of the line comes without a descriptor; EOF after.
        let (byte, fd) = recv_byte(b.as_raw_fd()).unwrap();
        assert_eq!((byte, fd.is_none()), (Some(b'I'), true));
        drop(a);
        let mut rest = Vec::new();
        while let (Some(c), _) = recv_byte(b.as_raw_fd()).unwrap() {
            rest.push(c);
        }
        assert_eq!(rest, b"STENER\n");
    }

    #[test]
    fn fields_and_processes() {
        let line = "meridian-takeover/1 pid=42 release=0.2.0 http=127.0.0.1:7700";
        assert_eq!(field(line, "pid"), Some("42"));
        assert_eq!(field(line, "http"), Some("127.0.0.1:7700"));
        assert_eq!(field(line, "nope"), None);
        assert!(!process_gone(std::process::id()));
        assert!(process_gone(u32::MAX - 1));
    }

    #[test]
    fn no_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(
            dir.path(),
            "127.0.0.1:1".parse().unwrap(),
            "x",
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(err.downcast_ref::<NotRunning>().is_some(), "{err}");
    }
}
