//! Crash safety of the real binary: `kill -9` during a stream of
//! registrations loses no account whose registration was acknowledged.

mod common;
use common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Concurrent registration streams while the node is killed.
const WRITERS: usize = 8;
/// Kill/restart cycles, each after a different delay.
const CYCLES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_registrations_loses_no_acknowledged_account() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut attempted = 0usize;
    for cycle in 0..CYCLES {
        let base = node.url();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("c{cycle}w{w}n{n}");
                    n += 1;
                    let resp = c
                        .post(format!("{base}/auth/register"))
                        .json(&json!({"username": name, "password": "crash test password"}))
                        .send()
                        .await;
                    if let Ok(r) = resp {
                        if r.status().as_u16() == 201 {
                            if let Ok(b) = r.json::<serde_json::Value>().await {
                                let id = b["player_id"].as_str().unwrap_or_default().to_string();
                                acked.lock().unwrap().push((name, id));
                            }
                        }
                    }
                }
                n
            }));
        }
        // Let acknowledgements accumulate, then kill at a varying point.
        let before = acked.lock().unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 20 + cycle * 7
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(13 * cycle as u64)).await;
        node.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            attempted += t.await.unwrap();
        }
        node.spawn();
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 60,
        "too few acknowledged registrations: {}",
        acked.len()
    );
    let base = node.url();
    let c = client();
    // Every acknowledged account exists with the acknowledged id.
    let viewer = register(&base, "viewer_99", "viewer password").await;
    let token = viewer["access_token"].as_str().unwrap().to_string();
    for (name, id) in &acked {
        let (s, _, b) = call(
            c.get(format!("{base}/player/{id}/profile"))
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
        assert_eq!(s, 200, "acknowledged {name} lost after kill -9: {b}");
        assert_eq!(b["username"], name.as_str());
    }
    // And a sample can log in (password hash intact).
    for (name, id) in acked.iter().step_by(acked.len() / 5 + 1) {
        let (s, _, b) = call(
            c.post(format!("{base}/auth/login"))
                .json(&json!({"username": name, "password": "crash test password"})),
        )
        .await;
        assert_eq!(s, 200, "{name}: {b}");
        assert_eq!(b["player_id"], id.as_str());
    }
    eprintln!(
        "acknowledged {} of {} attempted registrations across {CYCLES} kill -9 cycles",
        acked.len(),
        attempted
    );
}
