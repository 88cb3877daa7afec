//! One shard's services, built once on each shard thread: the single piece of wiring
//! that `selfie serve` and the tests share. A new service is one file (its domain and its
//! `wire.rs`) and one line here.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use selfie_protocol::Service;
use selfie_storage::{Clock, Store};

use crate::auth::AuthWire;
use crate::auth::accounts::Accounts;
use crate::auth::mail::Mailer;
use crate::auth::password::PasswordHasher;
use crate::auth::throttle::LoginThrottle;
use crate::auth::tokens::AccessTokens;
use crate::chat::{Chat, ChatWire};
use crate::feed::{Feed, FeedConfig, FeedWire};
use crate::graph::lists::Lists;
use crate::graph::{FleetLocks, Graph, GraphWire};
use crate::media::{Media, MediaWire};
use crate::notifications::{Note, Notifications, NotificationsWire, Notifier};
use crate::plane::{Plane, Registry, ShardId};
use crate::posts::{Posts, PostsWire};
use crate::stories::{Stories, StoriesWire};
use crate::users::{Users, UsersWire};
use crate::workflows::Services;
use crate::{Error, Result};

/// What every shard's services are built from (shared by the shards of a node).
#[derive(Clone)]
pub struct Deps<S> {
    /// The store.
    pub store: S,
    /// The clock (injected in tests).
    pub clock: Arc<dyn Clock>,
    /// This node's number, unique among the live nodes sharing the store (ids embed it).
    pub node: u16,
    /// Access-token signing and verification.
    pub tokens: AccessTokens,
    /// The node's Argon2 pool.
    pub hasher: PasswordHasher,
    /// The node's login throttle (and the fleet's, when set).
    pub throttle: LoginThrottle,
    /// Sends verification and password-reset mail, when configured.
    pub mailer: Option<Arc<dyn Mailer>>,
    /// Graph pair locks shared by a fleet, when configured.
    pub graph_locks: Option<Arc<dyn FleetLocks>>,
    /// Lifetime of access tokens (told to clients).
    pub access_ttl: Duration,
    /// The node's service plane.
    pub plane: Arc<Plane>,
    /// How far chat syncs replay.
    pub chat: crate::chat::SyncLimits,
    /// Fan-out and live feed settings.
    pub feed: FeedConfig,
    /// The node's media (blob store, staging, limits); `None` leaves media unavailable.
    pub media: Option<Arc<crate::media::MediaNode>>,
}

/// Builds `shard`'s services and registers their wire tables.
pub fn registry<S: Store + Clone + 'static>(shard: ShardId, deps: &Deps<S>) -> Result<Registry> {
    let mut registry = Registry::new(shard, &deps.plane);
    let id = u16::try_from(shard).map_err(|_| Error::Internal("more shards than ids can name"))?;
    let (store, clock, node) = (deps.store.clone(), deps.clock.clone(), deps.node);
    let mut accounts = Accounts::new(
        store.clone(),
        deps.tokens.clone(),
        deps.hasher.clone(),
        clock.clone(),
        node,
        id,
        deps.throttle.clone(),
    )?;
    if let Some(m) = &deps.mailer {
        accounts = accounts.with_mailer(m.clone());
    }
    // Notifications are recorded on the recipient's owner shard, whoever raises them.
    let notifier = {
        let plane = deps.plane.clone();
        Notifier::new(move |note: Note| {
            let shards = plane.shards();
            let owner = shards.owner_of(note.recipient);
            let posted =
                shards.submit_on(owner, "notify", move |n: Rc<Notifications<S>>| async move {
                    if let Err(e) = n.record(note).await {
                        tracing::warn!(error = %e, kind = ?note.kind, "notification not recorded");
                    }
                });
            if let Err(e) = posted {
                tracing::warn!(error = %e, kind = ?note.kind, "notification dropped");
            }
        })
    };
    let mut graph = Graph::new(store.clone())
        .with_notifier(notifier.clone())
        .with_follow_hook(Feed::<S>::follow_hook(registry.delivery().clone()));
    if let Some(locks) = &deps.graph_locks {
        graph = graph.with_fleet_locks(locks.clone());
    }
    // Media that posts, stories and chat messages stop using is released on this node's
    // shard 0.
    let release: crate::tables::media::Release = {
        let plane = deps.plane.clone();
        Rc::new(move |ids: Vec<u64>| {
            let posted =
                plane
                    .shards()
                    .submit_on(0, "media-release", move |m: Rc<Media<S>>| async move {
                        if let Err(e) = m.release(&ids).await {
                            tracing::warn!(error = %e, "media not released");
                        }
                    });
            if let Err(e) = posted {
                tracing::warn!(error = %e, "media release dropped");
            }
        })
    };
    let (hook, jobs) = crate::feed::fanout_queue(node, id);
    let mut posts = Posts::new(store.clone(), clock.clone(), node, id)?
        .with_delivery(registry.delivery().clone())
        .with_fanout(hook.clone())
        .with_notifier(notifier.clone());
    if deps.media.is_some() {
        posts = posts.with_media_release(release.clone());
    }
    let posts = Rc::new(posts);
    let lists = Rc::new(Lists::new(store.clone(), clock.clone(), node, id)?);
    let feed = Rc::new(
        Feed::new(store.clone(), posts.clone(), clock.clone(), jobs, deps.feed)
            .with_delivery(registry.delivery().clone())
            .with_lists(lists.clone()),
    );
    feed.start();
    let mut chat = Chat::new(store.clone(), clock.clone(), node, id)?
        .with_delivery(registry.delivery().clone())
        .with_limits(deps.chat);
    if deps.media.is_some() {
        chat = chat.with_media_release(release.clone());
    }
    let chat = Rc::new(chat);
    let services = Rc::new(Services {
        accounts: Rc::new(accounts),
        users: Rc::new(Users::new(store.clone())),
        graph: Rc::new(graph),
        lists,
        posts,
        media: std::cell::OnceCell::new(),
        erasers: Default::default(),
        deleting: Default::default(),
    });
    let s = &services;
    let (graph, lists, ttl) = (s.graph.clone(), s.lists.clone(), deps.access_ttl);
    registry.register(Service::Auth, Rc::new(AuthWire::new(s.clone(), ttl)));
    registry.register(Service::Users, Rc::new(UsersWire(s.clone())));
    registry.register(Service::Graph, Rc::new(GraphWire { graph, lists }));
    registry.register(Service::Posts, Rc::new(PostsWire(s.posts.clone())));
    let chat_service = chat.clone();
    let chat = Rc::new(ChatWire(chat));
    registry.register(Service::Chat, chat.clone());
    registry.set_datagrams(chat);
    registry.register(Service::Feed, Rc::new(FeedWire(feed.clone())));
    let stories = Stories::new(
        deps.store.clone(),
        deps.clock.clone(),
        node,
        id,
        s.posts.clone(),
        feed.clone(),
    )?
    .with_fanout(hook)
    .with_notifier(notifier)
    .with_chat(chat_service.clone())
    .with_delivery(registry.delivery().clone());
    let stories = match &deps.media {
        Some(_) => stories.with_media_release(release),
        None => stories,
    };
    let stories = Rc::new(stories);
    registry.register(Service::Stories, Rc::new(StoriesWire(stories.clone())));
    let notifications = Rc::new(
        Notifications::new(deps.store.clone(), deps.clock.clone(), node, id)?
            .with_delivery(registry.delivery().clone()),
    );
    registry.register(
        Service::Notifications,
        Rc::new(NotificationsWire(notifications.clone())),
    );
    s.erasers.borrow_mut().extend([
        ("feed", feed.clone() as Rc<dyn crate::workflows::Erase>),
        ("stories", stories as Rc<dyn crate::workflows::Erase>),
        ("notifications", notifications.clone() as _),
        ("chat", chat_service.clone() as _),
    ]);
    if let Some(node) = &deps.media {
        let media = Rc::new(
            Media::new(
                deps.store.clone(),
                deps.clock.clone(),
                deps.node,
                id,
                node.clone(),
                s.posts.clone(),
            )?
            .with_delivery(registry.delivery().clone()),
        );
        media.start();
        let _ = s.media.set(media.clone());
        let wire = Rc::new(MediaWire(media.clone()));
        registry.register(Service::Media, wire.clone());
        registry.set_raw_streams(wire);
        registry.provide(media);
    }
    // Reached from other shards: notifications are recorded on the recipient's owner.
    registry.provide(notifications);
    // Reached from other shards: story replies are sent on the conversation's owner.
    registry.provide(chat_service);
    // Reached from other shards: fan-out batches run on the readers' owner shards.
    registry.provide(feed);
    // Reached from other shards: a post's counter events run on its owner shard.
    registry.provide(s.posts.clone());
    registry.provide(services);
    Ok(registry)
}
