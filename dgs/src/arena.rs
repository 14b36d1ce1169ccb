//! The reference arena game: a 2D twin-stick shooter used by the embedded
//! backend, the bot and the tests, so the whole match loop is real.
//!
//! Rules: players move inside a square at most `max_speed_per_s`, shoot a
//! hitscan ray at most once per `fire_cooldown_ms`, lose `damage` hp per
//! hit, respawn after `respawn_ms`. A kill is worth `score_per_kill`, a hit
//! `score_per_hit`. After `duration_s` the team with the most kills wins
//! (ties broken by score; a full tie is a draw).
//!
//! The server is authoritative: each tick applies at most one queued input
//! per player, so sending inputs faster than the tick rate cannot move a
//! player faster. [`step_movement`] is shared with clients for prediction.

use std::collections::{HashMap, VecDeque};

use crate::game::{
    GameMode, GameResult, Input, InputRejection, MatchSpec, PlayerResult, PlayerSnapshot, Snapshot,
};
use crate::PlayerId;

/// Tunables of the arena game.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArenaConfig {
    pub tick_rate_hz: u32,
    pub duration_s: f32,
    pub arena_size: f32,
    pub max_speed_per_s: f32,
    pub fire_cooldown_ms: u32,
    pub weapon_range: f32,
    pub hit_radius: f32,
    pub damage: u8,
    pub respawn_ms: u32,
    pub score_per_kill: u32,
    pub score_per_hit: u32,
    /// Inputs buffered per player between ticks; more are dropped.
    pub inputs_queued_per_player_max: usize,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        Self {
            tick_rate_hz: 30,
            duration_s: 60.0,
            arena_size: 40.0,
            max_speed_per_s: 8.0,
            fire_cooldown_ms: 250,
            weapon_range: 20.0,
            hit_radius: 1.0,
            damage: 25,
            respawn_ms: 1000,
            score_per_kill: 100,
            score_per_hit: 10,
            inputs_queued_per_player_max: 8,
        }
    }
}

impl ArenaConfig {
    fn ticks(&self, ms: u32) -> u32 {
        ((ms as u64 * self.tick_rate_hz as u64).div_ceil(1000)) as u32
    }
    /// Length of the match in ticks.
    pub fn duration_ticks(&self) -> u32 {
        (self.duration_s * self.tick_rate_hz as f32).ceil().max(1.0) as u32
    }
}

/// Longest accepted move vector (1 plus float slack).
const MOVE_LEN_MAX: f32 = 1.0 + 1e-3;

/// Applies one input's movement to a position: the same code runs on the
/// server and in client prediction. Movement vectors longer than 1 are
/// scaled down (the server also rejects them in `on_input`).
pub fn step_movement(cfg: &ArenaConfig, pos: (f32, f32), input: &Input) -> (f32, f32) {
    let (mut mx, mut my) = (input.move_x, input.move_y);
    if !mx.is_finite() || !my.is_finite() {
        return pos;
    }
    let len = (mx * mx + my * my).sqrt();
    if len > 1.0 {
        mx /= len;
        my /= len;
    }
    let dt = 1.0 / cfg.tick_rate_hz.max(1) as f32;
    let step = cfg.max_speed_per_s * dt;
    (
        (pos.0 + mx * step).clamp(0.0, cfg.arena_size),
        (pos.1 + my * step).clamp(0.0, cfg.arena_size),
    )
}

#[derive(Debug)]
struct Player {
    id: PlayerId,
    slot: u8,
    team: u8,
    spawn: (f32, f32),
    pos: (f32, f32),
    hp: u8,
    alive: bool,
    respawn_tick: u32,
    score: u32,
    kills: u16,
    deaths: u16,
    connected: bool,
    ever_connected: bool,
    last_received_seq: Option<u32>,
    last_applied_seq: u32,
    last_fire_tick: Option<u32>,
    queue: VecDeque<Input>,
}

/// The arena game state for one match.
#[derive(Debug)]
pub struct ArenaGame {
    cfg: ArenaConfig,
    players: Vec<Player>,
    index: HashMap<PlayerId, usize>,
    tick: u32,
    duration_ticks: u32,
    violations: u64,
}

const HP_MAX: u8 = 100;

impl ArenaGame {
    /// A new game for `spec` (assumed validated, see [`MatchSpec::validate`]).
    pub fn new(cfg: ArenaConfig, spec: &MatchSpec) -> Self {
        let teams = spec.teams.len().max(1) as f32;
        let center = cfg.arena_size / 2.0;
        let radius = cfg.arena_size * 0.35;
        let mut players = Vec::new();
        let mut index = HashMap::new();
        for r in spec.roster() {
            let angle = std::f32::consts::TAU * r.team as f32 / teams;
            let offset = (r.slot as f32 % 8.0) * 1.5 - 5.0;
            let spawn = (
                (center + radius * angle.cos() - offset * angle.sin()).clamp(0.0, cfg.arena_size),
                (center + radius * angle.sin() + offset * angle.cos()).clamp(0.0, cfg.arena_size),
            );
            index.insert(r.player_id, players.len());
            players.push(Player {
                id: r.player_id,
                slot: r.slot,
                team: r.team,
                spawn,
                pos: spawn,
                hp: HP_MAX,
                alive: true,
                respawn_tick: 0,
                score: 0,
                kills: 0,
                deaths: 0,
                connected: false,
                ever_connected: false,
                last_received_seq: None,
                last_applied_seq: 0,
                last_fire_tick: None,
                queue: VecDeque::new(),
            });
        }
        let duration_ticks = cfg.duration_ticks();
        Self {
            cfg,
            players,
            index,
            tick: 0,
            duration_ticks,
            violations: 0,
        }
    }

    /// A [`crate::game::GameFactory`] that builds arena games with `cfg`.
    pub fn factory(cfg: ArenaConfig) -> crate::game::GameFactory {
        std::sync::Arc::new(move |spec: &MatchSpec| {
            Box::new(ArenaGame::new(cfg.clone(), spec)) as Box<dyn GameMode>
        })
    }

    fn fire(&mut self, shooter: usize, aim: (f32, f32)) {
        let len = (aim.0 * aim.0 + aim.1 * aim.1).sqrt();
        if len < 1e-6 {
            return;
        }
        let dir = (aim.0 / len, aim.1 / len);
        let (sx, sy) = self.players[shooter].pos;
        let team = self.players[shooter].team;
        let mut best: Option<(usize, f32)> = None;
        for (i, p) in self.players.iter().enumerate() {
            if i == shooter || p.team == team || !p.alive || !p.connected {
                continue;
            }
            let d = (p.pos.0 - sx, p.pos.1 - sy);
            let t = d.0 * dir.0 + d.1 * dir.1;
            if t <= 0.0 || t > self.cfg.weapon_range {
                continue;
            }
            let perp = (d.0 * dir.1 - d.1 * dir.0).abs();
            if perp <= self.cfg.hit_radius && best.is_none_or(|(_, bt)| t < bt) {
                best = Some((i, t));
            }
        }
        let Some((victim, _)) = best else { return };
        let dmg = self.cfg.damage;
        let v = &mut self.players[victim];
        v.hp = v.hp.saturating_sub(dmg);
        let killed = v.hp == 0;
        if killed {
            v.alive = false;
            v.deaths = v.deaths.saturating_add(1);
            v.respawn_tick = self.tick + self.cfg.ticks(self.cfg.respawn_ms);
        }
        let s = &mut self.players[shooter];
        s.score = s.score.saturating_add(self.cfg.score_per_hit);
        if killed {
            s.kills = s.kills.saturating_add(1);
            s.score = s.score.saturating_add(self.cfg.score_per_kill);
        }
    }
}

impl GameMode for ArenaGame {
    fn tick_rate_hz(&self) -> u32 {
        self.cfg.tick_rate_hz
    }

    fn on_join(&mut self, player: PlayerId) {
        if let Some(&i) = self.index.get(&player) {
            self.players[i].connected = true;
            self.players[i].ever_connected = true;
        }
    }

    fn on_leave(&mut self, player: PlayerId) {
        if let Some(&i) = self.index.get(&player) {
            self.players[i].connected = false;
            self.players[i].queue.clear();
        }
    }

    fn on_input(&mut self, player: PlayerId, input: Input) -> Result<(), InputRejection> {
        let Some(&i) = self.index.get(&player) else {
            return Err(InputRejection::NotInMatch);
        };
        let p = &mut self.players[i];
        if !p.connected {
            return Err(InputRejection::NotInMatch);
        }
        if p.last_received_seq.is_some_and(|last| input.seq <= last) {
            return Err(InputRejection::StaleSeq);
        }
        let (mx, my) = (input.move_x, input.move_y);
        if !mx.is_finite() || !my.is_finite() || (mx * mx + my * my).sqrt() > MOVE_LEN_MAX {
            return Err(InputRejection::SpeedLimit);
        }
        if !input.aim_x.is_finite() || !input.aim_y.is_finite() {
            return Err(InputRejection::BadAim);
        }
        if p.queue.len() >= self.cfg.inputs_queued_per_player_max {
            return Err(InputRejection::QueueFull);
        }
        p.last_received_seq = Some(input.seq);
        p.queue.push_back(input);
        Ok(())
    }

    fn tick(&mut self) -> Snapshot {
        self.tick += 1;
        let cooldown = self.cfg.ticks(self.cfg.fire_cooldown_ms);
        for i in 0..self.players.len() {
            let p = &mut self.players[i];
            if !p.alive && self.tick >= p.respawn_tick {
                p.alive = true;
                p.hp = HP_MAX;
                p.pos = p.spawn;
            }
            let Some(input) = p.queue.pop_front() else {
                continue;
            };
            p.last_applied_seq = input.seq;
            if !p.alive {
                continue;
            }
            p.pos = step_movement(&self.cfg, p.pos, &input);
            if input.fire {
                if p.last_fire_tick.is_some_and(|t| self.tick - t < cooldown) {
                    self.violations += 1;
                    continue;
                }
                p.last_fire_tick = Some(self.tick);
                self.fire(i, (input.aim_x, input.aim_y));
            }
        }
        Snapshot {
            tick: self.tick,
            ticks_left: self.duration_ticks.saturating_sub(self.tick),
            players: self
                .players
                .iter()
                .map(|p| PlayerSnapshot {
                    slot: p.slot,
                    x: p.pos.0,
                    y: p.pos.1,
                    hp: p.hp,
                    alive: p.alive,
                    score: p.score,
                    kills: p.kills,
                    deaths: p.deaths,
                    last_input_seq: p.last_applied_seq,
                })
                .collect(),
        }
    }

    fn is_over(&self) -> Option<GameResult> {
        if self.tick < self.duration_ticks {
            return None;
        }
        let teams = self
            .players
            .iter()
            .map(|p| p.team)
            .max()
            .map_or(0, |t| t + 1);
        let mut totals = vec![(0u64, 0u64); teams as usize];
        for p in &self.players {
            totals[p.team as usize].0 += p.kills as u64;
            totals[p.team as usize].1 += p.score as u64;
        }
        let best = totals.iter().max().copied();
        let winner_team = match best {
            Some(b) if totals.iter().filter(|t| **t == b).count() == 1 => {
                totals.iter().position(|t| *t == b).map(|t| t as u8)
            }
            _ => None,
        };
        Some(GameResult {
            players: self
                .players
                .iter()
                .map(|p| PlayerResult {
                    player_id: p.id,
                    team: p.team,
                    score: p.score,
                    kills: p.kills,
                    deaths: p.deaths,
                    connected: p.ever_connected,
                })
                .collect(),
            winner_team,
        })
    }

    fn take_violations(&mut self) -> u64 {
        std::mem::take(&mut self.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(seq: u32, mx: f32, my: f32, fire: bool, aim: (f32, f32)) -> Input {
        Input {
            seq,
            move_x: mx,
            move_y: my,
            aim_x: aim.0,
            aim_y: aim.1,
            fire,
        }
    }

    fn duel(cfg: ArenaConfig) -> (ArenaGame, PlayerId, PlayerId) {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        let spec = MatchSpec {
            mode: "duel".into(),
            teams: vec![vec![a], vec![b]],
        };
        let mut g = ArenaGame::new(cfg, &spec);
        g.on_join(a);
        g.on_join(b);
        (g, a, b)
    }

    #[test]
    fn speed_limit_and_seq_validation() {
        let (mut g, a, _) = duel(ArenaConfig::default());
        assert_eq!(
            g.on_input(a, input(1, 2.0, 0.0, false, (1.0, 0.0))),
            Err(InputRejection::SpeedLimit)
        );
        assert_eq!(
            g.on_input(a, input(1, f32::NAN, 0.0, false, (1.0, 0.0))),
            Err(InputRejection::SpeedLimit)
        );
        assert_eq!(
            g.on_input(a, input(1, 0.0, 0.0, false, (f32::INFINITY, 0.0))),
            Err(InputRejection::BadAim)
        );
        // Exactly length 1 is accepted.
        assert!(g.on_input(a, input(1, 0.6, 0.8, false, (1.0, 0.0))).is_ok());
        assert_eq!(
            g.on_input(a, input(1, 0.0, 0.0, false, (1.0, 0.0))),
            Err(InputRejection::StaleSeq)
        );
        assert_eq!(
            g.on_input(uuid::Uuid::new_v4(), input(5, 0.0, 0.0, false, (1.0, 0.0))),
            Err(InputRejection::NotInMatch)
        );
    }

    #[test]
    fn input_queue_edge_and_one_input_per_tick() {
        let cfg = ArenaConfig::default();
        let max = cfg.inputs_queued_per_player_max;
        let (mut g, a, _) = duel(cfg.clone());
        let start = g.players[0].pos;
        for s in 1..=max as u32 {
            assert!(g.on_input(a, input(s, 1.0, 0.0, false, (1.0, 0.0))).is_ok());
        }
        assert_eq!(
            g.on_input(a, input(max as u32 + 1, 1.0, 0.0, false, (1.0, 0.0))),
            Err(InputRejection::QueueFull)
        );
        let snap = g.tick();
        assert_eq!(snap.players[0].last_input_seq, 1);
        let moved = snap.players[0].x - start.0;
        let step = cfg.max_speed_per_s / cfg.tick_rate_hz as f32;
        assert!(moved <= step + 1e-4, "moved {moved} > {step}");
    }

    #[test]
    fn fire_rate_limit_and_kills() {
        let cfg = ArenaConfig {
            fire_cooldown_ms: 100,
            ..ArenaConfig::default()
        };
        let (mut g, a, _b) = duel(cfg.clone());
        // Put b right in front of a.
        g.players[0].pos = (10.0, 10.0);
        g.players[1].pos = (15.0, 10.0);
        let cooldown = cfg.ticks(cfg.fire_cooldown_ms);
        let mut seq = 0;
        for _ in 0..(cooldown * 4) {
            seq += 1;
            g.on_input(a, input(seq, 0.0, 0.0, true, (1.0, 0.0)))
                .unwrap();
            g.tick();
        }
        // Fired every `cooldown` ticks: 4 hits = 100 damage = one kill.
        assert_eq!(g.players[1].deaths, 1);
        assert_eq!(g.players[0].kills, 1);
        assert_eq!(g.take_violations(), (cooldown as u64 - 1) * 4);
        assert_eq!(
            g.players[0].score,
            4 * cfg.score_per_hit + cfg.score_per_kill
        );
    }

    #[test]
    fn ends_with_winner() {
        let cfg = ArenaConfig {
            duration_s: 0.5,
            ..ArenaConfig::default()
        };
        let (mut g, a, _) = duel(cfg.clone());
        g.players[0].kills = 1;
        for _ in 0..cfg.duration_ticks() - 1 {
            g.tick();
            assert!(g.is_over().is_none());
        }
        let _ = a;
        g.tick();
        let r = g.is_over().unwrap();
        assert_eq!(r.winner_team, Some(0));
        assert_eq!(r.players.len(), 2);
    }

    #[test]
    fn prediction_matches_server() {
        let cfg = ArenaConfig::default();
        let (mut g, a, _) = duel(cfg.clone());
        let mut predicted = g.players[0].pos;
        for s in 1..=20u32 {
            let i = input(s, 0.7, -0.7, false, (1.0, 0.0));
            predicted = step_movement(&cfg, predicted, &i);
            g.on_input(a, i).unwrap();
            g.tick();
        }
        assert_eq!((g.players[0].pos.0, g.players[0].pos.1), predicted);
    }
}
