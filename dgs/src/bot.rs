//! A bot client of the arena game: connects to the game port with its
//! session token, sends one input per tick (chase the nearest enemy,
//! shoot within the fire rate), predicts its own movement and reconciles
//! with the acked input sequence in each snapshot, and returns when the
//! match ends. Used by tests and the load bots.
//!
//! Not for: real players; it trusts the server's messages (but never
//! panics on them).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::arena::{step_movement, ArenaConfig};
use crate::game::{Input, RosterEntry, Snapshot};
use crate::protocol::{AbortReason, ClientMsg, ServerMsg, SlotResult, PACKET_BYTES_MAX};
use crate::token::SessionToken;
use crate::SessionId;

/// Bot limits and the game tunables it predicts with.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// Give up if no `Welcome` arrives within this.
    pub connect_timeout_ms: u64,
    /// Re-send `Connect` this often until welcomed.
    pub connect_retry_ms: u64,
    /// Give up if the match has not ended within this.
    pub match_timeout_ms: u64,
    /// Must match the server's (the tick rate comes from `Welcome`).
    pub arena: ArenaConfig,
    /// Unacked inputs kept for replay; older ones are forgotten.
    pub pending_inputs_max: usize,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            connect_retry_ms: 200,
            match_timeout_ms: 120_000,
            arena: ArenaConfig::default(),
            pending_inputs_max: 128,
        }
    }
}

/// How the bot's match ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BotEnd {
    Ended {
        winner_team: Option<u8>,
        players: Vec<SlotResult>,
    },
    Aborted(AbortReason),
}

/// What the bot saw.
#[derive(Debug, Clone)]
pub struct BotOutcome {
    pub session_id: SessionId,
    pub slot: u8,
    pub team: u8,
    pub end: BotEnd,
    pub inputs_sent: u32,
    pub snapshots: u32,
    /// Largest distance between predicted and reconciled position.
    pub prediction_error_max: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no Welcome within the connect timeout")]
    ConnectTimeout,
    #[error("match did not end within the match timeout")]
    MatchTimeout,
}

/// Plays one match on `server` with `token`.
pub async fn run_bot(
    server: SocketAddr,
    token: &SessionToken,
    cfg: &BotConfig,
) -> Result<BotOutcome, BotError> {
    let bind: SocketAddr = if server.ip().is_loopback() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let mut out = [0u8; PACKET_BYTES_MAX];
    let mut inb = vec![0u8; PACKET_BYTES_MAX + 1];

    // Connect phase.
    let connect = ClientMsg::Connect {
        token: token.0.to_vec(),
    };
    let n = connect.encode(&mut out).expect("a token fits");
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let (session_id, slot, hz, roster) = 'connect: loop {
        if Instant::now() >= deadline {
            return Err(BotError::ConnectTimeout);
        }
        sock.send(&out[..n]).await?;
        let retry = Instant::now() + Duration::from_millis(cfg.connect_retry_ms);
        while let Ok(r) = tokio::time::timeout_at(retry.min(deadline), sock.recv(&mut inb)).await {
            let Ok(m) = r else { continue };
            if let Ok(ServerMsg::Welcome {
                session_id,
                your_slot,
                tick_rate_hz,
                roster,
            }) = ServerMsg::decode(&inb[..m])
            {
                break 'connect (session_id, your_slot, tick_rate_hz, roster);
            }
        }
    };
    let team = roster.iter().find(|r| r.slot == slot).map_or(0, |r| r.team);
    let arena = ArenaConfig {
        tick_rate_hz: hz.max(1),
        ..cfg.arena.clone()
    };
    let mut bot = Brain {
        slot,
        team,
        roster,
        arena,
        seq: 0,
        pending: VecDeque::new(),
        predicted: None,
        last: None,
        ticks_since_fire: u32::MAX,
        error_max: 0.0,
    };

    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / hz.max(1) as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let match_deadline = Instant::now() + Duration::from_millis(cfg.match_timeout_ms);
    let (mut inputs_sent, mut snapshots) = (0u32, 0u32);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(match_deadline) => return Err(BotError::MatchTimeout),
            _ = interval.tick() => {
                // Inputs only once the match ticks; before that they would queue up.
                if bot.last.is_none() {
                    continue;
                }
                let input = bot.next_input(cfg.pending_inputs_max);
                let n = ClientMsg::Input(input).encode(&mut out).expect("an input fits");
                sock.send(&out[..n]).await?;
                inputs_sent += 1;
            }
            r = sock.recv(&mut inb) => {
                let Ok(m) = r else { continue };
                match ServerMsg::decode(&inb[..m]) {
                    Ok(ServerMsg::Snapshot(s)) => {
                        snapshots += 1;
                        bot.on_snapshot(s);
                    }
                    Ok(ServerMsg::MatchEnded { winner_team, players }) => {
                        return Ok(BotOutcome {
                            session_id, slot, team,
                            end: BotEnd::Ended { winner_team, players },
                            inputs_sent, snapshots,
                            prediction_error_max: bot.error_max,
                        });
                    }
                    Ok(ServerMsg::MatchAborted { reason }) => {
                        return Ok(BotOutcome {
                            session_id, slot, team,
                            end: BotEnd::Aborted(reason),
                            inputs_sent, snapshots,
                            prediction_error_max: bot.error_max,
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

struct Brain {
    slot: u8,
    team: u8,
    roster: Vec<RosterEntry>,
    arena: ArenaConfig,
    seq: u32,
    pending: VecDeque<Input>,
    predicted: Option<(f32, f32)>,
    last: Option<Snapshot>,
    ticks_since_fire: u32,
    error_max: f32,
}

impl Brain {
    fn team_of(&self, slot: u8) -> Option<u8> {
        self.roster.iter().find(|r| r.slot == slot).map(|r| r.team)
    }

    fn next_input(&mut self, pending_max: usize) -> Input {
        self.seq += 1;
        let me = self.predicted.unwrap_or((0.0, 0.0));
        let target = self.last.as_ref().and_then(|s| {
            s.players
                .iter()
                .filter(|p| {
                    p.alive && p.slot != self.slot && self.team_of(p.slot) != Some(self.team)
                })
                .map(|p| (p.x, p.y))
                .min_by(|a, b| dist(me, *a).total_cmp(&dist(me, *b)))
        });
        let cooldown = (self.arena.fire_cooldown_ms as u64 * self.arena.tick_rate_hz as u64)
            .div_ceil(1000) as u32;
        let mut input = Input {
            seq: self.seq,
            move_x: 0.0,
            move_y: 0.0,
            aim_x: 1.0,
            aim_y: 0.0,
            fire: false,
        };
        self.ticks_since_fire = self.ticks_since_fire.saturating_add(1);
        if let Some(t) = target {
            let (dx, dy) = (t.0 - me.0, t.1 - me.1);
            let d = (dx * dx + dy * dy).sqrt().max(1e-6);
            input.aim_x = dx / d;
            input.aim_y = dy / d;
            // Close in to 70% of weapon range, strafing a little.
            let toward = if d > self.arena.weapon_range * 0.7 {
                1.0
            } else {
                0.0
            };
            let (mx, my) = (
                input.aim_x * toward - input.aim_y * 0.5,
                input.aim_y * toward + input.aim_x * 0.5,
            );
            let len = (mx * mx + my * my).sqrt();
            if len > 1.0 {
                input.move_x = mx / len;
                input.move_y = my / len;
            } else {
                input.move_x = mx;
                input.move_y = my;
            }
            if d <= self.arena.weapon_range && self.ticks_since_fire > cooldown {
                input.fire = true;
                self.ticks_since_fire = 0;
            }
        }
        if let Some(p) = self.predicted {
            self.predicted = Some(step_movement(&self.arena, p, &input));
        }
        self.pending.push_back(input);
        while self.pending.len() > pending_max {
            self.pending.pop_front();
        }
        input
    }

    fn on_snapshot(&mut self, s: Snapshot) {
        if self.last.as_ref().is_some_and(|l| l.tick >= s.tick) {
            return; // reordered datagram
        }
        if let Some(me) = s.players.iter().find(|p| p.slot == self.slot) {
            while self
                .pending
                .front()
                .is_some_and(|i| i.seq <= me.last_input_seq)
            {
                self.pending.pop_front();
            }
            let mut pos = (me.x, me.y);
            if me.alive {
                for i in &self.pending {
                    pos = step_movement(&self.arena, pos, i);
                }
                // A death or respawn teleports: not a misprediction.
                let was_alive_same_life = self.last.as_ref().is_some_and(|l| {
                    l.players
                        .iter()
                        .any(|p| p.slot == self.slot && p.alive && p.deaths == me.deaths)
                });
                if let (Some(before), true) = (self.predicted, was_alive_same_life) {
                    self.error_max = self.error_max.max(dist(before, pos));
                }
            }
            self.predicted = Some(pos);
        }
        self.last = Some(s);
    }
}

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}
