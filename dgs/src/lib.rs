//! Meridian's dedicated game servers (in progress).
