//! Token-bucket rate limiting keyed by strings (`ip:1.2.3.4`, `acct:alice`).
//! Bounded: at most `tracked_keys_max` buckets; when full, buckets that have
//! refilled completely (idle keys) are dropped first, then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    enabled: bool,
    tracked_keys_max: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(enabled: bool, tracked_keys_max: usize) -> Self {
        Self {
            enabled,
            tracked_keys_max: tracked_keys_max.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Take one token from `key`'s bucket (capacity and refill = `per_min`
    /// per minute). `Err(seconds)` says when a token will be available.
    pub fn check(&self, key: &str, per_min: u32) -> Result<(), u64> {
        self.check_at(key, per_min, Instant::now())
    }

    fn check_at(&self, key: &str, per_min: u32, now: Instant) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let cap = f64::from(per_min.max(1));
        let per_s = cap / 60.0;
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.tracked_keys_max {
            evict(&mut map, per_s, cap, now, self.tracked_keys_max);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_s).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_s).ceil() as u64)
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

fn evict(map: &mut HashMap<String, Bucket>, per_s: f64, cap: f64, now: Instant, max: usize) {
    map.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_s < cap);
    if map.len() >= max {
        // Still full of active buckets: drop the least recently used one.
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_limits_then_refills() {
        let rl = RateLimiter::new(true, 100);
        let t0 = Instant::now();
        for _ in 0..10 {
            rl.check_at("k", 10, t0).unwrap();
        }
        let retry = rl.check_at("k", 10, t0).unwrap_err();
        assert_eq!(retry, 6); // one token per 6 s at 10/min
        rl.check_at("k", 10, t0 + Duration::from_secs(6)).unwrap();
    }

    #[test]
    fn disabled_never_limits() {
        let rl = RateLimiter::new(false, 1);
        for _ in 0..1000 {
            rl.check("k", 1).unwrap();
        }
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let rl = RateLimiter::new(true, 8);
        let t0 = Instant::now();
        for i in 0..100 {
            let _ = rl.check_at(&format!("k{i}"), 10, t0);
        }
        assert!(rl.len() <= 8, "len {}", rl.len());
    }
}
