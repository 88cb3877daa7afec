//! Stories in the client: typed requests ([`StoriesApi`], from [`Client::stories`]):
//! post, the tray, an account's live stories, seen, viewers, reactions, replies (sent as
//! chat messages, once per transaction id), highlights, and the live `StoryTray`
//! subscription.

use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::stories::{self as ps, StoriesOpT};
use selfie_protocol::{BodyT, EnvelopeT, common};

use crate::{Client, ClientError, Subscription};

/// Typed stories requests over one session.
pub struct StoriesApi<'a>(&'a Client);

impl Client {
    /// This session's stories requests.
    pub fn stories(&self) -> StoriesApi<'_> {
        StoriesApi(self)
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

fn page(limit: u16, cursor: Option<Vec<u8>>) -> Option<Box<common::PageRequestT>> {
    let mut p = common::PageRequestT::default();
    p.limit = limit;
    p.cursor = cursor;
    Some(Box::new(p))
}

impl StoriesApi<'_> {
    /// Sends a stories operation and returns the answer's operation (`NONE` for an
    /// `Ack`).
    pub async fn call(&self, op: StoriesOpT) -> Result<StoriesOpT, ClientError> {
        let frame = self
            .0
            .request(|b, id| {
                let mut stories = ps::StoriesT::default();
                stories.op = op;
                let mut e = EnvelopeT::default();
                e.id = id;
                e.body = BodyT::Stories(Box::new(stories));
                e.pack(b)
            })
            .await?;
        match frame.envelope().unpack().body {
            BodyT::Stories(s) => Ok(s.op),
            BodyT::Control(_) => Ok(StoriesOpT::NONE),
            _ => Err(unexpected("a stories answer")),
        }
    }

    async fn ack(&self, op: StoriesOpT) -> Result<(), ClientError> {
        self.call(op).await.map(|_| ())
    }

    /// Posts a story of `media_id` for `audience` (public, followers or close friends).
    pub async fn create(
        &self,
        media_id: u64,
        caption: &str,
        audience: common::Audience,
        idempotency_key: Option<&str>,
    ) -> Result<ps::StoryT, ClientError> {
        let mut r = ps::CreateStoryRequestT::default();
        r.media_id = media_id;
        r.caption = Some(caption.to_string());
        r.audience = audience;
        r.idempotency_key = idempotency_key.map(str::to_string);
        match self
            .call(StoriesOpT::CreateStoryRequest(Box::new(r)))
            .await?
        {
            StoriesOpT::StoryResponse(s) => s.story.map(|s| *s).ok_or(unexpected("a story")),
            _ => Err(unexpected("StoryResponse")),
        }
    }

    /// Deletes one of this user's stories.
    pub async fn delete(&self, story_id: u64) -> Result<(), ClientError> {
        let mut r = ps::DeleteStoryRequestT::default();
        r.story_id = story_id;
        self.ack(StoriesOpT::DeleteStoryRequest(Box::new(r))).await
    }

    /// One page of the tray.
    pub async fn tray(
        &self,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<ps::StoryTrayT, ClientError> {
        let mut r = ps::StoryTrayRequestT::default();
        r.page = page(limit, cursor);
        match self.call(StoriesOpT::StoryTrayRequest(Box::new(r))).await? {
            StoriesOpT::StoryTray(t) => Ok(*t),
            _ => Err(unexpected("StoryTray")),
        }
    }

    /// `user_id`'s live stories this user may see.
    pub async fn of_user(&self, user_id: u64) -> Result<Vec<ps::StoryT>, ClientError> {
        let mut r = ps::UserStoriesRequestT::default();
        r.user_id = user_id;
        match self
            .call(StoriesOpT::UserStoriesRequest(Box::new(r)))
            .await?
        {
            StoriesOpT::UserStoriesResponse(s) => Ok(s.stories.unwrap_or_default()),
            _ => Err(unexpected("UserStoriesResponse")),
        }
    }

    /// Marks stories seen.
    pub async fn seen(&self, story_ids: &[u64]) -> Result<(), ClientError> {
        let mut r = ps::StorySeenRequestT::default();
        r.story_ids = Some(story_ids.to_vec());
        self.ack(StoriesOpT::StorySeenRequest(Box::new(r))).await
    }

    /// One page of the viewers of this user's story.
    pub async fn viewers(
        &self,
        story_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<ps::StoryViewersResponseT, ClientError> {
        let mut r = ps::StoryViewersRequestT::default();
        r.story_id = story_id;
        r.page = page(limit, cursor);
        match self
            .call(StoriesOpT::StoryViewersRequest(Box::new(r)))
            .await?
        {
            StoriesOpT::StoryViewersResponse(v) => Ok(*v),
            _ => Err(unexpected("StoryViewersResponse")),
        }
    }

    /// Reacts to a story.
    pub async fn react(&self, story_id: u64, emoji: &str) -> Result<(), ClientError> {
        let mut r = ps::StoryReactRequestT::default();
        r.story_id = story_id;
        r.emoji = Some(emoji.to_string());
        self.ack(StoriesOpT::StoryReactRequest(Box::new(r))).await
    }

    /// Replies to a story: a chat message to its author, sent once per `client_msg_id`.
    pub async fn reply(
        &self,
        story_id: u64,
        text: &str,
        client_msg_id: &str,
    ) -> Result<(), ClientError> {
        let mut r = ps::StoryReplyRequestT::default();
        r.story_id = story_id;
        r.text = Some(text.to_string());
        r.client_msg_id = Some(client_msg_id.to_string());
        self.ack(StoriesOpT::StoryReplyRequest(Box::new(r))).await
    }

    /// Keeps one of this user's live stories in their highlights.
    pub async fn highlight(&self, story_id: u64) -> Result<(), ClientError> {
        let mut r = ps::HighlightStoryRequestT::default();
        r.story_id = story_id;
        self.ack(StoriesOpT::HighlightStoryRequest(Box::new(r)))
            .await
    }

    /// Takes a story out of this user's highlights.
    pub async fn remove_highlight(&self, story_id: u64) -> Result<(), ClientError> {
        let mut r = ps::RemoveHighlightRequestT::default();
        r.story_id = story_id;
        self.ack(StoriesOpT::RemoveHighlightRequest(Box::new(r)))
            .await
    }

    /// One page of `user_id`'s highlights.
    pub async fn highlights(
        &self,
        user_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<ps::HighlightsResponseT, ClientError> {
        let mut r = ps::HighlightsRequestT::default();
        r.user_id = user_id;
        r.page = page(limit, cursor);
        match self
            .call(StoriesOpT::HighlightsRequest(Box::new(r)))
            .await?
        {
            StoriesOpT::HighlightsResponse(h) => Ok(*h),
            _ => Err(unexpected("HighlightsResponse")),
        }
    }

    /// The tray's live updates: new stories of followed accounts, and views and
    /// reactions of this user's own ([`push_update`] reads them).
    pub async fn subscribe(&self) -> Result<Subscription, ClientError> {
        self.0.subscribe(SubscriptionKind::StoryTray, 0, None).await
    }
}

/// The `StoryUpdate` a tray push carries.
pub fn push_update(frame: &selfie_codec::Frame) -> Option<ps::StoryUpdateT> {
    let env = frame.envelope();
    let update = env.body_as_stories()?.op_as_story_update()?;
    Some(update.unpack())
}
