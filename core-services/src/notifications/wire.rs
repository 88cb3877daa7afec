//! The `Notifications` service on the wire: the inbox, mark-read, preferences, device
//! push tokens, and the `Notifications` subscription. Every operation acts as the
//! session's user on that user's owner shard (where their notifications are recorded).

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::notifications::{
    self as pn, NotificationKind, NotificationsOp, NotificationsOpT,
};
use selfie_protocol::{Body, common};
use selfie_storage::Store;

use super::{Kind, Notification, Notifications, Preference, PushToken, Target};
use crate::plane::{
    Call, Delivery, Subscription, Topic, envelope, ids, make, page_request, page_t, service_table,
    user_ref,
};
use crate::{Error, Result};

/// The notifications service of one shard, on the wire.
#[derive(Clone)]
pub struct NotificationsWire<S>(pub Rc<Notifications<S>>);

service_table! {
    impl[S: Store + Clone + 'static] NotificationsWire<S>;
    body body_as_notifications, ops NotificationsOp, answers NotificationsOpT
        in Notifications(pn::NotificationsT), subscribe subscribe;
    NotificationsListRequest(op_as_notifications_list_request) => list, owner |_r, me| me?;
    MarkReadRequest(op_as_mark_read_request) => mark_read, owner |_r, me| me?;
    PreferencesRequest(op_as_preferences_request) => preferences, owner |_r, me| me?;
    PreferencesUpdateRequest(op_as_preferences_update_request) => set_preferences,
        owner |_r, me| me?;
    PushTokenRegisterRequest(op_as_push_token_register_request) => register_token,
        owner |_r, me| me?;
    PushTokenUnregisterRequest(op_as_push_token_unregister_request) => unregister_token,
        owner |_r, me| me?;
}

fn wire_kind(k: Kind) -> NotificationKind {
    match k {
        Kind::Follow => NotificationKind::Follow,
        Kind::FollowRequest => NotificationKind::FollowRequest,
        Kind::FollowAccepted => NotificationKind::FollowAccepted,
        Kind::Reaction => NotificationKind::Reaction,
        Kind::Comment => NotificationKind::Comment,
        Kind::Reply => NotificationKind::Reply,
        Kind::Mention => NotificationKind::Mention,
        Kind::Repost => NotificationKind::Repost,
        Kind::Quote => NotificationKind::Quote,
        Kind::StoryReaction => NotificationKind::StoryReaction,
        Kind::StoryMention => NotificationKind::StoryMention,
    }
}

fn kind(w: NotificationKind) -> Result<Kind> {
    Kind::ALL
        .into_iter()
        .find(|&k| wire_kind(k) == w)
        .ok_or(Error::InvalidArgument { field: "kind" })
}

fn platform(p: pn::PushPlatform) -> Result<&'static str> {
    match p {
        pn::PushPlatform::Apns => Ok("apns"),
        pn::PushPlatform::Fcm => Ok("fcm"),
        pn::PushPlatform::WebPush => Ok("webpush"),
        _ => Err(Error::InvalidArgument { field: "platform" }),
    }
}

fn notification_t(n: Notification) -> pn::NotificationT {
    let (target_kind, target_id) = match n.target {
        Target::Account => (common::ObjectKind::User, 0),
        Target::Post(id) => (common::ObjectKind::Post, id),
        Target::Comment(id) => (common::ObjectKind::Comment, id),
        Target::Story(id) => (common::ObjectKind::Story, id),
    };
    make!(pn::NotificationT {
        notification_id: n.notification_id,
        kind: wire_kind(n.kind),
        actor: n.actors.first().copied().and_then(user_ref),
        actors_count: n.actors_count,
        target_kind,
        target_id,
        created_at_ms: n.created_at_ms,
        read: n.read,
    })
}

/// A `NotificationEvent` for the recipient's subscribers.
pub(super) fn event(delivery: &Delivery, n: Notification, unread: u32) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let event = make!(pn::NotificationEventT {
            notification: Some(Box::new(notification_t(n))),
            unread_notifications: unread,
        });
        let t = make!(pn::NotificationsT {
            op: NotificationsOpT::NotificationEvent(Box::new(event)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Notifications, t.as_union_value())
    })
}

impl<S: Store + Clone + 'static> NotificationsWire<S> {
    async fn list(self, call: &Call, r: pn::NotificationsListRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let (limit, cursor) = page_request(r.page());
        let page = self.0.list(me, r.unread_only(), limit, cursor).await?;
        let answer = make!(pn::NotificationsPageT {
            notifications: Some(page.notifications.into_iter().map(notification_t).collect()),
            page: page_t(page.next),
            unread_count: page.unread,
        });
        Self::answer(call, NotificationsOpT::NotificationsPage(Box::new(answer)))
    }

    async fn mark_read(self, call: &Call, r: pn::MarkReadRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let marked = ids(r.ids(), super::MAX_MARK_IDS);
        self.0.mark_read(me, r.up_to_id(), &marked).await?;
        call.ack()
    }

    async fn preferences(self, call: &Call, _r: pn::PreferencesRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let prefs = self.0.preferences(me).await?;
        let preferences = prefs
            .into_iter()
            .map(|p| {
                make!(pn::NotificationPreferenceT {
                    kind: wire_kind(p.kind),
                    in_app_enabled: p.in_app,
                    push_enabled: p.push,
                    email_enabled: p.email,
                })
            })
            .collect();
        let answer = make!(pn::PreferencesResponseT {
            preferences: Some(preferences),
        });
        Self::answer(
            call,
            NotificationsOpT::PreferencesResponse(Box::new(answer)),
        )
    }

    async fn set_preferences(
        self,
        call: &Call,
        r: pn::PreferencesUpdateRequest<'_>,
    ) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let mut prefs = Vec::new();
        for p in r.preferences().iter().flatten() {
            if prefs.len() == Kind::ALL.len() * 2 {
                return Err(Error::InvalidArgument {
                    field: "preferences",
                });
            }
            prefs.push(Preference {
                kind: kind(p.kind())?,
                in_app: p.in_app_enabled(),
                push: p.push_enabled(),
                email: p.email_enabled(),
            });
        }
        self.0.set_preferences(me, &prefs).await?;
        call.ack()
    }

    async fn register_token(
        self,
        call: &Call,
        r: pn::PushTokenRegisterRequest<'_>,
    ) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let platform = platform(r.platform())?;
        let web_push_keys = match (r.web_push_p256dh(), r.web_push_auth()) {
            (Some(p), Some(a)) => Some((p.bytes().to_vec(), a.bytes().to_vec())),
            (None, None) if platform != "webpush" => None,
            _ => {
                return Err(Error::InvalidArgument {
                    field: "web_push_p256dh",
                });
            }
        };
        let token = PushToken {
            platform: platform.to_string(),
            token: r.token().unwrap_or_default().to_string(),
            device_id: r.device_id().unwrap_or_default().to_string(),
            web_push_keys,
        };
        self.0.register_push_token(me, token).await?;
        call.ack()
    }

    async fn unregister_token(
        self,
        call: &Call,
        r: pn::PushTokenUnregisterRequest<'_>,
    ) -> Result<Bytes> {
        let me = call.user()?;
        self.0.spend(me)?;
        let platform = platform(r.platform())?;
        self.0
            .unregister_push_token(me, platform, r.token().unwrap_or_default())
            .await?;
        call.ack()
    }
}

/// Opens the caller's `Notifications` subscription (nothing replayed: the client lists
/// its inbox after subscribing).
async fn subscribe<S: Store + Clone + 'static>(
    w: NotificationsWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::Notifications {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let target = call
        .op(|e| e.body_as_control()?.op_as_subscribe_request())?
        .target_id();
    if target != 0 && target != me {
        return Err(Error::Forbidden("only your own notifications"));
    }
    let delivery = w.0.delivery()?.clone();
    let events = delivery
        .subscribe(Topic::new(SubscriptionKind::Notifications, me))
        .await?;
    Ok(Subscription::new(Vec::new(), events))
}
