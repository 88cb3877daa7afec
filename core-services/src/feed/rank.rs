//! The ranked "For you" feed: the home feed's candidates (the reader's timeline merged
//! with the large authors they follow, every rule re-checked), scored, reordered for
//! diversity, and served from a snapshot so that paging is stable across refreshes.
//!
//! - **Score** ([`Formula`], behind the [`Scorer`] trait so a learned model can replace
//!   it): `recency × affinity × engagement`, where
//!   `recency = 0.5^(age / half_life)`,
//!   `affinity = 1 + affinity_weight · ln(1 + interactions)` (the reader's reactions,
//!   comments, replies, reposts and quotes of the author's posts, counted by the posts
//!   service), and
//!   `engagement = 1 + engagement_weight · ln(1 + reactions + 2·comments + 3·reposts +
//!   2·quotes)`.
//! - **Diversity**: at most [`super::FeedConfig::max_consecutive`] items in a row from one
//!   author (a later item moves up when the next would break the rule).
//! - **Seen filter**: items served on a "For you" page are remembered for
//!   [`SEEN_TTL`]; a refresh (a page without cursor) ranks only what the reader has not
//!   been served, so pulling to refresh brings new things first.
//! - **Stable paging**: a refresh ranks up to [`MAX_CANDIDATES`] candidates once and keeps
//!   the order for [`SNAPSHOT_TTL`] (`feed_for_you`); its pages are slices of it (each
//!   item re-checked when served), so posts arriving meanwhile never shift a page.
//! - "Not interested" (post or author) leaves the candidates, as in the home feed.

use std::time::Duration;

use bytes::Bytes;
use selfie_storage::Store;
use serde::{Deserialize, Serialize};

use super::{Direction, Entry, Feed, Item, PageAt};
use crate::tables::feed::{FOR_YOU, SEEN};
use crate::tables::{self, decode, encode, key as k};
use crate::{Error, Result};

/// Most candidates ranked per refresh.
pub const MAX_CANDIDATES: usize = 300;
/// How long a ranked snapshot serves its pages.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);
/// How long a served item stays out of later refreshes.
pub const SEEN_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// What a scorer sees of one candidate.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The author of the post shown.
    pub author_id: u64,
    /// Its age, in milliseconds.
    pub age_ms: u64,
    /// The reader's past interactions with the author.
    pub affinity: i64,
    /// Reactions, comments, reposts, quotes.
    pub counts: [i64; 4],
    /// Whether it came by a repost.
    pub reposted: bool,
}

/// Scores candidates; higher comes first.
pub trait Scorer {
    /// The candidate's score (finite, ≥ 0).
    fn score(&self, c: &Candidate) -> f64;
}

/// The documented formula (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Formula {
    /// Age at which recency halves.
    pub half_life: Duration,
    /// Weight of the affinity term.
    pub affinity_weight: f64,
    /// Weight of the engagement term.
    pub engagement_weight: f64,
}

impl Default for Formula {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(6 * 3600),
            affinity_weight: 1.0,
            engagement_weight: 0.5,
        }
    }
}

impl Scorer for Formula {
    fn score(&self, c: &Candidate) -> f64 {
        let half_life = self.half_life.as_secs_f64().max(1.0);
        let age = c.age_ms as f64 / 1000.0;
        let recency = 0.5f64.powf(age / half_life);
        let affinity = 1.0 + self.affinity_weight * (1.0 + c.affinity.max(0) as f64).ln();
        let [reactions, comments, reposts, quotes] = c.counts.map(|n| n.max(0) as f64);
        let engagement = 1.0
            + self.engagement_weight
                * (1.0 + reactions + 2.0 * comments + 3.0 * reposts + 2.0 * quotes).ln();
        let s = recency * affinity * engagement;
        if s.is_finite() { s.max(0.0) } else { 0.0 }
    }
}

/// One ranked item of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ranked {
    entry_id: u64,
    author: u64,
    score: f64,
}

/// A scored item of a "For you" page.
#[derive(Debug, Clone)]
pub struct RankedItem {
    /// The item.
    pub item: Item,
    /// Its score.
    pub score: f64,
}

/// A page of the "For you" feed.
#[derive(Debug, Clone)]
pub struct RankedPage {
    /// Items in ranked order.
    pub items: Vec<RankedItem>,
    /// The next page of the same snapshot.
    pub next: Option<RankedAt>,
}

/// Where a "For you" page starts: a snapshot and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankedAt {
    /// The snapshot (its time-ordered id).
    pub snapshot: u64,
    /// Items of it already served.
    pub offset: u32,
}

impl RankedAt {
    /// The wire form: 2, the snapshot, the offset.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = vec![2];
        b.extend_from_slice(&self.snapshot.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b
    }

    /// Parses a cursor (`InvalidArgument` when it is not one).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let bad = || Error::InvalidArgument { field: "cursor" };
        match b {
            [2, rest @ ..] if rest.len() == 12 => Ok(Self {
                snapshot: u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?),
                offset: u32::from_be_bytes(rest[8..].try_into().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        }
    }
}

/// Reorders `ranked` (best first) so that no more than `max` items in a row share an
/// author, moving the next best eligible item up; when none is eligible the rest keep
/// their order.
pub fn diversify<T>(ranked: Vec<T>, author: impl Fn(&T) -> u64, max: usize) -> Vec<T> {
    let max = max.max(1);
    let mut rest: std::collections::VecDeque<T> = ranked.into();
    let mut out: Vec<T> = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let run_author = out.last().map(&author);
        let run = out
            .iter()
            .rev()
            .take_while(|t| Some(author(t)) == run_author)
            .count();
        let pick = if run >= max {
            rest.iter()
                .position(|t| Some(author(t)) != run_author)
                .unwrap_or(0)
        } else {
            0
        };
        if let Some(t) = rest.remove(pick) {
            out.push(t);
        }
    }
    out
}

impl<S: Store + Clone + 'static> Feed<S> {
    /// A page of `reader`'s "For you" feed: a new ranking without `at`, else the next
    /// slice of the snapshot `at` names.
    pub async fn for_you(
        &self,
        reader: u64,
        at: Option<RankedAt>,
        limit: usize,
    ) -> Result<RankedPage> {
        let limit = limit.clamp(1, crate::plane::PAGE_MAX);
        let (snapshot, ranked) = match at {
            Some(at) => {
                let stored = self
                    .store
                    .get(&FOR_YOU, &k(reader), &k(at.snapshot))
                    .await?
                    // An expired (or foreign) snapshot: start again from the top.
                    .ok_or(Error::Stale("for-you snapshot"))?;
                (at.snapshot, decode::<Vec<Ranked>>("ranking", &stored)?)
            }
            None => self.rank(reader).await?,
        };
        let mut offset = at.map_or(0, |a| a.offset as usize);
        let mut items = Vec::with_capacity(limit);
        let mut authors = std::collections::HashMap::new();
        let mut shown = std::collections::HashSet::new();
        while items.len() < limit && offset < ranked.len() {
            let r = &ranked[offset];
            offset += 1;
            let entry = Entry {
                id: r.entry_id,
                author: r.author,
            };
            if let Some(item) = self
                .check(
                    reader,
                    entry,
                    &mut authors,
                    &mut shown,
                    super::Rule::Followed,
                )
                .await?
            {
                items.push(RankedItem {
                    item,
                    score: r.score,
                });
            }
        }
        for i in &items {
            self.store
                .put(
                    &SEEN,
                    &k(reader),
                    &k(i.item.post.post_id),
                    b"",
                    Some(SEEN_TTL),
                )
                .await?;
        }
        let next = (offset < ranked.len()).then_some(RankedAt {
            snapshot,
            offset: offset as u32,
        });
        Ok(RankedPage { items, next })
    }

    /// Ranks `reader`'s unseen candidates and keeps the order as a new snapshot.
    async fn rank(&self, reader: u64) -> Result<(u64, Vec<Ranked>)> {
        let now = self.clock.now_ms();
        let mut candidates = Vec::new();
        let mut at: Option<PageAt> = None;
        // A bounded number of home pages, however many entries the rules leave out.
        for _ in 0..MAX_CANDIDATES.div_ceil(crate::plane::PAGE_MAX) {
            if candidates.len() >= MAX_CANDIDATES {
                break;
            }
            let page = self.home(reader, at, crate::plane::PAGE_MAX).await?;
            for item in page.items {
                let seen = self
                    .store
                    .get(&SEEN, &k(reader), &k(item.post.post_id))
                    .await?
                    .is_some();
                if !seen {
                    candidates.push(item);
                }
            }
            match page.next {
                Some(n) if n.direction == Direction::Older => at = Some(n),
                _ => break,
            }
        }
        candidates.truncate(MAX_CANDIDATES);
        let mut scored = Vec::with_capacity(candidates.len());
        for item in candidates {
            let author = item.post.author_id;
            let affinity = self
                .store
                .counter_get(&tables::posts::AFFINITY, &k(reader), &k(author))
                .await?;
            let c = Candidate {
                author_id: author,
                age_ms: now.saturating_sub(item.post.created_at_ms),
                affinity,
                counts: self.posts.counts(item.post.post_id).await?,
                reposted: item.reposted_by.is_some(),
            };
            let entry_author = item.reposted_by.unwrap_or(author);
            scored.push((
                Ranked {
                    entry_id: item.entry_id,
                    author: entry_author,
                    score: self.scorer.score(&c),
                },
                author,
            ));
        }
        scored.sort_by(|a, b| {
            b.0.score
                .total_cmp(&a.0.score)
                .then(b.0.entry_id.cmp(&a.0.entry_id))
        });
        let ranked: Vec<Ranked> = diversify(scored, |(_, a)| *a, self.config.max_consecutive)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        // Snapshot ids only need to be unique per reader.
        let snapshot = rand::random::<u64>();
        let value: Bytes = encode("ranking", &ranked)?.into();
        self.store
            .put(
                &FOR_YOU,
                &k(reader),
                &k(snapshot),
                &value,
                Some(SNAPSHOT_TTL),
            )
            .await?;
        Ok((snapshot, ranked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(age_h: u64, affinity: i64, reactions: i64) -> Candidate {
        Candidate {
            author_id: 1,
            age_ms: age_h * 3_600_000,
            affinity,
            counts: [reactions, 0, 0, 0],
            reposted: false,
        }
    }

    #[test]
    fn the_formula_decays_with_age_and_grows_with_affinity_and_engagement() {
        let f = Formula::default();
        // Recency halves every half-life.
        let ratio = f.score(&c(6, 0, 0)) / f.score(&c(0, 0, 0));
        assert!((ratio - 0.5).abs() < 1e-9, "{ratio}");
        assert!(f.score(&c(1, 10, 0)) > f.score(&c(1, 0, 0)));
        assert!(f.score(&c(1, 0, 100)) > f.score(&c(1, 0, 0)));
        // A friend's day-old post can outrank a stranger's fresh one.
        assert!(f.score(&c(3, 50, 0)) > f.score(&c(0, 0, 0)));
        // Hostile counts cannot make a score negative or not a number.
        let weird = Candidate {
            counts: [i64::MIN, i64::MAX, -5, 0],
            affinity: i64::MIN,
            ..c(0, 0, 0)
        };
        let s = f.score(&weird);
        assert!(s.is_finite() && s >= 0.0);
    }

    #[test]
    fn the_weights_set_what_affinity_and_engagement_count_for() {
        let plain = Formula {
            affinity_weight: 0.0,
            engagement_weight: 0.0,
            ..Formula::default()
        };
        // Weighted zero: only recency counts.
        assert_eq!(plain.score(&c(1, 50, 0)), plain.score(&c(1, 0, 100)));
        // A heavier weight makes the same affinity count for more.
        let friends = Formula {
            affinity_weight: 4.0,
            ..Formula::default()
        };
        let gain = |f: &Formula| f.score(&c(1, 10, 0)) / f.score(&c(1, 0, 0));
        assert!(gain(&friends) > gain(&Formula::default()));
        let viral = Formula {
            engagement_weight: 4.0,
            ..Formula::default()
        };
        let gain = |f: &Formula| f.score(&c(1, 0, 100)) / f.score(&c(1, 0, 0));
        assert!(gain(&viral) > gain(&Formula::default()));
    }

    #[test]
    fn diversity_breaks_long_runs_of_one_author() {
        let ranked = vec![1, 1, 1, 1, 2, 3, 1];
        assert_eq!(diversify(ranked, |a| *a, 2), vec![1, 1, 2, 1, 1, 3, 1]);
        // Nothing else to move up: the run stays.
        assert_eq!(diversify(vec![4, 4, 4], |a| *a, 1), vec![4, 4, 4]);
        assert_eq!(diversify(vec![5, 5, 6, 6], |a| *a, 1), vec![5, 6, 5, 6]);
    }

    #[test]
    fn ranked_cursors_round_trip_and_refuse_garbage() {
        let at = RankedAt {
            snapshot: 77,
            offset: 20,
        };
        assert_eq!(RankedAt::parse(&at.to_bytes()).expect("parsed"), at);
        assert!(RankedAt::parse(&[2, 0]).is_err());
        assert!(RankedAt::parse(&[0; 13]).is_err());
    }
}
