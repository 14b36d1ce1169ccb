//! Matchmaking engine (in progress).
