//! WebTransport (browsers) on the shard's own QUIC endpoint: a connection that negotiated
//! ALPN `h3` becomes one WebTransport session, and from then on it is a session like any
//! other — the same `Hello`/`Welcome`, frames, limits, metrics and drain.
//!
//! Only what WebTransport over HTTP/3 needs is spoken here, with `wtransport-proto`
//! (sans-I/O: QPACK, SETTINGS, HEADERS, stream headers, datagram ids) over quinn's own
//! streams: both sides' control streams (SETTINGS with extended CONNECT, H3 datagrams and
//! WebTransport enabled, a QPACK table of 0 so no dynamic state), one extended `CONNECT`
//! with `:protocol = webtransport` checked against the allowed origins, then:
//! - each client bidirectional stream starts with `WEBTRANSPORT_STREAM` (0x41) and the
//!   session id, which is read and checked before its first frame;
//! - each push stream the edge opens starts with stream type 0x54 and the session id;
//! - each datagram starts with the session's quarter stream id.
//!
//! After those prefixes the bytes are the native protocol's, on the same quinn streams
//! (priorities, flow control and zero-copy writes unchanged). Other HTTP/3 requests are
//! refused (404): the edge serves no plain HTTP/3. A session ends when the client ends its
//! `CONNECT` stream (or closes the connection).

use std::cell::Cell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};

use super::link::{Link, RecvHalf, SendHalf};
use wtransport_proto::bytes::{BytesWriter, EndOfBuffer};
use wtransport_proto::frame::Frame as H3Frame;
use wtransport_proto::headers::Headers;
use wtransport_proto::ids::{QStreamId, SessionId, StatusCode, StreamId};
use wtransport_proto::session::{SessionRequest, SessionResponse};
use wtransport_proto::settings::{SettingId, Settings};
use wtransport_proto::stream_header::StreamHeader;
use wtransport_proto::varint::VarInt as H3VarInt;

/// The ALPN of HTTP/3, which browsers offer for WebTransport.
pub const H3_ALPN: &[u8] = b"h3";

/// HTTP/3 stream types (RFC 9114 §6.2, RFC 9204 §4.2, WebTransport over HTTP/3 §4.2).
const STREAM_CONTROL: u64 = 0x00;
const STREAM_QPACK_ENCODER: u64 = 0x02;
const STREAM_QPACK_DECODER: u64 = 0x03;
const STREAM_WEBTRANSPORT_UNI: u64 = 0x54;
/// HTTP/3 frame types.
const FRAME_HEADERS: u64 = 0x01;
const FRAME_SETTINGS: u64 = 0x04;
const FRAME_WEBTRANSPORT_STREAM: u64 = 0x41;
/// `CLOSE_WEBTRANSPORT_SESSION` (a capsule, RFC 9297).
const CAPSULE_CLOSE_WEBTRANSPORT_SESSION: u32 = 0x2843;
/// HTTP/3 error codes (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
const H3_CLOSED_CRITICAL_STREAM: u32 = 0x104;
const H3_FRAME_UNEXPECTED: u32 = 0x105;
const H3_EXCESSIVE_LOAD: u32 = 0x107;
const H3_SETTINGS_ERROR: u32 = 0x109;
const H3_MISSING_SETTINGS: u32 = 0x10a;
const H3_MESSAGE_ERROR: u32 = 0x10e;
/// `WEBTRANSPORT_BUFFERED_STREAM_REJECTED`: a stream of another (or no) session.
const WT_BUFFERED_STREAM_REJECTED: u32 = 0x3994_bd84;

/// The largest HTTP/3 frame read here (a `CONNECT` request's headers, SETTINGS).
const MAX_H3_FRAME: u64 = 16 * 1024;
/// Frames of unknown (grease) types skipped before the one expected.
const MAX_SKIPPED_FRAMES: usize = 8;
/// Bytes a client may send on its QPACK streams and its control stream after SETTINGS
/// (a QPACK table of 0 leaves them nothing to say), and on its `CONNECT` stream after
/// the request (capsules).
const MAX_IDLE_STREAM_BYTES: u64 = 64 * 1024;

/// Why a connection did not become a WebTransport session; `label` is its metric outcome.
#[derive(Debug, thiserror::Error)]
#[error("webtransport refused: {label}")]
pub struct Refused {
    /// A bounded metric label: `bad_request`, `bad_settings`, `bad_origin`,
    /// `not_found`, `closed`, `timeout`.
    pub label: &'static str,
}

fn refused(label: &'static str) -> Refused {
    Refused { label }
}

/// Which browser origins may open sessions.
#[derive(Debug, Clone)]
pub struct Origins {
    any: bool,
    allowed: Vec<String>,
}

impl Origins {
    /// `allowed` as configured (`"*"` allows any) plus the edge's own web origins (the
    /// HTTPS listener's address, and `web.public_url`).
    pub fn new(allowed: &[String], own: impl IntoIterator<Item = String>) -> Self {
        let any = allowed.iter().any(|o| o == "*");
        let allowed = allowed
            .iter()
            .filter(|o| *o != "*")
            .cloned()
            .chain(own)
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Self { any, allowed }
    }

    /// Whether a request with this `Origin` header may open a session. Browsers always
    /// send one; a request without it comes from a non-browser client, which an origin
    /// check cannot constrain anyway (it could send any value), and is allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.any => true,
            Some(o) => self.allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }
}

/// An established session: the prefixes its streams and datagrams carry.
pub(super) struct WtSession {
    id: SessionId,
    prefixes: Prefixes,
    /// The edge's HTTP/3 control stream: it must stay open as long as the connection
    /// (closing it is a connection error for the peer).
    _control: SendStream,
    /// The `CONNECT` stream's send half: open while the session lives; its
    /// `CLOSE_WEBTRANSPORT_SESSION` capsule tells a browser why the session ended.
    connect: std::cell::RefCell<Option<SendStream>>,
}

impl WtSession {
    /// Reads and checks the header of a client bidirectional stream: `Err` with the
    /// HTTP/3 code to stop it with.
    pub(super) async fn read_stream_header(&self, recv: &mut RecvHalf) -> Result<(), u32> {
        let RecvHalf::Quic(recv) = recv else {
            return Err(H3_STREAM_CREATION_ERROR);
        };
        match read_varint(recv).await {
            Some(FRAME_WEBTRANSPORT_STREAM) => {}
            Some(_) => return Err(H3_FRAME_UNEXPECTED),
            None => return Err(H3_MESSAGE_ERROR),
        }
        match read_varint(recv).await {
            Some(id) if id == self.id.into_u64() => Ok(()),
            Some(_) => Err(WT_BUFFERED_STREAM_REJECTED),
            None => Err(H3_MESSAGE_ERROR),
        }
    }

    /// Ends the session with an application `code` (an `ErrorCode`): a
    /// `CLOSE_WEBTRANSPORT_SESSION` capsule on the `CONNECT` stream (so that the page's
    /// `WebTransport.closed` has the code and reason), then, once the browser has it or
    /// after half a second, the connection's close.
    pub(super) fn close(&self, conn: &Link, code: u32, reason: &[u8]) {
        let Some(mut send) = self.connect.borrow_mut().take() else {
            return; // A close is already under way (it ends the connection itself).
        };
        let reason = &reason[..reason.len().min(1024)];
        let mut capsule = Vec::with_capacity(16 + reason.len());
        let inner = 4 + reason.len() as u64;
        let mut body = Vec::with_capacity(inner as usize + 16);
        let _ = body.put_varint(H3VarInt::from_u32(CAPSULE_CLOSE_WEBTRANSPORT_SESSION));
        let _ = H3VarInt::try_from_u64(inner).map(|v| body.put_varint(v));
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(reason);
        // Capsules travel in HTTP/3 DATA frames on the request stream.
        if H3Frame::new_data(body.into()).write(&mut capsule).is_err() {
            return conn.close(code, reason);
        }
        let (conn, reason) = (conn.clone(), reason.to_vec());
        tokio::task::spawn_local(async move {
            // Half a second in all: a client that takes nothing cannot hold the close.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
                if send.write_all(&capsule).await.is_ok() {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            })
            .await;
            conn.close(code, &reason);
        });
    }

    /// What the session's push streams and datagrams start with.
    pub(super) fn prefixes(&self) -> Prefixes {
        self.prefixes.clone()
    }

    /// The payload of a datagram of this session; `None` for one of another session or
    /// without a valid prefix.
    pub(super) fn datagram_payload(&self, datagram: Bytes) -> Option<Bytes> {
        let prefix = self.prefixes.datagram.len();
        (datagram.get(..prefix) == Some(&self.prefixes.datagram[..]))
            .then(|| datagram.slice(prefix..))
    }
}

/// What a session's push streams and datagrams start with (cheap to clone into the
/// tasks that write them).
#[derive(Clone)]
pub(super) struct Prefixes {
    /// Written at the start of every push stream: type 0x54 and the session id.
    uni: Bytes,
    /// Written before every datagram's payload: the quarter stream id.
    datagram: Bytes,
}

impl Prefixes {
    /// Opens a push stream of this session, its header written.
    pub(super) async fn open_uni(&self, conn: &Link) -> Option<SendHalf> {
        let mut send = conn.open_uni().await?;
        send.write_chunk(self.uni.clone()).await.ok()?;
        Some(send)
    }

    /// The HTTP/3 code that carries the application error `code` when a stream of this
    /// session is reset or stopped: WebTransport maps its 32-bit codes into a reserved
    /// range (`0x52e4a40fa8db + n + n / 0x1e`), so that a browser reports
    /// `streamErrorCode = n`.
    pub(super) fn stream_error(&self, code: u32) -> quinn::VarInt {
        stream_error(code)
    }

    /// A datagram of this session carrying `payload`.
    pub(super) fn datagram(&self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(self.datagram.len() + payload.len());
        out.extend_from_slice(&self.datagram);
        out.extend_from_slice(payload);
        out.freeze()
    }
}

/// WebTransport's mapping of an application error code onto HTTP/3 error codes.
fn stream_error(code: u32) -> quinn::VarInt {
    let n = u64::from(code);
    quinn::VarInt::from_u64(0x52e4_a40f_a8db + n + n / 0x1e).unwrap_or(quinn::VarInt::MAX)
}

/// Stop code for an HTTP/3 error.
fn h3_code(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

/// Reads one QUIC variable-length integer; `None` at the end of the stream or an error.
async fn read_varint(recv: &mut RecvStream) -> Option<u64> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.ok()?;
    let len = 1usize << (first[0] >> 6);
    let mut buf = [0u8; 8];
    buf[0] = first[0] & 0x3f;
    recv.read_exact(&mut buf[1..len]).await.ok()?;
    Some(
        buf[..len]
            .iter()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
    )
}

/// Reads HTTP/3 frames until one of type `want`, skipping a few of unknown (reserved,
/// grease) types; returns its payload.
async fn read_h3_frame(recv: &mut RecvStream, want: u64) -> Result<Vec<u8>, &'static str> {
    for _ in 0..=MAX_SKIPPED_FRAMES {
        let kind = read_varint(recv).await.ok_or("closed")?;
        let len = read_varint(recv).await.ok_or("closed")?;
        if len > MAX_H3_FRAME {
            return Err("bad_request");
        }
        let mut payload = vec![0u8; len as usize];
        recv.read_exact(&mut payload).await.map_err(|_| "closed")?;
        if kind == want {
            return Ok(payload);
        }
        // HTTP/3 frames defined for other streams are errors; reserved ones are skipped.
        if kind <= 0x0d {
            return Err("bad_request");
        }
    }
    Err("bad_request")
}

/// Serializes an HTTP/3 stream header, frame or varint.
fn encode(write: impl FnOnce(&mut Vec<u8>) -> Result<(), EndOfBuffer>) -> Result<Bytes, Refused> {
    let mut buf = Vec::with_capacity(16);
    write(&mut buf).map_err(|_| refused("bad_request"))?;
    Ok(Bytes::from(buf))
}

/// Accepts the WebTransport session of a connection that negotiated `h3`: SETTINGS both
/// ways, then one extended `CONNECT` from an allowed origin, answered 200. The caller
/// bounds it with the handshake deadline. `decided` hears the outcome of a `CONNECT`
/// before the client has the answer.
pub(super) async fn accept(
    conn: &Connection,
    origins: &Origins,
    decided: impl Fn(&'static str),
) -> Result<WtSession, Refused> {
    // Our control stream: the stream type, then SETTINGS.
    let mut control = conn.open_uni().await.map_err(|_| refused("closed"))?;
    let settings = Settings::builder()
        .qpack_max_table_capacity(H3VarInt::from_u32(0))
        .qpack_blocked_streams(H3VarInt::from_u32(0))
        .enable_connect_protocol()
        .enable_webtransport()
        .enable_h3_datagrams()
        .webtransport_max_sessions(H3VarInt::from_u32(1))
        .build();
    let head = encode(|w| StreamHeader::new_control().write(w))?;
    let frame = encode(|w| settings.generate_frame().write(w))?;
    control
        .write_all_chunks(&mut [head, frame])
        .await
        .map_err(|_| refused("closed"))?;
    let (settings_tx, settings_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(peer_uni_streams(conn.clone(), settings_tx));

    // The CONNECT request: the client's first bidirectional stream.
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|_| refused("closed"))?;
    let stream_id = u64::from(quinn::VarInt::from(send.id()));
    let payload = read_h3_frame(&mut recv, FRAME_HEADERS)
        .await
        .map_err(refused)?;
    let headers = Headers::with_frame(&H3Frame::new_headers(payload.into()))
        .map_err(|_| refused("bad_request"))?;
    // The request is not acted on before the client's SETTINGS say it speaks HTTP/3
    // datagrams (the drafts' precondition for WebTransport).
    let settings = settings_rx.await.map_err(|_| refused("bad_settings"))?;
    if settings
        .get(SettingId::H3Datagram)
        .map(H3VarInt::into_inner)
        != Some(1)
    {
        conn.close(
            h3_code(H3_SETTINGS_ERROR),
            b"SETTINGS_H3_DATAGRAM=1 required",
        );
        return Err(refused("bad_settings"));
    }
    let (status, outcome) = match SessionRequest::try_from(headers) {
        Err(_) => (StatusCode::NOT_FOUND, Err("not_found")),
        Ok(request) if !origins.allows(request.origin()) => {
            (StatusCode::FORBIDDEN, Err("bad_origin"))
        }
        Ok(_) => (StatusCode::OK, Ok(())),
    };
    decided(outcome.map_or_else(|label| label, |()| "accepted"));
    let response = SessionResponse::with_status_code(status);
    let bytes = encode(|w| response.headers().generate_frame().write(w))?;
    send.write_chunk(bytes)
        .await
        .map_err(|_| refused("closed"))?;
    if let Err(label) = outcome {
        let _ = send.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), send.stopped()).await;
        conn.close(h3_code(H3_NO_ERROR), label.as_bytes());
        return Err(refused(label));
    }
    let id = H3VarInt::try_from_u64(stream_id)
        .ok()
        .and_then(|v| SessionId::try_from_session_stream(StreamId::new(v)).ok())
        .ok_or_else(|| refused("bad_request"))?;
    let uni_prefix = encode(|w| StreamHeader::new_webtransport(id).write(w))?;
    let quarter = QStreamId::from_session_id(id).into_varint();
    let datagram_prefix = encode(|w| w.put_varint(quarter))?;
    tokio::task::spawn_local(watch_connect_stream(conn.clone(), recv));
    Ok(WtSession {
        id,
        prefixes: Prefixes {
            uni: uni_prefix,
            datagram: datagram_prefix,
        },
        _control: control,
        connect: std::cell::RefCell::new(Some(send)),
    })
}

/// Reads and discards up to [`MAX_IDLE_STREAM_BYTES`] of a stream that carries nothing
/// the edge acts on: `Ok` when it ended cleanly, else the HTTP/3 code to close with.
async fn drain_stream(recv: &mut RecvStream) -> Result<(), u32> {
    let mut seen = 0u64;
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                seen += chunk.bytes.len() as u64;
                if seen > MAX_IDLE_STREAM_BYTES {
                    let _ = recv.stop(h3_code(H3_EXCESSIVE_LOAD));
                    return Err(H3_EXCESSIVE_LOAD);
                }
            }
            Ok(None) => return Ok(()),
            Err(_) => return Err(H3_NO_ERROR),
        }
    }
}

/// The `CONNECT` stream after the 200: capsules (`CLOSE_WEBTRANSPORT_SESSION`) or its end
/// end the session, and with it the connection.
async fn watch_connect_stream(conn: Connection, mut recv: RecvStream) {
    let code = match drain_stream(&mut recv).await {
        Ok(()) => H3_NO_ERROR,
        Err(code) => code,
    };
    conn.close(h3_code(code), b"webtransport session closed");
}

/// The client's unidirectional streams (at most three at once, the transport's limit):
/// one control stream (SETTINGS first, handed to `settings`; its end is a connection
/// error), QPACK streams (nothing to say with a table of 0; their end is an error too),
/// and none of WebTransport (the protocol has no client push streams). A second
/// control stream is an error.
async fn peer_uni_streams(conn: Connection, settings: tokio::sync::oneshot::Sender<Settings>) {
    let settings = Rc::new(Cell::new(Some(settings)));
    while let Ok(mut recv) = conn.accept_uni().await {
        let conn = conn.clone();
        let settings = settings.clone();
        tokio::task::spawn_local(async move {
            match read_varint(&mut recv).await {
                Some(STREAM_CONTROL) => {
                    let Some(tx) = settings.take() else {
                        conn.close(h3_code(H3_STREAM_CREATION_ERROR), b"second control stream");
                        return;
                    };
                    let parsed = read_h3_frame(&mut recv, FRAME_SETTINGS)
                        .await
                        .ok()
                        .and_then(|p| Settings::with_frame(&H3Frame::new_settings(p.into())).ok());
                    let Some(parsed) = parsed else {
                        conn.close(h3_code(H3_MISSING_SETTINGS), b"SETTINGS expected");
                        return;
                    };
                    let _ = tx.send(parsed);
                    let code = match drain_stream(&mut recv).await {
                        Ok(()) => H3_CLOSED_CRITICAL_STREAM,
                        Err(code) => code,
                    };
                    conn.close(h3_code(code), b"control stream ended");
                }
                Some(STREAM_QPACK_ENCODER | STREAM_QPACK_DECODER) => {
                    let code = match drain_stream(&mut recv).await {
                        Ok(()) => H3_CLOSED_CRITICAL_STREAM,
                        Err(code) => code,
                    };
                    conn.close(h3_code(code), b"qpack stream ended");
                }
                Some(STREAM_WEBTRANSPORT_UNI) => {
                    let _ = recv.stop(h3_code(H3_STREAM_CREATION_ERROR));
                }
                _ => {
                    let _ = recv.stop(h3_code(H3_STREAM_CREATION_ERROR));
                }
            }
        });
    }
}

/// A native (`selfie/1`) connection's unidirectional streams: the protocol has none from
/// clients (the transport allows a few for HTTP/3), so each is stopped at once.
pub(super) async fn refuse_uni_streams(conn: Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let _ = recv.stop(quinn::VarInt::from_u32(u32::from(
            selfie_protocol::ErrorCode::UnexpectedMessage.0,
        )));
    }
}

/// The ALPN a connection negotiated.
pub(super) fn alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_codes_map_into_webtransport_s_range() {
        // The draft's examples: 0 is the first code, and every 0x1e-th is skipped
        // (reserved greasing values).
        assert_eq!(stream_error(0).into_inner(), 0x52e4_a40f_a8db);
        assert_eq!(stream_error(0x1d).into_inner(), 0x52e4_a40f_a8db + 0x1d);
        assert_eq!(stream_error(0x1e).into_inner(), 0x52e4_a40f_a8db + 0x1f);
    }

    #[test]
    fn origins_are_checked_exactly_and_any_allows_all() {
        let o = Origins::new(
            &["https://app.example.com/".into()],
            Some("https://127.0.0.1:4460".into()),
        );
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("HTTPS://APP.example.com")));
        assert!(o.allows(Some("https://127.0.0.1:4460")));
        assert!(!o.allows(Some("https://evil.example.com")));
        assert!(!o.allows(Some("https://app.example.com.evil.com")));
        assert!(!o.allows(Some("null")));
        assert!(o.allows(None));
        assert!(Origins::new(&["*".into()], None).allows(Some("https://any.example")));
        assert!(!Origins::new(&[], None).allows(Some("https://any.example")));
    }
}
