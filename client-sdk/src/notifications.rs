//! Notifications in the client: typed requests ([`NotificationsApi`], from
//! [`Client::notifications`]) for the inbox, mark-read, preferences and device push
//! tokens, and the live `Notifications` subscription.

use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::notifications::{self as pn, NotificationsOpT};
use selfie_protocol::{BodyT, EnvelopeT, common};

use crate::{Client, ClientError, Subscription};

/// Typed notifications requests over one session.
pub struct NotificationsApi<'a>(&'a Client);

impl Client {
    /// This session's notifications requests.
    pub fn notifications(&self) -> NotificationsApi<'_> {
        NotificationsApi(self)
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

impl NotificationsApi<'_> {
    /// Sends a notifications operation and returns the answer's operation (`NONE` for an
    /// `Ack`).
    pub async fn call(&self, op: NotificationsOpT) -> Result<NotificationsOpT, ClientError> {
        let frame = self
            .0
            .request(|b, id| {
                let mut n = pn::NotificationsT::default();
                n.op = op;
                let mut e = EnvelopeT::default();
                e.id = id;
                e.body = BodyT::Notifications(Box::new(n));
                e.pack(b)
            })
            .await?;
        match frame.envelope().unpack().body {
            BodyT::Notifications(n) => Ok(n.op),
            BodyT::Control(_) => Ok(NotificationsOpT::NONE),
            _ => Err(unexpected("a notifications answer")),
        }
    }

    /// One page of the inbox, newest first (`unread_only` to skip read ones).
    pub async fn list(
        &self,
        unread_only: bool,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pn::NotificationsPageT, ClientError> {
        let mut page = common::PageRequestT::default();
        page.limit = limit;
        page.cursor = cursor;
        let mut r = pn::NotificationsListRequestT::default();
        r.unread_only = unread_only;
        r.page = Some(Box::new(page));
        match self
            .call(NotificationsOpT::NotificationsListRequest(Box::new(r)))
            .await?
        {
            NotificationsOpT::NotificationsPage(p) => Ok(*p),
            _ => Err(unexpected("NotificationsPage")),
        }
    }

    /// Marks read everything up to `up_to_id` (0: nothing) and the notifications `ids`.
    pub async fn mark_read(&self, up_to_id: u64, ids: &[u64]) -> Result<(), ClientError> {
        let mut r = pn::MarkReadRequestT::default();
        r.up_to_id = up_to_id;
        r.ids = Some(ids.to_vec());
        self.call(NotificationsOpT::MarkReadRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// The per-kind preferences.
    pub async fn preferences(&self) -> Result<Vec<pn::NotificationPreferenceT>, ClientError> {
        let r = pn::PreferencesRequestT::default();
        match self
            .call(NotificationsOpT::PreferencesRequest(Box::new(r)))
            .await?
        {
            NotificationsOpT::PreferencesResponse(p) => Ok(p.preferences.unwrap_or_default()),
            _ => Err(unexpected("PreferencesResponse")),
        }
    }

    /// Sets the preferences of the kinds given.
    pub async fn set_preferences(
        &self,
        preferences: Vec<pn::NotificationPreferenceT>,
    ) -> Result<(), ClientError> {
        let mut r = pn::PreferencesUpdateRequestT::default();
        r.preferences = Some(preferences);
        self.call(NotificationsOpT::PreferencesUpdateRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// Registers this device's push token (APNs or FCM).
    pub async fn register_push_token(
        &self,
        platform: pn::PushPlatform,
        token: &str,
        device_id: &str,
    ) -> Result<(), ClientError> {
        let mut r = pn::PushTokenRegisterRequestT::default();
        r.platform = platform;
        r.token = Some(token.to_string());
        r.device_id = Some(device_id.to_string());
        self.call(NotificationsOpT::PushTokenRegisterRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// Removes a push token.
    pub async fn unregister_push_token(
        &self,
        platform: pn::PushPlatform,
        token: &str,
    ) -> Result<(), ClientError> {
        let mut r = pn::PushTokenUnregisterRequestT::default();
        r.platform = platform;
        r.token = Some(token.to_string());
        self.call(NotificationsOpT::PushTokenUnregisterRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// New notifications, live ([`push_event`] reads them).
    pub async fn subscribe(&self) -> Result<Subscription, ClientError> {
        self.0
            .subscribe(SubscriptionKind::Notifications, 0, None)
            .await
    }
}

/// The `NotificationEvent` a push carries.
pub fn push_event(frame: &selfie_codec::Frame) -> Option<pn::NotificationEventT> {
    let env = frame.envelope();
    let event = env.body_as_notifications()?.op_as_notification_event()?;
    Some(event.unpack())
}
