//! Facts about messages that every layer needs: which service a body belongs to, the
//! stream priority it travels at, and bounded names for metrics and logs. Whether a
//! request is safe to replay (0-RTT) is declared in the schemas (`(idempotent)`) and
//! generated (`generated/idempotent.rs`).

use crate::{Body, Envelope};

/// A product service: the first level of the envelope's `body` union.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Service {
    Control,
    Auth,
    Users,
    Graph,
    Posts,
    Feed,
    Stories,
    Chat,
    Media,
    Notifications,
    Search,
    Recommend,
    Moderation,
    Admin,
    Payments,
    Ads,
    Analytics,
}

impl Service {
    /// Every service, in schema order.
    pub const ALL: [Service; 17] = [
        Service::Control,
        Service::Auth,
        Service::Users,
        Service::Graph,
        Service::Posts,
        Service::Feed,
        Service::Stories,
        Service::Chat,
        Service::Media,
        Service::Notifications,
        Service::Search,
        Service::Recommend,
        Service::Moderation,
        Service::Admin,
        Service::Payments,
        Service::Ads,
        Service::Analytics,
    ];

    /// The service a body type belongs to; `None` for `NONE` or a tag this build does
    /// not know (a newer peer).
    pub fn of(body: Body) -> Option<Service> {
        Some(match body {
            Body::Control => Service::Control,
            Body::Auth => Service::Auth,
            Body::Users => Service::Users,
            Body::Graph => Service::Graph,
            Body::Posts => Service::Posts,
            Body::Feed => Service::Feed,
            Body::Stories => Service::Stories,
            Body::Chat => Service::Chat,
            Body::Media => Service::Media,
            Body::Notifications => Service::Notifications,
            Body::Search => Service::Search,
            Body::Recommend => Service::Recommend,
            Body::Moderation => Service::Moderation,
            Body::Admin => Service::Admin,
            Body::Payments => Service::Payments,
            Body::Ads => Service::Ads,
            Body::Analytics => Service::Analytics,
            _ => return None,
        })
    }

    /// A stable lower-case name, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Control => "control",
            Service::Auth => "auth",
            Service::Users => "users",
            Service::Graph => "graph",
            Service::Posts => "posts",
            Service::Feed => "feed",
            Service::Stories => "stories",
            Service::Chat => "chat",
            Service::Media => "media",
            Service::Notifications => "notifications",
            Service::Search => "search",
            Service::Recommend => "recommend",
            Service::Moderation => "moderation",
            Service::Admin => "admin",
            Service::Payments => "payments",
            Service::Ads => "ads",
            Service::Analytics => "analytics",
        }
    }
}

/// Stream priority classes, highest first: control > chat > notifications >
/// feed/stories (and other interactive requests) > media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Bulk media bytes.
    Media = -1,
    /// Feeds, stories and the other request/response services (QUIC's default, 0, so
    /// that most streams need no priority call at all).
    Content = 0,
    /// Notifications.
    Notifications = 1,
    /// Chat messages and events.
    Chat = 2,
    /// Session control: `Hello`, `Ping`, `GoAway`, errors.
    Control = 3,
}

impl Priority {
    /// The value for `quinn::SendStream::set_priority` (higher is sent first; streams
    /// start at 0).
    pub fn quic_priority(self) -> i32 {
        self as i32
    }
}

/// The priority of a stream that carries `body`.
pub fn priority_of(body: Body) -> Priority {
    Service::of(body).map_or(Priority::Content, priority_of_service)
}

/// The priority of `service`'s streams (requests and push streams alike).
pub fn priority_of_service(service: Service) -> Priority {
    match service {
        Service::Control => Priority::Control,
        Service::Chat => Priority::Chat,
        Service::Notifications => Priority::Notifications,
        Service::Media => Priority::Media,
        _ => Priority::Content,
    }
}

/// The operation's bounded name (`"SendMessageRequest"`), for metrics and logs; `None`
/// when the service or the operation is unknown to this build.
pub fn op_name(env: &Envelope<'_>) -> Option<&'static str> {
    match env.body_type() {
        Body::Control => env.body_as_control()?.op_type().variant_name(),
        Body::Auth => env.body_as_auth()?.op_type().variant_name(),
        Body::Users => env.body_as_users()?.op_type().variant_name(),
        Body::Graph => env.body_as_graph()?.op_type().variant_name(),
        Body::Posts => env.body_as_posts()?.op_type().variant_name(),
        Body::Feed => env.body_as_feed()?.op_type().variant_name(),
        Body::Stories => env.body_as_stories()?.op_type().variant_name(),
        Body::Chat => env.body_as_chat()?.op_type().variant_name(),
        Body::Media => env.body_as_media()?.op_type().variant_name(),
        Body::Notifications => env.body_as_notifications()?.op_type().variant_name(),
        Body::Search => env.body_as_search()?.op_type().variant_name(),
        Body::Recommend => env.body_as_recommend()?.op_type().variant_name(),
        Body::Moderation => env.body_as_moderation()?.op_type().variant_name(),
        Body::Admin => env.body_as_admin()?.op_type().variant_name(),
        Body::Payments => env.body_as_payments()?.op_type().variant_name(),
        Body::Ads => env.body_as_ads()?.op_type().variant_name(),
        Body::Analytics => env.body_as_analytics()?.op_type().variant_name(),
        _ => None,
    }
    .filter(|name| *name != "NONE")
}
