//! Region beacons: a UDP echo clients ping to measure their RTT to each region
//! (PlayFab/GameLift style), and the client side ([`ping`]) for `meridian ping-regions`.
//!
//! For: latency measurement only. A reply is the request's bytes sent back unchanged, so it
//! is never larger than the request (no amplification). Requests larger than
//! [`BEACON_PACKET_MAX_BYTES`] or empty are dropped, each source IP is rate limited by a
//! token bucket, and every drop is counted.
//!
//! Not for: authentication or carrying data; anyone may ping a beacon.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// Largest request the beacon answers.
pub const BEACON_PACKET_MAX_BYTES: usize = 256;
/// Sustained replies per second per source IP.
pub const BEACON_RATE_PER_SOURCE_PER_S: f64 = 20.0;
/// Burst of replies per source IP.
pub const BEACON_BURST_PER_SOURCE: f64 = 20.0;
/// Source IPs tracked by the rate limiter; when full, idle entries are evicted, and if
/// none are idle new sources are dropped until some are.
pub const BEACON_SOURCES_TRACKED_MAX: usize = 10_000;
/// A source whose bucket has been full this long is forgotten.
const BEACON_SOURCE_IDLE: Duration = Duration::from_secs(10);
/// Replies held back at once when a reply delay is configured (demo only); more are dropped.
pub const BEACON_DELAYED_REPLIES_MAX: usize = 1024;
/// Size of the probe [`ping`] sends.
pub const PING_PACKET_BYTES: usize = 16;
/// Magic prefix of [`ping`]'s probes.
const PING_MAGIC: &[u8; 4] = b"MBCN";

/// Counters of a beacon.
#[derive(Debug, Default)]
pub struct BeaconStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Replies sent.
    pub replied: AtomicU64,
    /// Dropped: larger than [`BEACON_PACKET_MAX_BYTES`].
    pub dropped_oversize: AtomicU64,
    /// Dropped: empty.
    pub dropped_empty: AtomicU64,
    /// Dropped: source over its rate limit (or limiter full).
    pub dropped_rate_limited: AtomicU64,
    /// Dropped: too many delayed replies pending, or send error.
    pub dropped_other: AtomicU64,
}

impl BeaconStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-source token buckets.
struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= BEACON_SOURCES_TRACKED_MAX {
            self.buckets
                .retain(|_, b| now.duration_since(b.updated) < BEACON_SOURCE_IDLE);
            if self.buckets.len() >= BEACON_SOURCES_TRACKED_MAX {
                return false;
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: BEACON_BURST_PER_SOURCE,
            updated: now,
        });
        let elapsed = now.duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * BEACON_RATE_PER_SOURCE_PER_S).min(BEACON_BURST_PER_SOURCE);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A running beacon; stops when dropped.
#[derive(Debug)]
pub struct BeaconServer {
    addr: SocketAddr,
    stats: Arc<BeaconStats>,
    task: tokio::task::JoinHandle<()>,
}

impl BeaconServer {
    /// Binds `addr` and starts answering. `reply_delay` holds each reply back (demo only:
    /// simulates the region's distance from the client); use `Duration::ZERO` otherwise.
    pub async fn bind(addr: SocketAddr, reply_delay: Duration) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let addr = socket.local_addr()?;
        let stats = Arc::new(BeaconStats::default());
        let task = tokio::spawn(serve(socket, stats.clone(), reply_delay));
        Ok(Self { addr, stats, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<BeaconStats> {
        &self.stats
    }
}

impl Drop for BeaconServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: Arc<UdpSocket>, stats: Arc<BeaconStats>, reply_delay: Duration) {
    // One byte more than the limit, so an oversize datagram is recognized (not truncated).
    let mut buf = [0u8; BEACON_PACKET_MAX_BYTES + 1];
    let mut limiter = RateLimiter {
        buckets: HashMap::new(),
    };
    let delayed = Arc::new(Semaphore::new(BEACON_DELAYED_REPLIES_MAX));
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // E.g. ICMP errors surfaced on some platforms: keep serving.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        BeaconStats::inc(&stats.received);
        if len == 0 {
            BeaconStats::inc(&stats.dropped_empty);
            continue;
        }
        if len > BEACON_PACKET_MAX_BYTES {
            BeaconStats::inc(&stats.dropped_oversize);
            continue;
        }
        if !limiter.allow(from.ip(), Instant::now()) {
            BeaconStats::inc(&stats.dropped_rate_limited);
            continue;
        }
        // The reply is exactly the request: never larger.
        let reply = buf[..len].to_vec();
        if reply_delay.is_zero() {
            match socket.send_to(&reply, from).await {
                Ok(_) => BeaconStats::inc(&stats.replied),
                Err(_) => BeaconStats::inc(&stats.dropped_other),
            }
        } else {
            let Ok(permit) = delayed.clone().try_acquire_owned() else {
                BeaconStats::inc(&stats.dropped_other);
                continue;
            };
            let socket = socket.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::time::sleep(reply_delay).await;
                match socket.send_to(&reply, from).await {
                    Ok(_) => BeaconStats::inc(&stats.replied),
                    Err(_) => BeaconStats::inc(&stats.dropped_other),
                }
            });
        }
    }
}

/// Pings the beacon at `addr` `count` times (sequentially, each waiting up to `timeout`)
/// and returns the median RTT of the answered probes, or `None` if none was answered.
/// Stays well under the beacon's rate limit for `count` ≤ [`BEACON_BURST_PER_SOURCE`].
pub async fn ping(addr: SocketAddr, count: u32, timeout: Duration) -> Option<Duration> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(addr).await.ok()?;
    let nonce: u64 = rand::random();
    let mut samples = Vec::new();
    let mut buf = [0u8; PING_PACKET_BYTES * 2];
    for seq in 0..count {
        let mut probe = [0u8; PING_PACKET_BYTES];
        probe[..4].copy_from_slice(PING_MAGIC);
        probe[4..8].copy_from_slice(&seq.to_be_bytes());
        probe[8..16].copy_from_slice(&nonce.to_be_bytes());
        let sent = Instant::now();
        if socket.send(&probe).await.is_err() {
            continue;
        }
        let deadline = sent + timeout;
        // Skip stale replies to earlier probes until ours arrives or time runs out.
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match tokio::time::timeout(deadline - now, socket.recv(&mut buf)).await {
                Ok(Ok(n)) if n == PING_PACKET_BYTES && buf[..n] == probe => {
                    samples.push(sent.elapsed());
                    break;
                }
                Ok(Ok(_)) => continue,
                // Connection refused (ICMP) and the like: this probe failed.
                Ok(Err(_)) => break,
                Err(_) => break,
            }
        }
    }
    if samples.is_empty() {
        return None;
    }
    samples.sort();
    Some(samples[samples.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_limits_and_refills() {
        let mut l = RateLimiter {
            buckets: HashMap::new(),
        };
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(allowed, BEACON_BURST_PER_SOURCE as usize);
        assert!(l.allow(ip, t0 + Duration::from_millis(100)));
        // Another source has its own bucket.
        assert!(l.allow([10, 0, 0, 2].into(), t0));
    }
}
