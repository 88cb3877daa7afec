//! WebTransport on the edge's own QUIC port, driven by an independent implementation
//! (`wtransport`'s client, as a browser would): a browser session and a native client
//! see each other's chat messages and typing live; a disallowed origin is refused with
//! 403; hostile input on WebTransport streams gets the native protocol's typed errors and
//! metrics; a stream or datagram that names another session is refused.

mod support;

use std::time::Duration;

use bytes::Bytes;
use selfie_client::Client;
use selfie_client::chat::{Signal, push_event, text_message};
use selfie_codec::{Encoder, Frame, FrameDecoder, Limits};
use selfie_protocol::chat::{ChatEventKind, ChatOpT, ChatT};
use selfie_protocol::common::ProtocolVersionT;
use selfie_protocol::control::{
    ControlOpT, ControlT, HelloT, SubscribeRequestT, SubscriptionKind, WelcomeT,
};
use selfie_protocol::datagram as dg;
use selfie_protocol::graph::{FollowRequestT, GraphOpT};
use selfie_protocol::{BodyT, EnvelopeT, ErrorCode, PROTOCOL_VERSION};
use support::{config, graph, register, sign_up};
use wtransport::{ClientConfig as WtConfig, Endpoint};

/// A browser-like session: the WebTransport connection and its open control stream.
struct Browser {
    conn: wtransport::Connection,
    welcome: WelcomeT,
    control: tokio::sync::Mutex<(wtransport::SendStream, wtransport::RecvStream, FrameDecoder)>,
    next_id: std::cell::Cell<u64>,
}

fn envelope(id: u64, body: BodyT) -> Bytes {
    let mut e = EnvelopeT::default();
    e.id = id;
    e.body = body;
    let mut enc = Encoder::new(Limits::DEFAULT);
    Bytes::copy_from_slice(enc.encode_object(&e).expect("encodes"))
}

fn control(op: ControlOpT) -> BodyT {
    let mut c = ControlT::default();
    c.op = op;
    BodyT::Control(Box::new(c))
}

/// Reads frames from a WebTransport stream until one is complete.
async fn next_frame(recv: &mut wtransport::RecvStream, dec: &mut FrameDecoder) -> Option<Frame> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(f) = dec.next_frame().expect("valid frames") {
            return Some(f);
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(Bytes::copy_from_slice(&buf[..n])),
            _ => return None,
        }
    }
}

fn error_code(f: &Frame) -> Option<ErrorCode> {
    f.envelope()
        .body_as_control()
        .and_then(|c| c.op_as_error())
        .map(|e| e.code())
}

/// Connects over WebTransport (pinning the edge's certificate, as a page does with
/// `serverCertificateHashes`), sending `origin` like a browser, then `Hello`.
async fn browser(
    node: &support::Node,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<Browser, String> {
    let fp = &node.edge.fingerprint;
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&fp[2 * i..2 * i + 2], 16).expect("hex");
    }
    let cfg = WtConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let endpoint = Endpoint::client(cfg).map_err(|e| e.to_string())?;
    let url = format!("https://127.0.0.1:{}/", node.edge.addr.port());
    let mut options = wtransport::endpoint::ConnectOptions::builder(url);
    if let Some(o) = origin {
        options = options.add_header("origin", o);
    }
    let conn = endpoint
        .connect(options.build())
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let v = ProtocolVersionT {
        major: PROTOCOL_VERSION.major,
        minor: PROTOCOL_VERSION.minor,
    };
    let mut hello = HelloT::default();
    hello.version = Some(v.clone());
    hello.min_version = Some(v);
    hello.access_token = token.map(str::to_string);
    send.write_all(&envelope(0, control(ControlOpT::Hello(Box::new(hello)))))
        .await
        .map_err(|e| e.to_string())?;
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    let frame = next_frame(&mut recv, &mut dec).await.ok_or("no Welcome")?;
    match frame.envelope().unpack().body {
        BodyT::Control(c) => match c.op {
            ControlOpT::Welcome(w) => Ok(Browser {
                conn,
                welcome: *w,
                control: tokio::sync::Mutex::new((send, recv, dec)),
                next_id: std::cell::Cell::new(1),
            }),
            other => Err(format!("not Welcome: {other:?}")),
        },
        other => Err(format!("not control: {other:?}")),
    }
}

impl Browser {
    /// A `Ping` on the control stream; the answer's error code, if any.
    async fn ping(&self) -> Result<(), Option<ErrorCode>> {
        let mut guard = self.control.lock().await;
        let (send, recv, dec) = &mut *guard;
        let mut ping = selfie_protocol::control::PingT::default();
        ping.nonce = 7;
        send.write_all(&envelope(0, control(ControlOpT::Ping(Box::new(ping)))))
            .await
            .map_err(|_| None)?;
        let f = tokio::time::timeout(Duration::from_secs(10), next_frame(recv, dec))
            .await
            .map_err(|_| None)?
            .ok_or(None)?;
        match error_code(&f) {
            None => Ok(()),
            Some(code) => Err(Some(code)),
        }
    }

    /// Sends raw bytes as one request stream and returns the answer's first frame.
    async fn request_bytes(&self, bytes: &[u8]) -> Option<Frame> {
        let (mut send, mut recv) = self.conn.open_bi().await.ok()?.await.ok()?;
        // The edge may refuse a request from its first bytes (an oversize length) and
        // stop reading the rest: the write then fails with `stopped`, and the answer is
        // still there to read.
        let _ = send.write_all(bytes).await;
        let _ = send.finish().await;
        next_frame(&mut recv, &mut FrameDecoder::new(Limits::DEFAULT)).await
    }

    async fn call(&self, body: BodyT) -> BodyT {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let frame = self
            .request_bytes(&envelope(id, body))
            .await
            .expect("an answer");
        assert_eq!(error_code(&frame), None, "refused");
        frame.envelope().unpack().body
    }

    /// Subscribes and returns the push stream (its header read).
    async fn subscribe(&self, kind: SubscriptionKind) -> (wtransport::RecvStream, FrameDecoder) {
        let mut r = SubscribeRequestT::default();
        r.kind = kind;
        self.call(control(ControlOpT::SubscribeRequest(Box::new(r))))
            .await;
        let mut recv = tokio::time::timeout(Duration::from_secs(10), self.conn.accept_uni())
            .await
            .expect("a push stream in time")
            .expect("a push stream");
        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        let header = next_frame(&mut recv, &mut dec).await.expect("header");
        assert!(
            header
                .envelope()
                .body_as_control()
                .and_then(|c| c.op_as_push_stream_header())
                .is_some()
        );
        (recv, dec)
    }
}

fn chat(op: ChatOpT) -> BodyT {
    let mut c = ChatT::default();
    c.op = op;
    BodyT::Chat(Box::new(c))
}

async fn metrics(node: &support::Node) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.edge.ops_addr)
        .await
        .expect("ops port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_and_a_native_client_see_each_others_events() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben_tokens = register(&anon, "ben").await;
    let ben_id = ben_tokens.user_id;
    let ben = browser(&node, ben_tokens.access_token.as_deref(), None)
        .await
        .expect("a WebTransport session");
    assert_eq!(
        ben.welcome.user_id, ben_id,
        "the token signed the session in"
    );

    // Friends: Ana follows natively, Ben over WebTransport.
    let mut f = FollowRequestT::default();
    f.target_id = ben_id;
    support::call(&ana.client, graph(GraphOpT::FollowRequest(Box::new(f))))
        .await
        .expect("followed");
    let mut f = FollowRequestT::default();
    f.target_id = ana.id;
    ben.call(graph(GraphOpT::FollowRequest(Box::new(f)))).await;

    // Both live: Ben's events come on a WebTransport push stream.
    let mut ana_live = ana.client.chat().subscribe().await.expect("subscribed");
    let (mut ben_live, mut ben_dec) = ben.subscribe(SubscriptionKind::AllConversations).await;
    let _ana_signals = ana
        .client
        .chat()
        .subscribe_signals()
        .await
        .expect("signals");
    let _ben_signals = ben.subscribe(SubscriptionKind::Presence).await;

    let id = ana
        .client
        .chat()
        .direct(ben_id)
        .await
        .expect("direct")
        .conversation_id;
    ana.client
        .chat()
        .send(id, "a-1", "hi ben")
        .await
        .expect("sent");
    let got = loop {
        let frame = tokio::time::timeout(
            Duration::from_secs(20),
            next_frame(&mut ben_live, &mut ben_dec),
        )
        .await
        .expect("in time")
        .expect("an event");
        let e = push_event(&frame).expect("a chat event");
        if e.kind == ChatEventKind::MessageCreated {
            break e;
        }
    };
    let m = got.message.expect("message");
    assert_eq!((m.text.as_deref(), m.sender_id), (Some("hi ben"), ana.id));

    // Ben answers over WebTransport; Ana's native subscription has it.
    ben.call(chat(ChatOpT::SendMessageRequest(Box::new(text_message(
        id, "b-1", "hi ana",
    )))))
    .await;
    let got = loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ana_live.next())
            .await
            .expect("in time")
            .expect("an event");
        let e = push_event(&frame).expect("a chat event");
        if e.kind == ChatEventKind::MessageCreated
            && e.message.as_ref().is_some_and(|m| m.sender_id == ben_id)
        {
            break e;
        }
    };
    assert_eq!(got.message.and_then(|m| m.text).as_deref(), Some("hi ana"));

    // Typing both ways, as datagrams: the browser's carry the session's prefix.
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut t = dg::TypingT::default();
    t.conversation_id = id;
    t.typing = true;
    let mut d = dg::DatagramT::default();
    d.body = dg::DatagramBodyT::Typing(Box::new(t));
    let typing = enc.encode_datagram_object(&d).expect("encodes").to_vec();
    ben.conn.send_datagram(typing).expect("sent");
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let d = ana.client.recv_datagram().await.expect("a datagram");
            if let Some(Signal::Typing { user, .. }) = selfie_client::chat::signal(&d) {
                return user;
            }
        }
    })
    .await
    .expect("Ana hears Ben typing");
    assert_eq!(heard, ben_id);
    ana.client.chat().typing(id, true).expect("sent");
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let d = ben.conn.receive_datagram().await.expect("a datagram");
            let d = selfie_codec::decode_datagram(
                Bytes::copy_from_slice(d.payload().as_ref()),
                &Limits::DEFAULT,
            )
            .expect("a valid datagram after the session prefix");
            if let Some(Signal::Typing { user, .. }) = selfie_client::chat::signal(&d) {
                return user;
            }
        }
    })
    .await
    .expect("Ben hears Ana typing");
    assert_eq!(heard, ana.id);

    let m = metrics(&node).await;
    assert!(
        m.contains("selfie_edge_webtransport_sessions_total{shard="),
        "{m}"
    );
    assert!(m.contains("outcome=\"accepted\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_and_hostile_webtransport_input_gets_typed_errors() {
    let mut parts = support::parts();
    parts.web.allowed_origins = vec!["https://app.selfie.test".into()];
    let tokens = support::tokens(&parts);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let node = support::start_with(&parts, tokens, throttle);

    // A page from another site is refused before any session exists.
    let err = browser(&node, None, Some("https://evil.example"))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("rejected"), "{err}");
    assert!(metrics(&node).await.contains("outcome=\"bad_origin\""));
    // Listed origins, the edge's own web origin and non-browser clients are served.
    browser(&node, None, Some("https://app.selfie.test"))
        .await
        .expect("allowed origin");
    let own = format!("https://{}", node.edge.web_addr.expect("web listener"));
    browser(&node, None, Some(&own)).await.expect("own origin");
    let good = browser(&node, None, None).await.expect("no origin");

    // Garbage and oversize frames: the same typed errors as on a native stream.
    let bad = browser(&node, None, None).await.expect("session");
    let answer = bad
        .request_bytes(b"\x05\x00\x00\x00hello")
        .await
        .expect("an answer");
    assert_eq!(error_code(&answer), Some(ErrorCode::MalformedFrame));
    // The session ends with the code, as a browser reads it (CLOSE_WEBTRANSPORT_SESSION).
    // (wtransport reports the capsule's close to pending operations; `closed()` gives
    // the QUIC close it then makes itself.)
    let why = match tokio::time::timeout(Duration::from_secs(10), bad.conn.accept_uni())
        .await
        .expect("closed in time")
    {
        Ok(_) => panic!("a push stream on a closed session"),
        Err(closed) => format!("{closed:?}"),
    };
    assert!(
        why.contains("ApplicationClose") && why.contains("100"),
        "{why}"
    );
    let bad = browser(&node, None, None).await.expect("session");
    let mut big = (1u32 << 20).to_le_bytes().to_vec();
    big.extend_from_slice(&[0u8; 64]);
    let answer = bad.request_bytes(&big).await.expect("an answer");
    assert_eq!(error_code(&answer), Some(ErrorCode::FrameTooLarge));

    // More requests in flight than the limit (128), each holding half a frame: the
    // extra ones are refused TooManyStreams, as on a native connection.
    let busy = browser(&node, None, None).await.expect("session");
    let mut held = Vec::new();
    for _ in 0..132 {
        let (mut send, recv) = busy
            .conn
            .open_bi()
            .await
            .expect("opening")
            .await
            .expect("opened");
        send.write_all(&[64, 0, 0, 0, 1])
            .await
            .expect("half a frame");
        held.push((send, recv));
    }
    let mut refused = 0;
    for (_, recv) in held.iter_mut().skip(120) {
        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        if let Ok(Some(f)) =
            tokio::time::timeout(Duration::from_secs(2), next_frame(recv, &mut dec)).await
            && error_code(&f) == Some(ErrorCode::TooManyStreams)
        {
            refused += 1;
        }
    }
    assert!(
        refused >= 1,
        "no TooManyStreams among the streams over the limit"
    );
    drop(held);

    // A WebTransport session may not open push streams of its own: stopped.
    match good.conn.open_uni().await.expect("opening").await {
        // Stopped as soon as its header arrived.
        Err(e) => assert!(
            matches!(e, wtransport::error::StreamOpeningError::Refused),
            "{e:?}"
        ),
        Ok(mut own_uni) => {
            let _ = own_uni.write_all(b"not a push").await;
            let stopped = tokio::time::timeout(Duration::from_secs(10), own_uni.stopped())
                .await
                .expect("stopped in time");
            assert!(
                matches!(stopped, wtransport::error::StreamWriteError::Stopped(_)),
                "{stopped:?}"
            );
        }
    }

    // A stream naming another session is a protocol violation, answered like one.
    let bad = browser(&node, None, None).await.expect("session");
    let (mut send, mut recv) = bad
        .conn
        .quic_connection()
        .open_bi()
        .await
        .expect("raw stream");
    // WEBTRANSPORT_STREAM (0x41 as a 2-byte varint), session 4 (not this one's, 0).
    send.write_all(&[0x40, 0x41, 0x04, 1, 2, 3])
        .await
        .expect("written");
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096))
        .await
        .expect("answered in time")
        .expect("an answer");
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    dec.push(Bytes::from(answer));
    let answer = dec.next_frame().expect("valid").expect("a frame");
    assert_eq!(error_code(&answer), Some(ErrorCode::MalformedFrame));

    // A datagram of another session and one with garbage after the prefix are dropped
    // and counted; the session goes on.
    let quic = good.conn.quic_connection();
    quic.send_datagram(Bytes::from_static(&[0x01, 0xff, 0xff]))
        .expect("sent");
    good.conn.send_datagram(vec![0x3f; 8]).expect("sent");
    good.ping().await.expect("the session goes on");

    // A native session may open no unidirectional streams (the transport allows three
    // for HTTP/3): each is stopped at once.
    let native = Client::connect(config(&node, None)).await.expect("native");
    let mut uni = native.connection().open_uni().await.expect("uni");
    let _ = uni.write_all(b"not a push").await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), uni.stopped())
        .await
        .expect("stopped in time");
    assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");
    native.ping().await.expect("the session goes on");

    let m = metrics(&node).await;
    assert!(m.contains("outcome=\"bad_origin\""), "{m}");
    assert!(m.contains("code=\"MalformedFrame\""), "{m}");
    assert!(m.contains("code=\"FrameTooLarge\""), "{m}");
    assert!(m.contains("code=\"TooManyStreams\""), "{m}");
    assert!(m.contains("outcome=\"malformed\""), "{m}");
}

// ---- The WebSocket fallback (`GET /ws` on the `[web]` port) ----

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the fallback over TLS (pinning the edge's certificate), sending `origin`.
async fn websocket(node: &support::Node, origin: Option<&str>) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let web = node.edge.web_addr.expect("web listener");
    let trust = selfie_client::Trust::pinned_hex(&node.edge.fingerprint).expect("pin");
    let tls = selfie_client::tls_client_config(&trust, &[b"http/1.1"]).expect("tls");
    let tcp = tokio::net::TcpStream::connect(web)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("wss://{web}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(o) = origin {
        request
            .headers_mut()
            .insert("origin", o.parse().expect("header"));
    }
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// One fallback message: kind, stream id (a 1- or 2-byte varint), payload.
fn ws_message(kind: u8, id: u16, payload: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    let mut m = vec![kind];
    match id {
        0..=63 => m.push(id as u8),
        _ => m.extend_from_slice(&(0x4000 | id).to_be_bytes()),
    }
    m.extend_from_slice(payload);
    tokio_tungstenite::tungstenite::Message::Binary(m.into())
}

/// A fallback message's kind, stream id and payload.
fn ws_split(b: &Bytes) -> (u8, u16, Bytes) {
    if b[1] < 64 {
        (b[0], u16::from(b[1]), b.slice(2..))
    } else {
        (
            b[0],
            u16::from_be_bytes([b[1], b[2]]) & 0x3fff,
            b.slice(3..),
        )
    }
}

/// Reads messages until stream `id` has a whole frame; other streams' messages are
/// handed to `other` (kind, id, payload).
async fn ws_frame(ws: &mut Ws, id: u8, other: &mut Vec<(u8, u8, Vec<u8>)>) -> Option<Frame> {
    use futures::StreamExt;
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("in time")?
            .ok()?;
        let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else {
            return None;
        };
        // Other streams, and STOP/RESET (the edge stops a request stream it refused).
        let (kind, sid, payload) = ws_split(&b);
        if sid != u16::from(id) || kind > 1 {
            other.push((kind, sid as u8, payload.to_vec()));
            continue;
        }
        dec.push(payload);
        if let Some(f) = dec.next_frame().expect("valid frame") {
            return Some(f);
        }
    }
}

/// The next fallback message: kind, stream id, payload.
async fn ws_next(ws: &mut Ws) -> Option<(u8, u16, Vec<u8>)> {
    use futures::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("in time")?
        .ok()?;
    match msg {
        tokio_tungstenite::tungstenite::Message::Binary(b) => {
            let (kind, sid, payload) = ws_split(&b);
            Some((kind, sid, payload.to_vec()))
        }
        _ => None,
    }
}

async fn ws_hello(ws: &mut Ws, token: Option<&str>) -> WelcomeT {
    use futures::SinkExt;
    let v = ProtocolVersionT {
        major: PROTOCOL_VERSION.major,
        minor: PROTOCOL_VERSION.minor,
    };
    let mut hello = HelloT::default();
    hello.version = Some(v.clone());
    hello.min_version = Some(v);
    hello.access_token = token.map(str::to_string);
    let frame = envelope(0, control(ControlOpT::Hello(Box::new(hello))));
    ws.send(ws_message(0, 0, &frame)).await.expect("sent");
    let f = ws_frame(ws, 0, &mut Vec::new()).await.expect("Welcome");
    match f.envelope().unpack().body {
        BodyT::Control(c) => match c.op {
            ControlOpT::Welcome(w) => *w,
            other => panic!("not Welcome: {other:?}"),
        },
        other => panic!("not control: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_fallback_carries_the_same_session() {
    use futures::SinkExt;
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben_tokens = register(&anon, "ben").await;
    let ben_id = ben_tokens.user_id;
    let mut ben = websocket(&node, None).await.expect("upgraded");
    let welcome = ws_hello(&mut ben, ben_tokens.access_token.as_deref()).await;
    assert_eq!(welcome.user_id, ben_id);

    // Ben follows Ana and subscribes to his conversations, each a stream of its own.
    let mut f = FollowRequestT::default();
    f.target_id = ana.id;
    ben.send(ws_message(
        1,
        4,
        &envelope(1, graph(GraphOpT::FollowRequest(Box::new(f)))),
    ))
    .await
    .expect("sent");
    let answer = ws_frame(&mut ben, 4, &mut Vec::new())
        .await
        .expect("answer");
    assert_eq!(error_code(&answer), None);
    let mut f = FollowRequestT::default();
    f.target_id = ben_id;
    support::call(&ana.client, graph(GraphOpT::FollowRequest(Box::new(f))))
        .await
        .expect("followed");
    let mut r = SubscribeRequestT::default();
    r.kind = SubscriptionKind::AllConversations;
    let sub = envelope(2, control(ControlOpT::SubscribeRequest(Box::new(r))));
    ben.send(ws_message(1, 8, &sub)).await.expect("sent");
    let mut pushed = Vec::new();
    let answer = ws_frame(&mut ben, 8, &mut pushed).await.expect("answer");
    assert_eq!(error_code(&answer), None);

    // Ana writes natively; Ben's push stream (id 3, the server's first) has it.
    let id = ana
        .client
        .chat()
        .direct(ben_id)
        .await
        .expect("direct")
        .conversation_id;
    ana.client
        .chat()
        .send(id, "a-1", "hi ben")
        .await
        .expect("sent");
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    // Besides push stream 3's bytes: the FINs that end the answers of streams 4 and 8.
    for (kind, sid, payload) in pushed.drain(..) {
        if sid == 3 {
            dec.push(Bytes::from(payload));
        } else {
            assert_eq!((kind, payload.len()), (1, 0), "only a FIN on stream {sid}");
        }
    }
    let got = loop {
        if let Some(f) = dec.next_frame().expect("valid")
            && let Some(e) = push_event(&f)
            && e.kind == ChatEventKind::MessageCreated
        {
            break e;
        }
        let (kind, sid, payload) = ws_next(&mut ben).await.expect("a message");
        if sid == 3 {
            assert_eq!(kind, 0, "push stream data");
            dec.push(Bytes::from(payload));
        } else {
            assert_eq!((kind, payload.len()), (1, 0), "only a FIN on stream {sid}");
        }
    };
    assert_eq!(got.message.and_then(|m| m.text).as_deref(), Some("hi ben"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_input_gets_the_native_typed_errors() {
    use futures::{SinkExt, StreamExt};
    let mut parts = support::parts();
    parts.web.allowed_origins = vec!["https://app.selfie.test".into()];
    let tokens = support::tokens(&parts);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let node = support::start_with(&parts, tokens, throttle);

    // Another site's page is refused before the upgrade; a listed one is served.
    match websocket(&node, Some("https://evil.example")).await {
        Ok(_) => panic!("another site's page was let in"),
        Err(err) => assert!(err.contains("403"), "{err}"),
    }
    let mut ws = websocket(&node, Some("https://app.selfie.test"))
        .await
        .expect("allowed");
    ws_hello(&mut ws, None).await;

    // Garbage on a request stream: the native MalformedFrame answer.
    ws.send(ws_message(1, 4, b"\x05\x00\x00\x00hello"))
        .await
        .expect("sent");
    let answer = ws_frame(&mut ws, 4, &mut Vec::new())
        .await
        .expect("an answer");
    assert_eq!(error_code(&answer), Some(ErrorCode::MalformedFrame));

    // Streams beyond the limit, each holding half a frame: refused as TooManyStreams
    // (a RESET, or the session's answer), never buffered without bound.
    let mut ws = websocket(&node, None).await.expect("session");
    ws_hello(&mut ws, None).await;
    for i in 1..=140u16 {
        ws.send(ws_message(0, i * 4, &[64, 0, 0, 0, 1]))
            .await
            .expect("sent");
    }
    let too_many = u32::from(ErrorCode::TooManyStreams.0).to_be_bytes();
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (kind, _, payload) = ws_next(&mut ws).await.expect("a message");
            let mut dec = FrameDecoder::new(Limits::DEFAULT);
            dec.push(Bytes::from(payload.clone()));
            let typed = dec
                .next_frame()
                .ok()
                .flatten()
                .is_some_and(|f| error_code(&f) == Some(ErrorCode::TooManyStreams));
            if (kind == 2 && payload == too_many) || typed {
                return;
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "no TooManyStreams refusal");

    // A message over the size limit ends the connection.
    let mut ws = websocket(&node, None).await.expect("session");
    ws_hello(&mut ws, None).await;
    let _ = ws.send(ws_message(0, 4, &vec![0u8; 2 << 20])).await;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None
                | Some(Err(_))
                | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");

    let m = metrics(&node).await;
    assert!(m.contains("selfie_edge_websocket_sessions_total"), "{m}");
    assert!(m.contains("outcome=\"bad_origin\""), "{m}");
    assert!(m.contains("code=\"MalformedFrame\""), "{m}");
}

/// Defect: tasks watching a connection's other streams kept it open after its session
/// ended early (here a client that resets its first stream), past its address slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_early_closes_its_connection() {
    let node = support::start();
    let trust = selfie_client::Trust::pinned_hex(&node.edge.fingerprint).expect("pin");
    let tls = selfie_client::tls_client_config(&trust, &[selfie_protocol::ALPN]).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint
        .connect(node.edge.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[1]).await.expect("a byte");
    send.reset(quinn::VarInt::from_u32(7)).expect("reset");
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(closed.is_ok(), "the edge kept the connection open");
}
