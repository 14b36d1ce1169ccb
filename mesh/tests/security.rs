//! Refusals and bad input: foreign CA, expired certificate, garbage datagrams, dead seeds.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use meridian_mesh::membership::CONVERGENCE_BOUND;
use meridian_mesh::pki;
use meridian_mesh::transport::{bind_udp_socket, LatencyTable, Transport};
use meridian_mesh::{MeshError, MeshStats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_cannot_join_or_call_rpc() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let other_ca = dir.path().join("other-ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    a.register_rpc_handler("echo", echo_handler());
    // Same node name as a legitimate node would use, different CA.
    let x_dir = dir.path().join("x");
    let x = start(config(
        "b",
        "us",
        certs(&x_dir, &other_ca, "b"),
        vec![a.addr()],
    ))
    .await;
    x.register_rpc_handler("echo", echo_handler());

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.members().len(),
        1,
        "a must not list the intruder: {:?}",
        a.members()
    );
    assert_eq!(
        x.members().len(),
        1,
        "intruder must not join: {:?}",
        x.members()
    );
    assert!(a.stats().snapshot().handshakes_refused > 0);
    assert_eq!(a.stats().snapshot().swim_packets_received, 0);
    assert!(x.stats().snapshot().seed_join_attempts > 0);

    // RPC both ways is refused.
    let r = x
        .rpc_addr(a.addr(), "echo", b"hi", Duration::from_secs(2))
        .await;
    assert!(r.is_err(), "intruder RPC must fail, got {r:?}");
    let r = a
        .rpc_addr(x.addr(), "echo", b"hi", Duration::from_secs(2))
        .await;
    assert!(r.is_err(), "RPC to intruder must fail, got {r:?}");
    assert_eq!(a.stats().snapshot().rpc_served, 0);

    // A legitimate node still joins.
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        vec![a.addr()],
    ))
    .await;
    wait_for(CONVERGENCE_BOUND, || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await
    .expect("legit node joins");
    assert_eq!(
        b.rpc("a", "echo", b"1").await.unwrap(),
        Bytes::from_static(b"echo:1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    a.register_rpc_handler("echo", echo_handler());
    let e_dir = dir.path().join("e");
    pki::issue_node_cert(&ca, "e", &e_dir, Duration::from_secs(1)).unwrap();
    // Validity has one-second granularity: wait until the cert is surely expired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e_paths = pki::CertPaths::new(&ca, &e_dir);
    // The node itself refuses to start with it, saying why.
    let err = meridian_mesh::Mesh::start(config("e", "us", e_paths.clone(), vec![a.addr()]))
        .await
        .err()
        .expect("start with an expired cert fails");
    assert!(
        matches!(err, MeshError::Pki(pki::PkiError::InvalidCertificate(_))),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");

    // And peers refuse it when presented anyway (transport used directly).
    let e_certs = pki::NodeCerts::load(&e_paths).unwrap();
    let stats = Arc::new(MeshStats::default());
    let socket = bind_udp_socket(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(LatencyTable::default()),
        stats.clone(),
    )
    .unwrap();
    let e_addr = socket.local_addr().unwrap();
    let (e, _rx) = Transport::new(socket, e_addr, &e_certs, stats).unwrap();
    let r = e.rpc(a.addr(), "echo", b"hi", Duration::from_secs(2)).await;
    assert!(r.is_err(), "expired cert RPC must fail, got {r:?}");
    // The client can see the connection fail before the server has counted
    // its refusal (they race on loopback); the count must follow, bounded.
    let counted = async {
        while a.stats().snapshot().handshakes_refused == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(2), counted)
            .await
            .is_ok(),
        "the refused handshake was never counted"
    );
    assert_eq!(a.stats().snapshot().rpc_served, 0);
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_dropped_and_counted() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    a.register_rpc_handler("echo", echo_handler());

    // Raw UDP garbage of many sizes at the QUIC port (quinn drops it).
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 7, 64, 1199, 1200, 1500, 9000, 65_000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        let _ = raw.send_to(&junk, a.addr());
        // Looks like a QUIC long header.
        let mut hdr = junk.clone();
        if let Some(b) = hdr.first_mut() {
            *b = 0xc0;
        }
        let _ = raw.send_to(&hdr, a.addr());
    }

    // An authenticated peer sending garbage SWIM packets (valid cert, bad payloads).
    let g_certs = pki::NodeCerts::load(&certs(dir.path(), &ca, "g")).unwrap();
    let stats = Arc::new(MeshStats::default());
    let socket = bind_udp_socket(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(LatencyTable::default()),
        stats.clone(),
    )
    .unwrap();
    let g_addr: SocketAddr = socket.local_addr().unwrap();
    let (g, _rx) = Transport::new(socket, g_addr, &g_certs, stats).unwrap();
    for i in 0..200u32 {
        let len = (i as usize * 7) % 1100 + 1;
        let junk: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
        g.send_swim(a.addr(), Bytes::from(junk));
    }
    // Oversize RPC frames are refused, not buffered.
    let big = vec![0u8; meridian_mesh::RPC_MESSAGE_MAX_BYTES + 1];
    assert!(matches!(
        g.rpc(a.addr(), "echo", &big, Duration::from_secs(2)).await,
        Err(MeshError::MessageTooLarge)
    ));

    wait_for(Duration::from_secs(3), || {
        a.stats().snapshot().swim_packets_rejected >= 150
    })
    .await
    .unwrap_or_else(|| panic!("garbage SWIM counted: {:?}", a.stats().snapshot()));
    assert_eq!(a.members().len(), 1, "garbage must not create members");

    // a still works: a real node joins and calls it.
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        vec![a.addr()],
    ))
    .await;
    wait_for(CONVERGENCE_BOUND, || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await
    .expect("mesh still works after garbage");
    assert!(b.rpc("a", "echo", b"ok").await.is_ok());
    g.close().await;
}

/// Whether the OS hands quinn whole datagrams larger than quinn's buffer (UDP GRO, Linux):
/// only then can the guard see that a datagram is oversize (otherwise it arrives truncated).
fn receives_oversize_whole() -> bool {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    quinn::udp::UdpSocketState::new((&probe).into())
        .map(|s| s.gro_segments() > 1)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_udp_garbage_on_mesh_port_is_dropped_and_counted() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![])).await;
    a.register_rpc_handler("echo", echo_handler());
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        vec![a.addr()],
    ))
    .await;
    b.register_rpc_handler("echo", echo_handler());
    wait_for(CONVERGENCE_BOUND, || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await
    .expect("converged before the garbage");
    let before = a.stats().snapshot();
    assert_eq!(
        (before.udp_datagrams_garbage, before.udp_datagrams_oversize),
        (0, 0),
        "legit QUIC is never counted as garbage: {before:?}"
    );

    // (datagram, counted as garbage, counted as oversize)
    let mut datagrams: Vec<(Vec<u8>, bool, bool)> = Vec::new();
    // Random bytes with the fixed bit (0x40) clear, short and long header forms.
    for _ in 0..200 {
        let len = 1 + rand::random::<u16>() as usize % 1400;
        let mut junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        junk[0] &= !0x40;
        datagrams.push((junk, true, false));
    }
    // Empty datagrams.
    for _ in 0..20 {
        datagrams.push((Vec::new(), true, false));
    }
    // Long headers with another version (version negotiation included), or too short to
    // hold a version.
    for version in [0u32, 0xff00_001d, 0x0a1a_2a3a, 2] {
        let mut hdr = vec![0u8; 1200];
        hdr[0] = 0xc0;
        hdr[1..5].copy_from_slice(&version.to_be_bytes());
        datagrams.push((hdr, true, false));
        datagrams.push((vec![0xc3, 0, 0], true, false));
    }
    // Oversize, starting like a short header: if the OS truncates it (no GRO) quinn gets a
    // plausible datagram and drops it itself, uncounted.
    let counts_oversize = receives_oversize_whole();
    for len in [
        meridian_mesh::transport::MESH_DATAGRAM_MAX_BYTES + 1,
        2000,
        9000,
        65_000,
    ] {
        let mut big = vec![0xa5u8; len];
        big[0] = 0x41;
        datagrams.push((big, false, counts_oversize));
    }
    let garbage = datagrams.iter().filter(|d| d.1).count() as u64;
    let oversize = datagrams.iter().filter(|d| d.2).count() as u64;
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, (datagram, _, _)) in datagrams.iter().enumerate() {
        raw.send_to(datagram, a.addr()).unwrap();
        if i % 10 == 9 {
            // Paced, so loopback never drops any for a full receive buffer.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    let counted = |h: &meridian_mesh::MeshHandle| {
        let s = h.stats().snapshot();
        (
            s.udp_datagrams_garbage - before.udp_datagrams_garbage,
            s.udp_datagrams_oversize - before.udp_datagrams_oversize,
        )
    };
    wait_for(Duration::from_secs(3), || {
        counted(&a) == (garbage, oversize)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected (garbage, oversize) = {:?}, counted {:?}: {:?}",
            (garbage, oversize),
            counted(&a),
            a.stats().snapshot()
        )
    });
    assert_eq!(a.members().len(), 2, "garbage must not create members");

    // The mesh keeps working: both still alive after a few probe rounds, RPCs both ways.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((alive_peers(&a), alive_peers(&b)), (1, 1));
    assert_eq!(
        b.rpc("a", "echo", b"after").await.unwrap(),
        Bytes::from_static(b"echo:after")
    );
    assert_eq!(
        a.rpc("b", "echo", b"back").await.unwrap(),
        Bytes::from_static(b"echo:back")
    );
    // Legit traffic was never counted: b only ever heard QUIC from a, and a's counts are
    // exactly the garbage sent.
    assert_eq!(counted(&a), (garbage, oversize));
    let sb = b.stats().snapshot();
    assert_eq!(
        (sb.udp_datagrams_garbage, sb.udp_datagrams_oversize),
        (0, 0),
        "{sb:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_pointing_at_nothing_retry_without_crashing() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    // A port nobody listens on.
    let dead: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let a = start(config("a", "eu", certs(dir.path(), &ca, "a"), vec![dead])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = a.stats().snapshot();
    assert!(s.seed_join_attempts >= 2, "retries: {s:?}");
    assert!(s.seed_join_attempts <= 5, "backs off: {s:?}");
    assert_eq!(a.members().len(), 1);
    // Another node joining through a can still form a cluster with it.
    let b = start(config(
        "b",
        "us",
        certs(dir.path(), &ca, "b"),
        vec![a.addr()],
    ))
    .await;
    wait_for(CONVERGENCE_BOUND, || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await
    .expect("cluster forms despite a dead seed");
    a.shutdown().await;
}
