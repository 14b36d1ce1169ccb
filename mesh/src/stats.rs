//! Plain atomic counters of the mesh, read by the node's Prometheus exporter.
//!
//! Counters only ever increase; gauges (members by state, RTT) come from
//! [`crate::MeshHandle::members`].

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats_struct {
    ($(#[$meta:meta])* $name:ident, $snap:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: AtomicU64,)*
        }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $snap {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        impl $name {
            /// Copies every counter (each read is relaxed; the copy is not atomic as a whole).
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats_struct!(
    /// Counters of one mesh instance (SWIM, transport, RPC, raw UDP on the mesh port).
    ///
    /// The `udp_datagrams_*` counters come from the socket guard in
    /// [`crate::transport::bind_udp_socket`]: it inspects every received UDP datagram (each
    /// GRO segment separately) before quinn sees it, and drops and counts the ones that cannot
    /// be QUIC v1 from a mesh peer. Other undecodable packets still reach quinn, which drops
    /// them silently (they are not counted).
    MeshStats, MeshStatsSnapshot {
        /// SWIM packets handed to the transport.
        swim_packets_sent,
        /// SWIM packets received from authenticated peers.
        swim_packets_received,
        /// SWIM packets foca rejected (undecodable, not for us, stale).
        swim_packets_rejected,
        /// SWIM packets dropped: queue full, oversize, or no connection to the peer.
        swim_packets_dropped,
        /// Probe rounds foca ran (one per probe period).
        swim_probes,
        /// Suspicions raised (a member went suspect; it turns down unless refuted in time).
        swim_suspicions,
        /// Suspicions that outlived their timer (foca dropped it on going idle or rejoining)
        /// and were turned into down by the mesh's sweep ([`crate::membership::SuspicionSweep`]).
        swim_stale_suspicions_expired,
        /// Members that went from alive to down (foca `MemberDown`).
        members_down_events,
        /// Members that came up (foca `MemberUp`).
        members_up_events,
        /// Times this node's own identity was suspected and renewed (foca `Rejoin`).
        self_rejoins,
        /// Announce rounds to the seed list while no member is known.
        seed_join_attempts,
        /// Outgoing QUIC connections established.
        connections_dialed,
        /// Incoming QUIC connections accepted (TLS client cert verified).
        connections_accepted,
        /// Dial attempts that failed (unreachable, handshake or certificate refused).
        connections_dial_failed,
        /// Incoming handshakes that failed (e.g. no or foreign client certificate).
        handshakes_refused,
        /// RPC requests sent.
        rpc_sent,
        /// RPC requests served.
        rpc_served,
        /// RPCs that failed on the client side (timeout, transport, remote error).
        rpc_failed,
        /// Incoming RPC or one-way frames refused (oversize, undecodable, unknown service).
        rpc_rejected,
        /// Connections closed because the peer broke a service's protocol (a handler
        /// answered with [`crate::transport::PROTOCOL_VIOLATION`], or the node dropped a peer
        /// whose reply was malformed).
        connections_dropped_for_violation,
        /// One-way messages sent on unidirectional streams.
        oneway_sent,
        /// One-way messages received.
        oneway_received,
        /// Packets dropped by latency injection because its queue was full.
        latency_queue_dropped,
        /// UDP datagrams on the mesh port dropped before quinn because they cannot be QUIC v1:
        /// empty, fixed bit (0x40) of the first byte clear, or a long header that is too short
        /// or whose version is not QUIC v1 (version negotiation included: every mesh node
        /// speaks v1 only).
        udp_datagrams_garbage,
        /// UDP datagrams on the mesh port dropped before quinn because they are larger than
        /// [`crate::transport::MESH_DATAGRAM_MAX_BYTES`].
        udp_datagrams_oversize,
    }
);

impl MeshStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
