//! The beacon: echoes, never amplifies, drops oversize/empty, rate-limits per source.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_mesh::beacon::{ping, BeaconServer, BEACON_BURST_PER_SOURCE, BEACON_PACKET_MAX_BYTES};

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacon_echoes_without_amplification_and_rate_limits() {
    let beacon = BeaconServer::bind("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let addr = beacon.local_addr();

    tokio::task::spawn_blocking(move || {
        let c = client();
        let mut buf = [0u8; 70_000];
        // Replies are exactly the request, up to the limit.
        for len in [1usize, 16, BEACON_PACKET_MAX_BYTES] {
            let req: Vec<u8> = (0..len).map(|i| i as u8).collect();
            c.send_to(&req, addr).unwrap();
            let (n, _) = c.recv_from(&mut buf).expect("reply");
            assert!(n <= len, "reply {n} bytes for a {len}-byte request");
            assert_eq!(&buf[..n], &req[..]);
        }
        // Oversize, empty and garbage-sized datagrams get no reply.
        for len in [0usize, BEACON_PACKET_MAX_BYTES + 1, 1500, 65_000] {
            let _ = c.send_to(&vec![0xAB; len], addr);
            assert!(c.recv_from(&mut buf).is_err(), "no reply to {len} bytes");
        }

        // A flood from one source gets at most the burst answered.
        let f = client();
        for _ in 0..200 {
            f.send_to(b"flood", addr).unwrap();
        }
        let mut answered = 0;
        while f.recv_from(&mut buf).is_ok() {
            answered += 1;
        }
        assert!(answered >= 1);
        assert!(
            answered <= BEACON_BURST_PER_SOURCE as usize + 5,
            "{answered} replies to a 200-packet flood"
        );
    })
    .await
    .unwrap();

    let s = beacon.stats();
    assert!(s.dropped_oversize.load(Ordering::Relaxed) >= 3);
    assert!(s.dropped_empty.load(Ordering::Relaxed) >= 1);
    assert!(s.dropped_rate_limited.load(Ordering::Relaxed) >= 100);

    // The ping client (fresh source port, but the same IP: wait for tokens to refill).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rtt = ping(addr, 5, Duration::from_millis(500))
        .await
        .expect("ping answered");
    assert!(rtt < Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_reply_delay_and_none_for_silence() {
    let beacon = BeaconServer::bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(60))
        .await
        .unwrap();
    let rtt = ping(beacon.local_addr(), 3, Duration::from_millis(500))
        .await
        .expect("answered");
    assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
    // Nobody listening.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(ping(dead, 2, Duration::from_millis(100)).await, None);
}
