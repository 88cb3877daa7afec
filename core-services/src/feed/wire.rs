//! The `Feed` service on the wire: home ("Following" and "Home", chronological), the
//! ranked "For you" feed, per-user, hashtag and list pages, "not interested", and the `HomeFeed`
//! subscription. Page reads and marks run on the reader's owner shard, where the
//! reader's rate limits live.

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::Body;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::feed::{self as pf, FeedKind, FeedOp, FeedOpT};
use selfie_protocol::posts as pp;
use selfie_storage::Store;

use super::{Feed, PageAt, RankedAt};
use crate::plane::{Call, Delivery, Subscription, Topic, envelope, make, service_table, user_ref};
use crate::posts::{Viewer, post_t};
use crate::{Error, Result};

/// The feed service of one shard, on the wire.
#[derive(Clone)]
pub struct FeedWire<S>(pub Rc<Feed<S>>);

service_table! {
    impl[S: Store + Clone + 'static] FeedWire<S>;
    body body_as_feed, ops FeedOp, answers FeedOpT in Feed(pf::FeedT),
        subscribe subscribe;
    FeedPageRequest(op_as_feed_page_request) => page, owner |_r, me| me?;
    NotInterestedRequest(op_as_not_interested_request) => not_interested, owner |_r, me| me?;
}

/// A `FeedUpdate` event for the home feed.
pub(super) fn update_event(delivery: &Delivery, new_items: u32, latest: u64) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let update = make!(pf::FeedUpdateT {
            kind: FeedKind::Home,
            new_items,
            latest_post_id: latest,
        });
        let t = make!(pf::FeedT {
            op: FeedOpT::FeedUpdate(Box::new(update)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Feed, t.as_union_value())
    })
}

/// A `StoryUpdate { Created }` event for a reader's tray.
pub(super) fn story_event(delivery: &Delivery, author: u64, story_id: u64) -> Result<Bytes> {
    use selfie_protocol::stories as ps;
    delivery.encode_event(|b, placeholder| {
        let update = make!(ps::StoryUpdateT {
            kind: ps::StoryEventKind::Created,
            author_id: author,
            story_id,
        });
        let t = make!(ps::StoriesT {
            op: ps::StoriesOpT::StoryUpdate(Box::new(update)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Stories, t.as_union_value())
    })
}

/// The `FeedUpdate` a resumed subscription is sent first (not part of the sequence).
fn initial_update(call: &Call, new_items: u32, latest: u64) -> Result<Bytes> {
    call.encode(|b, _| {
        let update = make!(pf::FeedUpdateT {
            kind: FeedKind::Home,
            new_items,
            latest_post_id: latest,
        });
        let t = make!(pf::FeedT {
            op: FeedOpT::FeedUpdate(Box::new(update)),
        })
        .pack(b);
        envelope(b, 0, Body::Feed, t.as_union_value())
    })
}

impl<S: Store + Clone + 'static> FeedWire<S> {
    async fn page(self, call: &Call, r: pf::FeedPageRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me, false)?;
        let (limit, _) = crate::plane::page_request(r.page());
        let cursor = r
            .page()
            .and_then(|p| p.cursor())
            .map(|c| c.bytes())
            .filter(|c| !c.is_empty());
        let at = || cursor.map(PageAt::parse).transpose();
        let answer = match r.kind() {
            FeedKind::Home | FeedKind::Following => {
                let page = self.0.home(me, at()?, limit).await?;
                self.page_t(
                    me,
                    page.items.into_iter().map(|i| (i, 0.0)),
                    page.next,
                    page.newer,
                )
                .await?
            }
            FeedKind::User => {
                let author = r.target_id();
                if author == 0 {
                    return Err(Error::InvalidArgument { field: "target_id" });
                }
                let page = self.0.user(me, author, at()?, limit).await?;
                self.page_t(
                    me,
                    page.items.into_iter().map(|i| (i, 0.0)),
                    page.next,
                    page.newer,
                )
                .await?
            }
            FeedKind::ForYou => {
                let at = cursor.map(RankedAt::parse).transpose()?;
                let page = self.0.for_you(me, at, limit).await?;
                let items = page.items.into_iter().map(|r| (r.item, r.score));
                let mut answer = self.page_t(me, items, None, None).await?;
                answer.page = Some(Box::new(make!(selfie_protocol::common::PageInfoT {
                    has_more: page.next.is_some(),
                    next_cursor: page.next.map(RankedAt::to_bytes),
                })));
                answer
            }
            FeedKind::Hashtag => {
                let tag = r.hashtag().unwrap_or_default();
                let page = self.0.hashtag(me, tag, at()?, limit).await?;
                self.page_t(
                    me,
                    page.items.into_iter().map(|i| (i, 0.0)),
                    page.next,
                    None,
                )
                .await?
            }
            FeedKind::List => {
                let page = self.0.list(me, r.target_id(), at()?, limit).await?;
                self.page_t(
                    me,
                    page.items.into_iter().map(|i| (i, 0.0)),
                    page.next,
                    None,
                )
                .await?
            }
            _ => return Err(Error::InvalidArgument { field: "kind" }),
        };
        Self::answer(call, FeedOpT::FeedPage(Box::new(answer)))
    }

    /// A page on the wire, with each post's counts and what the reader did to it.
    async fn page_t(
        &self,
        me: u64,
        items: impl Iterator<Item = (super::Item, f64)>,
        next: Option<PageAt>,
        newer: Option<PageAt>,
    ) -> Result<pf::FeedPageT> {
        let posts = self.0.posts();
        let mut out = Vec::new();
        for (item, score) in items {
            let id = item.post.post_id;
            let counts = posts.counts(id).await?;
            let viewer = Viewer {
                reaction: posts.viewer_reaction(me, id).await?,
                reposted: posts.viewer_reposted(me, id).await?,
            };
            let reason = if item.reposted_by.is_some() {
                pf::FeedReason::Reposted
            } else {
                pf::FeedReason::Followed
            };
            let post: pp::PostT = post_t(item.post, Some(counts), viewer);
            out.push(make!(pf::FeedItemT {
                post: Some(Box::new(post)),
                reason,
                reposted_by: item.reposted_by.and_then(user_ref),
                score: score as f32,
            }));
        }
        let page_info = make!(selfie_protocol::common::PageInfoT {
            has_more: next.is_some(),
            next_cursor: next.map(PageAt::to_bytes),
        });
        Ok(make!(pf::FeedPageT {
            items: Some(out),
            page: Some(Box::new(page_info)),
            newer_cursor: newer.map(PageAt::to_bytes),
        }))
    }

    async fn not_interested(self, call: &Call, r: pf::NotInterestedRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me, true)?;
        self.0
            .not_interested(me, r.post_id(), r.author_id())
            .await?;
        call.ack()
    }
}

/// Opens the caller's `HomeFeed` subscription. With a `since_cursor` (a page's
/// `newer_cursor`), it first says how many items arrived since (a `FeedUpdate` with
/// `id` 0), then the live updates follow.
async fn subscribe<S: Store + Clone + 'static>(
    w: FeedWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::HomeFeed {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let request = call.op(|e| e.body_as_control()?.op_as_subscribe_request())?;
    if request.target_id() != 0 && request.target_id() != me {
        return Err(Error::Forbidden("only your own home feed"));
    }
    let since = match request.since_cursor() {
        Some(c) if !c.is_empty() => Some(PageAt::parse(c.bytes())?.entry_id),
        _ => None,
    };
    // A subscription costs a page read: it counts what was missed, and it starts a watch
    // of the large authors the reader follows.
    w.0.spend(me, false)?;
    let delivery = w.0.delivery()?.clone();
    // Join first, then count: an item landing in between is counted and pushed (a
    // duplicate hint), never missed.
    let events = delivery
        .subscribe(Topic::new(SubscriptionKind::HomeFeed, me))
        .await?;
    let mut initial = Vec::new();
    if let Some(since) = since {
        let (n, latest) = w.0.new_since(me, since).await?;
        if n > 0 {
            initial.push(initial_update(&call, n, latest)?);
        }
    }
    let mut sub = Subscription::new(initial, events);
    sub.hold =
        w.0.watch_guard(me, super::LiveKind::Home)
            .map(|g| Box::new(g) as Box<dyn std::any::Any>);
    Ok(sub)
}
