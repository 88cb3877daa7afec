//! Representative messages, built in place as a real sender would: a chat message, a
//! feed page of 20 posts, and `Hello`. Shared by tests and benches.
#![allow(dead_code)]

use flatbuffers::WIPOffset;
use selfie_codec::Builder;
use selfie_codec::build;
use selfie_protocol::{Body, Envelope, EnvelopeArgs, chat, common, control, feed, posts};

/// `Hello` as a mobile client sends it.
pub fn hello(b: &mut Builder, id: u64) -> WIPOffset<Envelope<'static>> {
    let app_name = b.create_string("selfie-ios");
    let app_version = b.create_string("3.14.1 (2049)");
    let os_version = b.create_string("iOS 19.1");
    let device_model = b.create_string("iPhone17,2");
    let device_id = b.create_string("5f0c7d52-9a43-4b8e-8d1e-2f6b0c9e1a77");
    let locale = b.create_string("en-GB");
    let client = control::ClientInfo::create(
        b,
        &control::ClientInfoArgs {
            app_name: Some(app_name),
            app_version: Some(app_version),
            platform: common::Platform::Ios,
            os_version: Some(os_version),
            device_model: Some(device_model),
            device_id: Some(device_id),
            locale: Some(locale),
        },
    );
    let token = b.create_string(
        "v4.public.eyJzdWIiOiIxMjM0NTY3ODkwIiwiZXhwIjoiMjAyNi0xMi0wMVQwMDowMDowMFoifQ\
         bg9Mfm5H1Sx2qBn2WmVj2y0S4m0Vx1b0c1nC3dP1lqk2uYwY9bLxF0mJd2k4eQ0j3RzE8nT6aVb1c",
    );
    let f1 = b.create_string("mls");
    let f2 = b.create_string("datagrams");
    let features = b.create_vector(&[f1, f2]);
    let v = selfie_protocol::PROTOCOL_VERSION.to_wire();
    let hello = control::Hello::create(
        b,
        &control::HelloArgs {
            version: Some(&v),
            min_version: Some(&v),
            client: Some(client),
            access_token: Some(token),
            resume_token: None,
            features: Some(features),
        },
    );
    build::control(b, id, control::ControlOp::Hello, hello.as_union_value())
}

/// A chat message push event (~190 bytes of text and ids).
pub fn chat_message(b: &mut Builder, id: u64) -> WIPOffset<Envelope<'static>> {
    let client_msg_id = b.create_string("c6a1e0f2-0b7d-4c39-9f3e-58d2a1b7c4e0");
    let text = b.create_string(
        "Landing at 18:40, can you grab me at arrivals? Bringing the camera for tomorrow's shoot.",
    );
    let message = chat::Message::create(
        b,
        &chat::MessageArgs {
            conversation_id: 7_205_759_403_792_793_601,
            message_id: 7_205_759_403_792_801_234,
            seq: 48_213,
            sender_id: 7_205_759_403_792_700_001,
            client_msg_id: Some(client_msg_id),
            kind: chat::MessageKind::Text,
            text: Some(text),
            created_at_ms: 1_795_000_000_123,
            ..Default::default()
        },
    );
    let event = chat::ChatEvent::create(
        b,
        &chat::ChatEventArgs {
            kind: chat::ChatEventKind::MessageCreated,
            conversation_id: 7_205_759_403_792_793_601,
            event_seq: 991_022,
            actor_id: 7_205_759_403_792_700_001,
            message: Some(message),
            at_ms: 1_795_000_000_123,
            ..Default::default()
        },
    );
    let body = chat::Chat::create(
        b,
        &chat::ChatArgs {
            op_type: chat::ChatOp::ChatEvent,
            op: Some(event.as_union_value()),
        },
    );
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type: Body::Chat,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    )
}

const USERNAMES: [&str; 20] = [
    "ana.lens",
    "ben_frames",
    "chloe.k",
    "dario",
    "elif.shoots",
    "farah",
    "gus.m",
    "hana_b",
    "ivo",
    "jules.p",
    "kemal",
    "lea_r",
    "mika",
    "noor.ph",
    "otto",
    "pia.w",
    "quinn_z",
    "ravi",
    "sol.e",
    "tove",
];
const DISPLAY_NAMES: [&str; 20] = [
    "Ana Lens",
    "Ben Frames",
    "Chloé K",
    "Dario",
    "Elif",
    "Farah",
    "Gus M",
    "Hana B",
    "Ivo",
    "Jules P",
    "Kemal",
    "Léa R",
    "Mika",
    "Noor",
    "Otto",
    "Pia W",
    "Quinn Z",
    "Ravi",
    "Sol E",
    "Tove",
];

/// A home feed page of 20 posts with authors, counts, hashtags and one image each.
pub fn feed_page(b: &mut Builder, id: u64) -> WIPOffset<Envelope<'static>> {
    // A stack array, so that building the page itself allocates nothing.
    let mut items = [WIPOffset::new(0); 20];
    for i in 0..20u64 {
        let username = b.create_string(USERNAMES[i as usize]);
        let display = b.create_string(DISPLAY_NAMES[i as usize]);
        let author = common::UserSummary::create(
            b,
            &common::UserSummaryArgs {
                user_id: 1_000_000 + i,
                username: Some(username),
                display_name: Some(display),
                avatar_media_id: 9_000_000 + i,
                verified: i % 3 == 0,
                ..Default::default()
            },
        );
        let text = b.create_string(
            "Golden hour over the harbour tonight. Shot on film, scanned at home. #film #harbour",
        );
        let mime = b.create_string("image/jpeg");
        let blurhash = b.create_string("LEHV6nWB2yk8pyo0adR*.7kCMdnj");
        let media = common::MediaRef::create(
            b,
            &common::MediaRefArgs {
                media_id: 5_000_000 + i,
                kind: common::MediaKind::Image,
                mime_type: Some(mime),
                width: 1080,
                height: 1350,
                blurhash: Some(blurhash),
                ..Default::default()
            },
        );
        let media = b.create_vector(&[media]);
        let h1 = b.create_string("film");
        let h2 = b.create_string("harbour");
        let hashtags = b.create_vector(&[h1, h2]);
        let counts = posts::PostCounts::create(
            b,
            &posts::PostCountsArgs {
                reactions: 1_204 + i,
                comments: 37,
                reposts: 12,
                quotes: 2,
                views: 18_230,
            },
        );
        let post = posts::Post::create(
            b,
            &posts::PostArgs {
                post_id: 7_205_759_403_800_000_000 + i,
                author: Some(author),
                text: Some(text),
                media: Some(media),
                hashtags: Some(hashtags),
                created_at_ms: 1_795_000_000_000 - i * 60_000,
                counts: Some(counts),
                ..Default::default()
            },
        );
        items[i as usize] = feed::FeedItem::create(
            b,
            &feed::FeedItemArgs {
                post: Some(post),
                reason: feed::FeedReason::Followed,
                score: 0.5,
                ..Default::default()
            },
        );
    }
    let items = b.create_vector(&items);
    let cursor = b.create_vector(&[7u8; 16]);
    let page = common::PageInfo::create(
        b,
        &common::PageInfoArgs {
            next_cursor: Some(cursor),
            has_more: true,
        },
    );
    let fp = feed::FeedPage::create(
        b,
        &feed::FeedPageArgs {
            items: Some(items),
            page: Some(page),
            newer_cursor: None,
        },
    );
    let body = feed::Feed::create(
        b,
        &feed::FeedArgs {
            op_type: feed::FeedOp::FeedPage,
            op: Some(fp.as_union_value()),
        },
    );
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type: Body::Feed,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    )
}
