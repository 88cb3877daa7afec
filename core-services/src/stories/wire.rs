//! The `Stories` service on the wire. Every operation acts as the session's user and runs
//! on that user's owner shard, where their rate limits live; the `StoryTray`
//! subscription carries new stories of followed accounts and, for authors, views and
//! reactions of their own.

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::stories::{self as ps, StoriesOp, StoriesOpT};
use selfie_protocol::{Body, common};
use selfie_storage::{Cursor, Store};

use super::{NewStory, Stories, StoryView, TrayEntry};
use crate::plane::{
    Call, Delivery, Subscription, Topic, envelope, ids, make, page_request, page_t, service_table,
    user_ref, wire_enum,
};
use crate::posts::Audience;
use crate::tables::stories::Story;
use crate::{Error, Result};

/// The stories service of one shard, on the wire.
#[derive(Clone)]
pub struct StoriesWire<S>(pub Rc<Stories<S>>);

service_table! {
    impl[S: Store + Clone + 'static] StoriesWire<S>;
    body body_as_stories, ops StoriesOp, answers StoriesOpT in Stories(ps::StoriesT),
        subscribe subscribe;
    CreateStoryRequest(op_as_create_story_request) => create, owner |_r, me| me?;
    DeleteStoryRequest(op_as_delete_story_request) => delete, owner |_r, me| me?;
    StoryTrayRequest(op_as_story_tray_request) => tray, owner |_r, me| me?;
    UserStoriesRequest(op_as_user_stories_request) => of_user, owner |_r, me| me?;
    StorySeenRequest(op_as_story_seen_request) => seen, owner |_r, me| me?;
    StoryViewersRequest(op_as_story_viewers_request) => viewers, owner |_r, me| me?;
    StoryReactRequest(op_as_story_react_request) => react, owner |_r, me| me?;
    StoryReplyRequest(op_as_story_reply_request) => reply, owner |_r, me| me?;
    HighlightStoryRequest(op_as_highlight_story_request) => highlight, owner |_r, me| me?;
    RemoveHighlightRequest(op_as_remove_highlight_request) => remove_highlight,
        owner |_r, me| me?;
    HighlightsRequest(op_as_highlights_request) => highlights, owner |_r, me| me?;
}

use common::Audience as WireAudience;
wire_enum!(audience, wire_audience: Audience <=> WireAudience, "audience"
    { Public, Followers, MentionedOnly, CloseFriends });

/// A story on the wire.
fn story_t(v: StoryView) -> ps::StoryT {
    let s = v.story;
    make!(ps::StoryT {
        story_id: s.story_id,
        author: user_ref(s.author_id),
        media: Some(Box::new(make!(common::MediaRefT {
            media_id: s.media_id
        }))),
        caption: Some(s.caption),
        link_url: Some(s.link_url),
        audience: wire_audience(s.audience),
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
        seen: v.seen,
        mentions: Some(s.mentions),
        highlighted: v.highlighted,
        viewer_reaction: v.reaction,
    })
}

fn entry_t(e: TrayEntry) -> ps::StoryTrayEntryT {
    make!(ps::StoryTrayEntryT {
        author: user_ref(e.author_id),
        all_seen: e.all_seen,
        latest_at_ms: e.latest_at_ms,
        close_friends: e.close_friends,
        stories: Some(e.stories.into_iter().map(story_t).collect()),
    })
}

/// A `StoryUpdate` for an author: `actor` viewed or reacted to `story`.
pub(super) fn update_event(
    delivery: &Delivery,
    kind: ps::StoryEventKind,
    story: &Story,
    actor: u64,
) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let update = make!(ps::StoryUpdateT {
            kind,
            author_id: story.author_id,
            story_id: story.story_id,
            actor: user_ref(actor),
        });
        let t = make!(ps::StoriesT {
            op: StoriesOpT::StoryUpdate(Box::new(update)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Stories, t.as_union_value())
    })
}

impl<S: Store + Clone + 'static> StoriesWire<S> {
    fn story(call: &Call, v: StoryView) -> Result<Bytes> {
        let story = Some(Box::new(story_t(v)));
        Self::answer(
            call,
            StoriesOpT::StoryResponse(Box::new(make!(ps::StoryResponseT { story }))),
        )
    }

    async fn create(self, call: &Call, r: ps::CreateStoryRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let new = NewStory {
            media_id: r.media_id(),
            caption: r.caption().unwrap_or_default().to_string(),
            link_url: r.link_url().unwrap_or_default().to_string(),
            audience: audience(r.audience())?,
            duration: Some(std::time::Duration::from_millis(r.duration_ms())),
            mentions: ids(r.mentions(), super::MAX_MENTIONS),
            idempotency_key: r.idempotency_key().map(str::to_string),
        };
        let story = self.0.create(me, new).await?;
        Self::story(
            call,
            StoryView {
                story,
                seen: false,
                reaction: None,
                highlighted: false,
            },
        )
    }

    async fn delete(self, call: &Call, r: ps::DeleteStoryRequest<'_>) -> Result<Bytes> {
        self.0.delete(call.user()?, r.story_id()).await?;
        call.ack()
    }

    async fn tray(self, call: &Call, r: ps::StoryTrayRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let (limit, cursor) = page_request(r.page());
        let offset = match cursor {
            None => 0,
            Some(Cursor(c)) => <[u8; 4]>::try_from(c.as_ref())
                .map(|b| u32::from_be_bytes(b) as usize)
                .map_err(|_| Error::InvalidArgument { field: "cursor" })?,
        };
        let (entries, next) = self.0.tray(me, offset, limit).await?;
        let page = make!(common::PageInfoT {
            has_more: next.is_some(),
            next_cursor: next.map(|n| (n as u32).to_be_bytes().to_vec()),
        });
        let tray = make!(ps::StoryTrayT {
            entries: Some(entries.into_iter().map(entry_t).collect()),
            page: Some(Box::new(page)),
        });
        Self::answer(call, StoriesOpT::StoryTray(Box::new(tray)))
    }

    async fn of_user(self, call: &Call, r: ps::UserStoriesRequest<'_>) -> Result<Bytes> {
        let stories = self.0.of_user(call.user()?, r.user_id()).await?;
        let answer = make!(ps::UserStoriesResponseT {
            stories: Some(stories.into_iter().map(story_t).collect()),
        });
        Self::answer(call, StoriesOpT::UserStoriesResponse(Box::new(answer)))
    }

    async fn seen(self, call: &Call, r: ps::StorySeenRequest<'_>) -> Result<Bytes> {
        let story_ids = ids(r.story_ids(), super::MAX_SEEN_BATCH);
        self.0.seen(call.user()?, &story_ids).await?;
        call.ack()
    }

    async fn viewers(self, call: &Call, r: ps::StoryViewersRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let (viewers, next, total) = self
            .0
            .viewers(call.user()?, r.story_id(), limit, cursor)
            .await?;
        let viewers = viewers
            .into_iter()
            .map(|v| {
                make!(ps::StoryViewerT {
                    user: user_ref(v.user_id),
                    seen_at_ms: v.seen_at_ms,
                    reaction: v.reaction,
                })
            })
            .collect();
        let answer = make!(ps::StoryViewersResponseT {
            viewers: Some(viewers),
            page: page_t(next),
            total_count: total,
        });
        Self::answer(call, StoriesOpT::StoryViewersResponse(Box::new(answer)))
    }

    async fn react(self, call: &Call, r: ps::StoryReactRequest<'_>) -> Result<Bytes> {
        let emoji = r.emoji().unwrap_or_default();
        self.0.react(call.user()?, r.story_id(), emoji).await?;
        call.ack()
    }

    async fn reply(self, call: &Call, r: ps::StoryReplyRequest<'_>) -> Result<Bytes> {
        let text = r.text().unwrap_or_default();
        let txn = r.client_msg_id().unwrap_or_default();
        self.0.reply(call.user()?, r.story_id(), text, txn).await?;
        call.ack()
    }

    async fn highlight(self, call: &Call, r: ps::HighlightStoryRequest<'_>) -> Result<Bytes> {
        self.0.highlight(call.user()?, r.story_id()).await?;
        call.ack()
    }

    async fn remove_highlight(
        self,
        call: &Call,
        r: ps::RemoveHighlightRequest<'_>,
    ) -> Result<Bytes> {
        self.0.remove_highlight(call.user()?, r.story_id()).await?;
        call.ack()
    }

    async fn highlights(self, call: &Call, r: ps::HighlightsRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let (stories, next) = self
            .0
            .highlights(call.user()?, r.user_id(), limit, cursor)
            .await?;
        let answer = make!(ps::HighlightsResponseT {
            stories: Some(stories.into_iter().map(story_t).collect()),
            page: page_t(next),
        });
        Self::answer(call, StoriesOpT::HighlightsResponse(Box::new(answer)))
    }
}

/// Opens the caller's `StoryTray` subscription: new stories of the accounts they follow,
/// and views and reactions of their own stories. Nothing is replayed: a client reads the
/// tray after subscribing.
async fn subscribe<S: Store + Clone + 'static>(
    w: StoriesWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::StoryTray {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let target = call
        .op(|e| e.body_as_control()?.op_as_subscribe_request())?
        .target_id();
    if target != 0 && target != me {
        return Err(Error::Forbidden("only your own tray"));
    }
    w.0.spend_read(me)?;
    let delivery = w.0.delivery()?.clone();
    let events = delivery
        .subscribe(Topic::new(SubscriptionKind::StoryTray, me))
        .await?;
    let mut sub = Subscription::new(Vec::new(), events);
    sub.hold =
        w.0.feed()
            .watch_guard(me, crate::feed::LiveKind::Tray)
            .map(|g| Box::new(g) as Box<dyn std::any::Any>);
    Ok(sub)
}
