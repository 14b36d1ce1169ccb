//! The matchmaking engine: tickets in, proposed matches out. Pure state, no
//! I/O and no clock of its own: the caller passes `now` to every call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::{ConfigError, GameModeConfig, MatchmakingConfig, LATENCY_MS_MAX};
use super::rating::Ratings;
use super::{MatchId, PlayerId, TicketId};

/// Most regions the engine knows (a region set is a `u64` bit mask).
pub const REGIONS_MAX: usize = 64;
/// How long a finished ticket's status stays readable, in seconds.
pub const TICKET_STATUS_RETENTION_S: u64 = 300;
/// Finished tickets kept for status at most (oldest forgotten first).
pub const TICKETS_RETAINED_MAX: usize = 200_000;
/// Candidates examined around one anchor ticket per tick (bounds the pass).
pub const CANDIDATES_PER_ANCHOR_MAX: usize = 256;

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error("unknown game mode {0:?}")]
    UnknownMode(String),
    #[error("player {player} already has an active ticket {ticket}")]
    AlreadyQueued { player: PlayerId, ticket: TicketId },
    #[error("the {mode:?} queue is full ({max} tickets)")]
    QueueFull { mode: String, max: usize },
    #[error("latency for region {region:?} must be a number in 0..={LATENCY_MS_MAX} ms")]
    InvalidLatency { region: String },
    #[error("unknown region {region:?}")]
    UnknownRegion { region: String },
    #[error("no latencies given")]
    NoLatencies,
    #[error("no allowed region within {max_latency_ms} ms")]
    NoRegionWithinLatency { max_latency_ms: u32 },
    #[error("a ticket needs at least one player")]
    EmptyParty,
    #[error("party of {size} is larger than a team ({max})")]
    PartyTooLarge { size: usize, max: usize },
    #[error("player {0} appears twice in the party")]
    DuplicatePlayer(PlayerId),
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CancelError {
    #[error("no such ticket")]
    NotFound,
    #[error("ticket belongs to another player")]
    NotOwner,
    #[error("ticket is no longer searching ({0:?})")]
    NotSearching(TicketStatus),
}

/// A join request, as parsed from `POST /matchmaking/join`.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRequest {
    /// The requesting player first, then party members.
    pub players: Vec<PlayerId>,
    pub mode: String,
    /// Measured round-trip per region, in milliseconds.
    pub latencies_ms: BTreeMap<String, f64>,
}

/// Lifecycle of a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "match_id")]
pub enum TicketStatus {
    Searching,
    Matched(MatchId),
    Cancelled,
    Expired,
}

/// A ticket as seen by status calls.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketInfo {
    pub ticket_id: TicketId,
    pub mode: String,
    pub players: Vec<PlayerId>,
    pub status: TicketStatus,
    pub rating: f64,
    pub waited: Duration,
}

/// A match formed by [`Matchmaker::tick`]: allocate it on `region`'s fleet
/// with `teams` as the game server's team list.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposedMatch {
    pub match_id: MatchId,
    pub mode: String,
    pub region: String,
    /// Player ids per team; a party is always on one team.
    pub teams: Vec<Vec<PlayerId>>,
    pub tickets: Vec<TicketId>,
    /// The worst player latency to `region`, in milliseconds.
    pub worst_latency_ms: u32,
    /// Average rating per team.
    pub team_ratings: Vec<f64>,
}

/// A ticket that waited past its mode's `offer_after_s`, for neighbour regions.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferableTicket {
    pub ticket_id: TicketId,
    pub mode: String,
    pub players: Vec<PlayerId>,
    pub rating: f64,
    pub latencies_ms: BTreeMap<String, u32>,
    pub waited: Duration,
}

/// Everything one tick decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    pub matches: Vec<ProposedMatch>,
    pub expired: Vec<TicketId>,
    /// Reported once per ticket.
    pub offerable: Vec<OfferableTicket>,
}

#[derive(Debug)]
struct Ticket {
    id: TicketId,
    mode: usize,
    players: Vec<PlayerId>,
    rating: f64,
    /// Latency per region index (`u32::MAX` = not measured).
    latencies: Vec<u32>,
    /// Regions where this ticket may play (allowed and within the limit).
    mask: u64,
    enqueued: Instant,
    status: TicketStatus,
    offered: bool,
}

struct Mode {
    cfg: GameModeConfig,
    /// Searching tickets of this mode, oldest first (may hold stale ids,
    /// dropped lazily in `tick`).
    queue: Vec<TicketId>,
    searching: usize,
}

/// The engine. One per node; call [`Matchmaker::tick`] every 100–250 ms.
pub struct Matchmaker {
    regions: Vec<String>,
    region_index: HashMap<String, usize>,
    local_region: usize,
    modes: Vec<Mode>,
    mode_index: HashMap<String, usize>,
    tickets: HashMap<TicketId, Ticket>,
    by_player: HashMap<PlayerId, TicketId>,
    finished: VecDeque<(Instant, TicketId)>,
    ratings: Ratings,
}

/// Bookkeeping of one ticket during a tick pass.
struct Cand {
    id: TicketId,
    rating: f64,
    size: u32,
    mask: u64,
    window: f64,
}

impl Matchmaker {
    /// An engine for `local_region`, knowing `regions` (the region catalog).
    pub fn new(
        cfg: &MatchmakingConfig,
        regions: &[String],
        local_region: &str,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if regions.len() > REGIONS_MAX {
            return Err(ConfigError::TooManyRegions { max: REGIONS_MAX });
        }
        let region_index: HashMap<String, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i))
            .collect();
        let local = *region_index
            .get(local_region)
            .ok_or_else(|| ConfigError::UnknownLocalRegion(local_region.to_string()))?;
        Ok(Self {
            regions: regions.to_vec(),
            region_index,
            local_region: local,
            modes: cfg
                .modes
                .iter()
                .map(|m| Mode {
                    cfg: m.clone(),
                    queue: Vec::new(),
                    searching: 0,
                })
                .collect(),
            mode_index: cfg
                .modes
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect(),
            tickets: HashMap::new(),
            by_player: HashMap::new(),
            finished: VecDeque::new(),
            ratings: Ratings::default(),
        })
    }

    /// The configured modes (for `GET /matchmaking/modes`).
    pub fn modes(&self) -> impl Iterator<Item = &GameModeConfig> {
        self.modes.iter().map(|m| &m.cfg)
    }

    pub fn ratings(&self) -> &Ratings {
        &self.ratings
    }

    /// For loading stored ratings and recording results
    /// ([`Ratings::record`]); new tickets use the updated ratings.
    pub fn ratings_mut(&mut self) -> &mut Ratings {
        &mut self.ratings
    }

    /// Searching tickets of `mode` (`None` for an unknown mode).
    pub fn queue_len(&self, mode: &str) -> Option<usize> {
        self.mode_index.get(mode).map(|&i| self.modes[i].searching)
    }

    /// The active ticket of `player`, if any.
    pub fn ticket_of(&self, player: PlayerId) -> Option<TicketId> {
        self.by_player.get(&player).copied()
    }

    /// Queues a ticket.
    pub fn submit(&mut self, req: TicketRequest, now: Instant) -> Result<TicketId, JoinError> {
        let mi = *self
            .mode_index
            .get(&req.mode)
            .ok_or_else(|| JoinError::UnknownMode(req.mode.clone()))?;
        let cfg = &self.modes[mi].cfg;
        if req.players.is_empty() {
            return Err(JoinError::EmptyParty);
        }
        if req.players.len() > cfg.team_size as usize {
            return Err(JoinError::PartyTooLarge {
                size: req.players.len(),
                max: cfg.team_size as usize,
            });
        }
        for (i, p) in req.players.iter().enumerate() {
            if req.players[..i].contains(p) {
                return Err(JoinError::DuplicatePlayer(*p));
            }
            if let Some(t) = self.by_player.get(p) {
                return Err(JoinError::AlreadyQueued {
                    player: *p,
                    ticket: *t,
                });
            }
        }
        if req.latencies_ms.is_empty() {
            return Err(JoinError::NoLatencies);
        }
        let mut latencies = vec![u32::MAX; self.regions.len()];
        for (region, ms) in &req.latencies_ms {
            let Some(&ri) = self.region_index.get(region) else {
                return Err(JoinError::UnknownRegion {
                    region: region.clone(),
                });
            };
            if !ms.is_finite() || *ms < 0.0 || *ms > LATENCY_MS_MAX as f64 {
                return Err(JoinError::InvalidLatency {
                    region: region.clone(),
                });
            }
            latencies[ri] = ms.round() as u32;
        }
        let mut mask = 0u64;
        for (ri, ms) in latencies.iter().enumerate() {
            let allowed = cfg.allow_remote_region || ri == self.local_region;
            if allowed && *ms <= cfg.max_latency_ms {
                mask |= 1 << ri;
            }
        }
        if mask == 0 {
            return Err(JoinError::NoRegionWithinLatency {
                max_latency_ms: cfg.max_latency_ms,
            });
        }
        if self.modes[mi].searching >= cfg.queue_tickets_max {
            return Err(JoinError::QueueFull {
                mode: cfg.name.clone(),
                max: cfg.queue_tickets_max,
            });
        }
        let rating = req
            .players
            .iter()
            .map(|p| self.ratings.get(&cfg.name, *p))
            .sum::<f64>()
            / req.players.len() as f64;
        let id = uuid::Uuid::new_v4();
        for p in &req.players {
            self.by_player.insert(*p, id);
        }
        self.tickets.insert(
            id,
            Ticket {
                id,
                mode: mi,
                players: req.players,
                rating,
                latencies,
                mask,
                enqueued: now,
                status: TicketStatus::Searching,
                offered: false,
            },
        );
        let mode = &mut self.modes[mi];
        mode.queue.push(id);
        mode.searching += 1;
        Ok(id)
    }

    /// Cancels `ticket` on behalf of `requester` (any player of the ticket).
    pub fn cancel(
        &mut self,
        ticket: TicketId,
        requester: PlayerId,
        now: Instant,
    ) -> Result<(), CancelError> {
        let t = self.tickets.get(&ticket).ok_or(CancelError::NotFound)?;
        if !t.players.contains(&requester) {
            return Err(CancelError::NotOwner);
        }
        if t.status != TicketStatus::Searching {
            return Err(CancelError::NotSearching(t.status));
        }
        self.finish(ticket, TicketStatus::Cancelled, now);
        Ok(())
    }

    /// Status of a ticket (kept [`TICKET_STATUS_RETENTION_S`] after it ends).
    pub fn ticket(&self, ticket: TicketId, now: Instant) -> Option<TicketInfo> {
        let t = self.tickets.get(&ticket)?;
        Some(TicketInfo {
            ticket_id: t.id,
            mode: self.modes[t.mode].cfg.name.clone(),
            players: t.players.clone(),
            status: t.status,
            rating: t.rating,
            waited: now.saturating_duration_since(t.enqueued),
        })
    }

    /// Puts the tickets of a match that could not be allocated back into
    /// the queue with their original wait time. Tickets whose players have
    /// queued again meanwhile are cancelled instead. Returns how many were
    /// requeued.
    pub fn release_match(&mut self, m: &ProposedMatch) -> usize {
        let mut n = 0;
        for id in &m.tickets {
            let Some(t) = self.tickets.get_mut(id) else {
                continue;
            };
            if t.status != TicketStatus::Matched(m.match_id) {
                continue;
            }
            if t.players.iter().any(|p| self.by_player.contains_key(p)) {
                t.status = TicketStatus::Cancelled;
                continue;
            }
            t.status = TicketStatus::Searching;
            for p in &t.players {
                self.by_player.insert(*p, *id);
            }
            let mode = &mut self.modes[t.mode];
            mode.queue.push(*id);
            mode.searching += 1;
            n += 1;
        }
        // Keep each mode's queue ordered by enqueue time.
        for mode in &mut self.modes {
            let tickets = &self.tickets;
            mode.queue
                .sort_by_key(|id| tickets.get(id).map(|t| t.enqueued));
        }
        n
    }

    fn finish(&mut self, id: TicketId, status: TicketStatus, now: Instant) {
        let t = self.tickets.get_mut(&id).expect("ticket exists");
        assert_eq!(
            t.status,
            TicketStatus::Searching,
            "ticket {id} finished twice"
        );
        t.status = status;
        for p in &t.players {
            if self.by_player.get(p) == Some(&id) {
                self.by_player.remove(p);
            }
        }
        self.modes[t.mode].searching -= 1;
        self.finished.push_back((now, id));
    }

    /// One matchmaking pass: expires old tickets, reports offerable ones,
    /// forms matches, forgets long-finished tickets.
    pub fn tick(&mut self, now: Instant) -> TickReport {
        let mut report = TickReport::default();
        for mi in 0..self.modes.len() {
            self.tick_mode(mi, now, &mut report);
        }
        let retention = Duration::from_secs(TICKET_STATUS_RETENTION_S);
        while let Some(&(at, id)) = self.finished.front() {
            let old = now.saturating_duration_since(at) >= retention;
            if !old && self.finished.len() <= TICKETS_RETAINED_MAX {
                break;
            }
            self.finished.pop_front();
            // A released match put its tickets back to searching: keep those.
            if self
                .tickets
                .get(&id)
                .is_some_and(|t| t.status != TicketStatus::Searching)
            {
                self.tickets.remove(&id);
            }
        }
        report
    }

    fn tick_mode(&mut self, mi: usize, now: Instant, report: &mut TickReport) {
        let cfg = self.modes[mi].cfg.clone();
        let max_wait = Duration::from_secs(cfg.max_wait_s);
        let offer_after = Duration::from_secs(cfg.offer_after_s);
        // Drop stale ids, expire, collect candidates (queue is oldest first).
        let queue = std::mem::take(&mut self.modes[mi].queue);
        let mut live = Vec::with_capacity(queue.len());
        let mut cands = Vec::with_capacity(queue.len());
        for id in queue {
            let Some(t) = self.tickets.get(&id) else {
                continue;
            };
            if t.status != TicketStatus::Searching || t.mode != mi {
                continue;
            }
            let waited = now.saturating_duration_since(t.enqueued);
            if waited >= max_wait {
                self.finish(id, TicketStatus::Expired, now);
                report.expired.push(id);
                continue;
            }
            let t = self.tickets.get_mut(&id).expect("present");
            if cfg.allow_remote_region && !t.offered && waited >= offer_after {
                t.offered = true;
                report.offerable.push(OfferableTicket {
                    ticket_id: id,
                    mode: cfg.name.clone(),
                    players: t.players.clone(),
                    rating: t.rating,
                    latencies_ms: t
                        .latencies
                        .iter()
                        .enumerate()
                        .filter(|(_, ms)| **ms != u32::MAX)
                        .map(|(ri, ms)| (self.regions[ri].clone(), *ms))
                        .collect(),
                    waited,
                });
            }
            live.push(id);
            cands.push(Cand {
                id,
                rating: t.rating,
                size: t.players.len() as u32,
                mask: t.mask,
                window: cfg.skill_window(waited.as_secs_f64()),
            });
        }
        let need = cfg.players_per_match();
        let total: u32 = cands.iter().map(|c| c.size).sum();
        if total >= need {
            self.form_matches(&cfg, &cands, now, report);
        }
        // Keep the ones still searching, in age order.
        live.retain(|id| {
            self.tickets
                .get(id)
                .is_some_and(|t| t.status == TicketStatus::Searching)
        });
        self.modes[mi].queue = live;
    }

    fn form_matches(
        &mut self,
        cfg: &GameModeConfig,
        cands: &[Cand],
        now: Instant,
        report: &mut TickReport,
    ) {
        let need = cfg.players_per_match();
        // Rating order, as a doubly linked list of the untaken.
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|a, b| cands[*a].rating.total_cmp(&cands[*b].rating));
        let mut pos = vec![0usize; cands.len()];
        for (p, &c) in order.iter().enumerate() {
            pos[c] = p;
        }
        let n = order.len();
        let mut prev: Vec<Option<usize>> = (0..n).map(|p| p.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|p| (p + 1 < n).then_some(p + 1)).collect();
        let mut taken = vec![false; cands.len()];
        let mut remaining: u32 = cands.iter().map(|c| c.size).sum();

        // Anchors oldest first: cands is in queue (age) order.
        for anchor in 0..cands.len() {
            if remaining < need {
                break;
            }
            if taken[anchor] {
                continue;
            }
            let a = &cands[anchor];
            let mut picked = vec![anchor];
            let mut size = a.size;
            let mut mask = a.mask;
            let (mut l, mut r) = (prev[pos[anchor]], next[pos[anchor]]);
            let mut scanned = 0;
            while size < need && scanned < CANDIDATES_PER_ANCHOR_MAX {
                let dl = l.map(|p| a.rating - cands[order[p]].rating);
                let dr = r.map(|p| cands[order[p]].rating - a.rating);
                let (p, d, left) = match (dl, dr) {
                    (Some(x), Some(y)) if x <= y => (l.unwrap(), x, true),
                    (_, Some(y)) => (r.unwrap(), y, false),
                    (Some(x), None) => (l.unwrap(), x, true),
                    (None, None) => break,
                };
                if d > a.window {
                    break; // the closer side is already out of the window
                }
                if left {
                    l = prev[p];
                } else {
                    r = next[p];
                }
                scanned += 1;
                let c = &cands[order[p]];
                if size + c.size > need || mask & c.mask == 0 || d > c.window.max(a.window) {
                    continue;
                }
                picked.push(order[p]);
                size += c.size;
                mask &= c.mask;
            }
            if size != need {
                continue;
            }
            let Some(teams) = assign_teams(cfg, cands, &picked) else {
                continue;
            };
            for &c in &picked {
                taken[c] = true;
                remaining -= cands[c].size;
                let p = pos[c];
                if let Some(pp) = prev[p] {
                    next[pp] = next[p];
                }
                if let Some(nn) = next[p] {
                    prev[nn] = prev[p];
                }
            }
            report
                .matches
                .push(self.commit_match(cfg, cands, &teams, mask, now));
        }
    }

    fn commit_match(
        &mut self,
        cfg: &GameModeConfig,
        cands: &[Cand],
        teams: &[Vec<usize>],
        mask: u64,
        now: Instant,
    ) -> ProposedMatch {
        let match_id = uuid::Uuid::new_v4();
        let all: Vec<usize> = teams.iter().flatten().copied().collect();
        // Region minimizing the worst latency; ties go to the local region.
        let mut best: Option<(u32, bool, usize)> = None;
        for ri in 0..self.regions.len() {
            if mask & (1 << ri) == 0 {
                continue;
            }
            let worst = all
                .iter()
                .map(|&c| self.tickets[&cands[c].id].latencies[ri])
                .max()
                .unwrap_or(0);
            let key = (worst, ri != self.local_region, ri);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let (worst, _, region) = best.expect("a picked set always shares a region");
        assert!(worst <= cfg.max_latency_ms);
        let mut player_teams = Vec::with_capacity(teams.len());
        let mut team_ratings = Vec::with_capacity(teams.len());
        for team in teams {
            let mut players = Vec::new();
            let mut sum = 0.0;
            for &c in team {
                let t = &self.tickets[&cands[c].id];
                sum += t.rating * t.players.len() as f64;
                players.extend(t.players.iter().copied());
            }
            team_ratings.push(sum / players.len().max(1) as f64);
            player_teams.push(players);
        }
        let mut tickets = Vec::with_capacity(all.len());
        for &c in &all {
            let id = cands[c].id;
            // Invariant: a ticket is in one match at most (asserted in `finish`).
            self.finish(id, TicketStatus::Matched(match_id), now);
            tickets.push(id);
        }
        ProposedMatch {
            match_id,
            mode: cfg.name.clone(),
            region: self.regions[region].clone(),
            teams: player_teams,
            tickets,
            worst_latency_ms: worst,
            team_ratings,
        }
    }
}

/// Packs picked tickets into `cfg.teams` teams of exactly `team_size`:
/// biggest parties first, each into the fitting team with the lowest rating
/// sum (a greedy balance). `None` if the parties do not pack.
fn assign_teams(cfg: &GameModeConfig, cands: &[Cand], picked: &[usize]) -> Option<Vec<Vec<usize>>> {
    let mut order = picked.to_vec();
    order.sort_by(|a, b| {
        cands[*b]
            .size
            .cmp(&cands[*a].size)
            .then(cands[*b].rating.total_cmp(&cands[*a].rating))
    });
    let mut teams: Vec<(u32, f64, Vec<usize>)> = vec![(0, 0.0, Vec::new()); cfg.teams as usize];
    for c in order {
        let s = cands[c].size;
        let t = teams
            .iter_mut()
            .filter(|t| t.0 + s <= cfg.team_size)
            .min_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)))?;
        t.0 += s;
        t.1 += cands[c].rating * s as f64;
        t.2.push(c);
    }
    teams
        .iter()
        .all(|t| t.0 == cfg.team_size)
        .then(|| teams.into_iter().map(|t| t.2).collect())
}
