//! Meridian's region mesh: SWIM membership over QUIC (in progress).
