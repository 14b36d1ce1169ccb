//! Skill ratings per game mode: Elo over team averages.
//!
//! Each team plays every other team once per match: score 1 for the winner,
//! 0 for a loser against the winner, 0.5 between two non-winners (and on a
//! draw). Every player of a team moves by the team's change, so a party
//! rises and falls together.

use std::collections::HashMap;

use super::PlayerId;

/// Rating of a player never seen in a mode.
pub const RATING_INITIAL: f64 = 1500.0;
/// Elo K-factor (rating points at stake per pairing).
pub const RATING_K: f64 = 32.0;

/// Ratings of every player in every mode (keyed by mode name).
#[derive(Debug, Default, Clone)]
pub struct Ratings {
    by_mode: HashMap<String, HashMap<PlayerId, f64>>,
}

/// One player's rating change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatingChange {
    pub player_id: PlayerId,
    pub before: f64,
    pub after: f64,
}

fn expected(a: f64, b: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((b - a) / 400.0))
}

impl Ratings {
    pub fn get(&self, mode: &str, player: PlayerId) -> f64 {
        self.by_mode
            .get(mode)
            .and_then(|m| m.get(&player))
            .copied()
            .unwrap_or(RATING_INITIAL)
    }

    /// Loads a stored rating (ignored if not finite).
    pub fn set(&mut self, mode: &str, player: PlayerId, rating: f64) {
        if rating.is_finite() {
            self.by_mode
                .entry(mode.to_string())
                .or_default()
                .insert(player, rating);
        }
    }

    /// Applies one match result. `winner` is a team index, `None` for a draw.
    pub fn record(
        &mut self,
        mode: &str,
        teams: &[Vec<PlayerId>],
        winner: Option<usize>,
    ) -> Vec<RatingChange> {
        let avg: Vec<f64> = teams
            .iter()
            .map(|t| {
                if t.is_empty() {
                    RATING_INITIAL
                } else {
                    t.iter().map(|p| self.get(mode, *p)).sum::<f64>() / t.len() as f64
                }
            })
            .collect();
        let n = teams.len();
        let k = if n > 1 {
            RATING_K / (n - 1) as f64
        } else {
            0.0
        };
        let mut changes = Vec::new();
        for (i, team) in teams.iter().enumerate() {
            let mut delta = 0.0;
            for j in 0..n {
                if i == j {
                    continue;
                }
                let score = match winner {
                    Some(w) if w == i => 1.0,
                    Some(w) if w == j => 0.0,
                    _ => 0.5,
                };
                delta += k * (score - expected(avg[i], avg[j]));
            }
            for p in team {
                let before = self.get(mode, *p);
                changes.push(RatingChange {
                    player_id: *p,
                    before,
                    after: before + delta,
                });
            }
        }
        for c in &changes {
            self.set(mode, c.player_id, c.after);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winner_gains_loser_loses_and_sum_is_conserved() {
        let mut r = Ratings::default();
        let a = vec![uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
        let b = vec![uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
        let ch = r.record("2v2", &[a.clone(), b.clone()], Some(0));
        assert_eq!(ch.len(), 4);
        assert!((r.get("2v2", a[0]) - (RATING_INITIAL + RATING_K / 2.0)).abs() < 1e-9);
        assert!(r.get("2v2", b[0]) < RATING_INITIAL);
        let total: f64 = a.iter().chain(&b).map(|p| r.get("2v2", *p)).sum();
        assert!((total - 4.0 * RATING_INITIAL).abs() < 1e-9);
        // Other modes are untouched.
        assert_eq!(r.get("duel", a[0]), RATING_INITIAL);
        // An upset moves more than an expected win.
        let before = r.get("2v2", b[0]);
        r.record("2v2", &[a.clone(), b.clone()], Some(1));
        assert!(r.get("2v2", b[0]) - before > RATING_K / 2.0);
    }

    #[test]
    fn draw_between_equals_changes_nothing() {
        let mut r = Ratings::default();
        let a = vec![uuid::Uuid::new_v4()];
        let b = vec![uuid::Uuid::new_v4()];
        r.record("duel", &[a.clone(), b], None);
        assert_eq!(r.get("duel", a[0]), RATING_INITIAL);
    }
}
