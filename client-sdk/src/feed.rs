//! Feeds in the client: typed requests ([`FeedApi`], from [`Client::feed`]) for the home
//! feed and per-user feeds, "not interested", and the live `HomeFeed` subscription.
//!
//! Pages are cursor-based: a page's `page.next_cursor` continues older, its
//! `newer_cursor` asks later for what arrived since (and, given to
//! [`FeedApi::subscribe`], makes the server first say how many items arrived while the
//! client was away).

use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::feed::{self as pf, FeedKind, FeedOpT};
use selfie_protocol::{BodyT, EnvelopeT, common};

use crate::{Client, ClientError, Subscription};

/// Typed feed requests over one session.
pub struct FeedApi<'a>(&'a Client);

impl Client {
    /// This session's feed requests.
    pub fn feed(&self) -> FeedApi<'_> {
        FeedApi(self)
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

impl FeedApi<'_> {
    /// Sends a feed operation and returns the answer's operation (`NONE` for an `Ack`).
    pub async fn call(&self, op: FeedOpT) -> Result<FeedOpT, ClientError> {
        let frame = self
            .0
            .request(|b, id| {
                let mut feed = pf::FeedT::default();
                feed.op = op;
                let mut e = EnvelopeT::default();
                e.id = id;
                e.body = BodyT::Feed(Box::new(feed));
                e.pack(b)
            })
            .await?;
        match frame.envelope().unpack().body {
            BodyT::Feed(f) => Ok(f.op),
            BodyT::Control(_) => Ok(FeedOpT::NONE),
            _ => Err(unexpected("a feed answer")),
        }
    }

    /// One page of a feed of `kind` (`target_id`: the user, for `User` feeds), from
    /// `cursor` (a `next_cursor` or `newer_cursor`; `None`: the newest).
    pub async fn page(
        &self,
        kind: FeedKind,
        target_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        let mut page = common::PageRequestT::default();
        page.limit = limit;
        page.cursor = cursor;
        let mut r = pf::FeedPageRequestT::default();
        r.kind = kind;
        r.target_id = target_id;
        r.page = Some(Box::new(page));
        match self.call(FeedOpT::FeedPageRequest(Box::new(r))).await? {
            FeedOpT::FeedPage(p) => Ok(*p),
            _ => Err(unexpected("FeedPage")),
        }
    }

    /// One page of the home feed (the accounts followed, newest first).
    pub async fn home(
        &self,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        self.page(FeedKind::Following, 0, limit, cursor).await
    }

    /// One page of the ranked "For you" feed (no cursor: a fresh ranking of what this
    /// user has not been served yet; a `next_cursor`: the next page of that ranking).
    pub async fn for_you(
        &self,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        self.page(FeedKind::ForYou, 0, limit, cursor).await
    }

    /// One page of the posts tagged `#tag` this user may read (last 30 days).
    pub async fn hashtag(
        &self,
        tag: &str,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        let mut page = common::PageRequestT::default();
        page.limit = limit;
        page.cursor = cursor;
        let mut r = pf::FeedPageRequestT::default();
        r.kind = FeedKind::Hashtag;
        r.hashtag = Some(tag.to_string());
        r.page = Some(Box::new(page));
        match self.call(FeedOpT::FeedPageRequest(Box::new(r))).await? {
            FeedOpT::FeedPage(p) => Ok(*p),
            _ => Err(unexpected("FeedPage")),
        }
    }

    /// One page of the posts of a user list's members.
    pub async fn list(
        &self,
        list_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        self.page(FeedKind::List, list_id, limit, cursor).await
    }

    /// One page of `user_id`'s posts and reposts.
    pub async fn user(
        &self,
        user_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pf::FeedPageT, ClientError> {
        self.page(FeedKind::User, user_id, limit, cursor).await
    }

    /// Not interested in `post_id` and/or `author_id` (0: neither): they leave the home
    /// feed.
    pub async fn not_interested(&self, post_id: u64, author_id: u64) -> Result<(), ClientError> {
        let mut r = pf::NotInterestedRequestT::default();
        r.post_id = post_id;
        r.author_id = author_id;
        self.call(FeedOpT::NotInterestedRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// The home feed's "new posts" pushes ([`push_update`] reads them). With `since` (a
    /// page's `newer_cursor`), the server first says how many arrived since.
    pub async fn subscribe(&self, since: Option<&[u8]>) -> Result<Subscription, ClientError> {
        self.0.subscribe(SubscriptionKind::HomeFeed, 0, since).await
    }
}

/// The `FeedUpdate` a home-feed push carries.
pub fn push_update(frame: &selfie_codec::Frame) -> Option<pf::FeedUpdateT> {
    let env = frame.envelope();
    let update = env.body_as_feed()?.op_as_feed_update()?;
    Some(update.unpack())
}
