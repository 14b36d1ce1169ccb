//! Three real meshes on 127.0.0.1: convergence, crash detection, restart, metadata, RPC.
//!
//! Bounds under test: `CONVERGENCE_BOUND` and `DOWN_DETECTION_BOUND` (5 s each).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use meridian_mesh::membership::{CONVERGENCE_BOUND, DOWN_DETECTION_BOUND};
use meridian_mesh::MemberState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_detect_crash_and_rejoin() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    let seeds = vec![a.addr()];
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        seeds.clone(),
    ))
    .await;
    let c_config = config("c", "ap", certs(dir.path(), &ca, "c"), seeds.clone());
    // c runs on its own runtime so it can be crashed like `kill -9`: shutting the runtime
    // down stops every task at once, with no SWIM leave and no QUIC close.
    let c_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let c = c_rt.spawn(start(c_config.clone())).await.unwrap();
    c.register_rpc_handler("echo", echo_handler());

    // Convergence: everyone sees two alive peers.
    let took = wait_for(CONVERGENCE_BOUND, || {
        [&a, &b, &c].iter().all(|h| alive_peers(h) == 2)
    })
    .await
    .expect("3 nodes converge within CONVERGENCE_BOUND");
    eprintln!("converged in {took:?}");

    // Metadata gossip and RTT.
    let meta_ok = wait_for(CONVERGENCE_BOUND, || {
        a.members()
            .iter()
            .filter(|m| !m.is_self)
            .all(|m| m.metadata.is_some() && m.rtt_ms.is_some())
    })
    .await;
    assert!(
        meta_ok.is_some(),
        "metadata and RTT known: {:?}",
        a.members()
    );
    let c_at_a = a.members().into_iter().find(|m| m.node_id == "c").unwrap();
    assert_eq!(c_at_a.region, "ap");
    assert_eq!(c_at_a.metadata.unwrap().api_url, "http://c.test");

    // Metadata updates propagate.
    let mut meta = c_config.metadata.clone();
    meta.load = 0.5;
    c.update_metadata(meta).await.unwrap();
    wait_for(CONVERGENCE_BOUND, || {
        b.members()
            .iter()
            .any(|m| m.node_id == "c" && m.metadata.as_ref().is_some_and(|x| x.load == 0.5))
    })
    .await
    .expect("metadata update reaches b");

    // RPC by node id.
    let reply = b.rpc("c", "echo", b"hi").await.unwrap();
    assert_eq!(reply, Bytes::from_static(b"echo:hi"));
    assert!(matches!(
        b.rpc("c", "nope", b"").await,
        Err(meridian_mesh::MeshError::Remote(_))
    ));
    assert!(matches!(
        b.rpc("zz", "echo", b"").await,
        Err(meridian_mesh::MeshError::UnknownPeer(_))
    ));
    // One-way broadcast from a reaches c's handler (b has none: counted as rejected).
    assert_eq!(a.broadcast("echo", b"x").await, 2);

    // Crash c: no leave, no goodbye of any kind.
    let (_, old_incarnation) = state_of(&a, "c").unwrap();
    let c_addr = c.addr();
    c_rt.shutdown_background();
    drop(c);
    let took = wait_for(DOWN_DETECTION_BOUND, || {
        [&a, &b]
            .iter()
            .all(|h| matches!(state_of(h, "c"), Some((MemberState::Down, _))))
    })
    .await
    .expect("crash detected as down within DOWN_DETECTION_BOUND");
    eprintln!("crash detected in {took:?}");
    assert!(a.stats().snapshot().swim_suspicions > 0);

    // Restart c with the same name and address: it rejoins with a higher incarnation.
    let mut c_config = c_config;
    c_config.bind_addr = c_addr;
    let c2 = start(c_config).await;
    let took = wait_for(CONVERGENCE_BOUND * 2, || {
        [&a, &b].iter().all(|h| {
            matches!(state_of(h, "c"), Some((MemberState::Alive, inc)) if inc > old_incarnation)
        })
    })
    .await
    .expect("restarted node rejoins with a higher incarnation");
    eprintln!("restart rejoined in {took:?}");
    wait_for(CONVERGENCE_BOUND, || alive_peers(&c2) == 2)
        .await
        .expect("restarted node sees both peers");

    // Graceful leave: peers see it down quickly (no suspicion period needed).
    c2.shutdown().await;
    wait_for(Duration::from_secs(3), || {
        [&a, &b]
            .iter()
            .all(|h| matches!(state_of(h, "c"), Some((MemberState::Down, _))))
    })
    .await
    .expect("graceful leave seen as down");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_is_detected_as_down() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        vec![a.addr()],
    ))
    .await;
    wait_for(CONVERGENCE_BOUND, || alive_peers(&a) == 1)
        .await
        .expect("converge");
    b.kill();
    wait_for(DOWN_DETECTION_BOUND, || {
        matches!(state_of(&a, "b"), Some((MemberState::Down, _)))
    })
    .await
    .expect("MeshHandle::kill is detected as down");
}
