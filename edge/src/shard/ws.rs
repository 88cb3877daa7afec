//! The WebSocket fallback's multiplexing: many streams and datagrams over one WebSocket
//! (TLS over TCP, `GET /ws` on the `[web]` port), for browsers and networks without
//! HTTP/3. The session above it is the native one (`Hello`, frames, limits, metrics,
//! drain); only the transport differs.
//!
//! Framing: every WebSocket binary message is one `kind` byte, a stream id (QUIC
//! variable-length integer) and a payload:
//!
//! | kind | meaning | payload |
//! |---|---|---|
//! | 0 `DATA` | bytes of a stream | the bytes |
//! | 1 `FIN` | the last bytes of a stream, then its end | the bytes (may be empty) |
//! | 2 `RESET` | the sender abandons its stream | `u32` big-endian error code |
//! | 3 `STOP` | the receiver wants no more of a stream | `u32` big-endian error code |
//! | 4 `DATAGRAM` | one datagram (stream id 0) | the datagram |
//!
//! Clients open streams with ids 0, 4, 8, ... (each one greater than the last, as in
//! QUIC; the first is the control stream); the server opens push streams with ids
//! 3, 7, 11, .... A stream's first `DATA` or `FIN` opens it. The connection closes with
//! WebSocket close code `4000 + ErrorCode` (1000 when clean).
//!
//! Limits: at most `limits.max_concurrent_streams` plus the QUIC margin of client
//! streams at once, counted until the session is done answering each (more are
//! answered `RESET TooManyStreams`, and a stream id must grow); at most
//! [`INBOUND_BUDGET`] bytes received and not yet read by the session (past it the
//! reader stops reading the socket: TCP pushes back) and 1 MiB queued for the socket
//! (past it writers wait); messages at most `max_frame_bytes` + 64 KiB; datagrams past a
//! small queue are dropped; a peer silent for `limits.idle_timeout_ms` is cut (clients
//! send heartbeats at the interval `Welcome` gives). A close ends the session at once;
//! the socket gets a second to take its close frame. Streams have no priorities here:
//! TCP has one queue.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes received on a connection's streams and not yet read by the session (at least
/// twice the largest message).
pub const INBOUND_BUDGET: usize = 4 << 20;
/// Bytes queued for the socket before writers wait.
const OUTBOUND_BUDGET: usize = 1 << 20;
/// Messages queued for the socket.
const OUTBOUND_QUEUE: usize = 256;
/// Time a closing socket gets to flush what was queued (its close frame included).
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Datagrams received and not yet read; more are dropped (latest-wins signals).
const DATAGRAM_QUEUE: usize = 64;

const DATA: u8 = 0;
const FIN: u8 = 1;
const RESET: u8 = 2;
const STOP: u8 = 3;
const DATAGRAM: u8 = 4;

/// Why a stream's bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset the stream (or stopped it) with this code.
    #[error("stream reset ({0})")]
    Reset(u32),
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

/// What the reader hands a stream: bytes (holding their share of the inbound budget),
/// or its reset.
enum Inbound {
    Data(Bytes, OwnedSemaphorePermit),
    Reset(u32),
}

/// Appends a QUIC variable-length integer.
fn put_varint(out: &mut BytesMut, v: u64) {
    match v {
        0..=0x3f => out.put_u8(v as u8),
        0x40..=0x3fff => out.put_u16(0x4000 | v as u16),
        0x4000..=0x3fff_ffff => out.put_u32(0x8000_0000 | v as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | (v & 0x3fff_ffff_ffff_ffff)),
    }
}

/// Reads a QUIC variable-length integer from the front of `b`: (value, length).
fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let v = bytes[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |acc, x| acc << 8 | u64::from(*x));
    Some((v, len))
}

fn message(kind: u8, id: u64, payload: &[u8]) -> Message {
    let mut out = BytesMut::with_capacity(1 + 8 + payload.len());
    out.put_u8(kind);
    put_varint(&mut out, id);
    out.put_slice(payload);
    Message::Binary(out.freeze())
}

/// A parsed message: kind, stream id, payload.
fn parse(msg: &Bytes) -> Option<(u8, u64, Bytes)> {
    let kind = *msg.first()?;
    let (id, n) = get_varint(msg.get(1..)?)?;
    Some((kind, id, msg.slice(1 + n..)))
}

fn code_of(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// Shared by a connection's streams and its two tasks.
struct Mux {
    out: mpsc::Sender<(Message, Option<OwnedSemaphorePermit>)>,
    /// Client streams being read: id -> the channel to their reader.
    inbound: RefCell<HashMap<u64, mpsc::UnboundedSender<Inbound>>>,
    /// Streams this side writes, open: id -> the code the peer stopped it with, if it
    /// did (`STOP`s of other ids are ignored: a client cannot grow this map).
    stopped: RefCell<HashMap<u64, Option<u32>>>,
    stop_signal: Notify,
    next_uni: Cell<u64>,
    /// Client streams open: created by their first message, done when the session drops
    /// its answering half (a `FIN` alone does not free the slot, as in QUIC).
    client_open: Cell<usize>,
    closed: Cell<bool>,
    /// `true` once the connection is closing: the writer and the reader stop (the socket
    /// goes with them), streams fail, accepts end. A watch: never a missed wakeup.
    closing: tokio::sync::watch::Sender<bool>,
    /// Bytes queued for the socket and not yet written.
    outbound: Arc<Semaphore>,
}

impl Mux {
    /// A connection's mux, queueing on `out` with `budget` bytes outstanding at most.
    fn new(out: mpsc::Sender<(Message, Option<OwnedSemaphorePermit>)>, budget: usize) -> Self {
        Mux {
            out,
            inbound: RefCell::new(HashMap::new()),
            stopped: RefCell::new(HashMap::new()),
            stop_signal: Notify::new(),
            next_uni: Cell::new(3),
            client_open: Cell::new(0),
            closed: Cell::new(false),
            closing: tokio::sync::watch::channel(false).0,
            outbound: Arc::new(Semaphore::new(budget)),
        }
    }

    fn close_all(&self) {
        self.closed.set(true);
        self.inbound.borrow_mut().clear();
        self.closing.send_replace(true);
        self.stop_signal.notify_waiters();
    }

    /// Resolves once the connection is closing.
    async fn until_closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Queues `msg`, first taking its bytes from the outbound budget (waits while the
    /// socket is behind); `Err` once the connection is closing.
    async fn send(&self, msg: Message) -> Result<(), StreamError> {
        let n = outbound_cost(&msg);
        let permit = tokio::select! {
            p = self.outbound.clone().acquire_many_owned(n) => p.map_err(|_| StreamError::Closed)?,
            () = self.until_closed() => return Err(StreamError::Closed),
        };
        if self.closed.get() {
            return Err(StreamError::Closed);
        }
        self.out
            .send((msg, Some(permit)))
            .await
            .map_err(|_| StreamError::Closed)
    }

    /// Queues `msg` if it fits now (datagrams, stops, closes, answers that fit: never
    /// waits).
    fn try_send(&self, msg: Message) -> bool {
        match self
            .outbound
            .clone()
            .try_acquire_many_owned(outbound_cost(&msg))
        {
            Ok(p) => self.out.try_send((msg, Some(p))).is_ok(),
            Err(_) => false,
        }
    }
}

/// A message's share of the outbound budget (a larger one takes all of it).
fn outbound_cost(msg: &Message) -> u32 {
    u32::try_from(msg.len().clamp(1, OUTBOUND_BUDGET)).unwrap_or(1)
}

/// One WebSocket connection, as the session sees it.
#[derive(Clone)]
pub struct WsLink {
    mux: Rc<Mux>,
    incoming: Rc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(WsSend, WsRecv)>>>,
    datagrams: Rc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
}

impl WsLink {
    /// Starts the reader and writer tasks of `socket` (on this shard's thread). A peer
    /// silent for `idle` (no message, not even a ping) is cut, as QUIC's idle timeout.
    pub fn start<S>(
        socket: tokio_tungstenite::WebSocketStream<S>,
        max_streams: usize,
        max_message: usize,
        idle: std::time::Duration,
    ) -> WsLink
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let (mut sink, mut source) = socket.split();
        let (out, mut out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (datagram_tx, datagram_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let mux = Rc::new(Mux::new(out, OUTBOUND_BUDGET));
        // Writer: everything queued, in order. On close it flushes what was queued (the
        // close frame included) for at most CLOSE_GRACE, then drops its half of the
        // socket; a write the peer does not take is abandoned at the close too.
        let writer_mux = mux.clone();
        tokio::task::spawn_local(async move {
            let mux = writer_mux;
            loop {
                let next = tokio::select! {
                    biased;
                    () = mux.until_closed() => break,
                    m = out_rx.recv() => m,
                };
                let Some((msg, _permit)) = next else { break };
                let close = matches!(msg, Message::Close(_));
                let sent = tokio::select! {
                    r = sink.send(msg) => r.is_ok(),
                    () = mux.until_closed() => false,
                };
                if !sent || close {
                    break;
                }
            }
            mux.close_all();
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Ok((msg, _permit)) = out_rx.try_recv() {
                    let close = matches!(msg, Message::Close(_));
                    if sink.send(msg).await.is_err() || close {
                        break;
                    }
                }
                let _ = sink.close().await;
            })
            .await;
        });
        // Reader: routes each message to its stream; stops (dropping its half of the
        // socket) when the connection closes, however it closes.
        let reader_mux = mux.clone();
        let budget = Arc::new(Semaphore::new(INBOUND_BUDGET.max(2 * max_message)));
        tokio::task::spawn_local(async move {
            let mux = reader_mux;
            let mut last_client_stream: Option<u64> = None;
            loop {
                let next = tokio::select! {
                    () = mux.until_closed() => break,
                    m = tokio::time::timeout(idle, source.next()) => m,
                };
                let Ok(Some(Ok(msg))) = next else { break };
                let bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    // Pings are answered by tungstenite; text has no meaning here.
                    Message::Text(_) => break,
                    _ => continue,
                };
                let Some((kind, id, payload)) = parse(&bytes) else {
                    break;
                };
                match kind {
                    DATA | FIN => {
                        if id % 4 != 0 {
                            break; // Only client-initiated bidirectional ids carry data.
                        }
                        let known = mux.inbound.borrow().get(&id).cloned();
                        let tx = match known {
                            Some(tx) => Some(tx),
                            None if last_client_stream.is_none_or(|last| id > last) => {
                                last_client_stream = Some(id);
                                if mux.client_open.get() >= max_streams {
                                    let refusal = message(RESET, id, &too_many_streams());
                                    if mux.send(refusal).await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                                let (tx, rx) = mpsc::unbounded_channel();
                                mux.inbound.borrow_mut().insert(id, tx.clone());
                                mux.client_open.set(mux.client_open.get() + 1);
                                let send = WsSend::new(id, &mux);
                                let recv = WsRecv {
                                    id,
                                    rx,
                                    mux: mux.clone(),
                                    ended: false,
                                };
                                if incoming_tx.send((send, recv)).is_err() {
                                    break;
                                }
                                Some(tx)
                            }
                            // An old stream the session has finished with.
                            None => None,
                        };
                        if let Some(tx) = tx {
                            if !payload.is_empty() {
                                let Ok(n) = u32::try_from(payload.len()) else {
                                    break;
                                };
                                let permit = tokio::select! {
                                    p = budget.clone().acquire_many_owned(n) => p,
                                    () = mux.until_closed() => break,
                                };
                                let Ok(permit) = permit else { break };
                                let _ = tx.send(Inbound::Data(payload, permit));
                            }
                            if kind == FIN {
                                // Dropping the sender ends the reader's stream.
                                mux.inbound.borrow_mut().remove(&id);
                            }
                        }
                    }
                    RESET => {
                        if let Some(tx) = mux.inbound.borrow_mut().remove(&id) {
                            let _ = tx.send(Inbound::Reset(code_of(&payload)));
                        }
                    }
                    STOP => {
                        if let Some(slot) = mux.stopped.borrow_mut().get_mut(&id) {
                            *slot = Some(code_of(&payload));
                        }
                        mux.stop_signal.notify_waiters();
                    }
                    DATAGRAM => {
                        let _ = datagram_tx.try_send(payload);
                    }
                    _ => break,
                }
            }
            mux.close_all();
        });
        WsLink {
            mux,
            incoming: Rc::new(tokio::sync::Mutex::new(incoming_rx)),
            datagrams: Rc::new(tokio::sync::Mutex::new(datagram_rx)),
        }
    }

    /// The next stream the client opened; `None` once the connection is gone.
    pub async fn accept_bi(&self) -> Option<(WsSend, WsRecv)> {
        if self.mux.closed.get() {
            return None;
        }
        tokio::select! {
            s = async { self.incoming.lock().await.recv().await } => s,
            () = self.mux.until_closed() => None,
        }
    }

    /// Opens a push stream.
    pub fn open_uni(&self) -> Option<WsSend> {
        if self.mux.closed.get() {
            return None;
        }
        let id = self.mux.next_uni.get();
        self.mux.next_uni.set(id + 4);
        Some(WsSend::new(id, &self.mux))
    }

    /// Queues a datagram; `false` when the queue is full or the connection gone.
    pub fn send_datagram(&self, d: &[u8]) -> bool {
        !self.mux.closed.get() && self.mux.try_send(message(DATAGRAM, 0, d))
    }

    /// The next datagram; `None` once the connection is gone.
    pub async fn read_datagram(&self) -> Option<Bytes> {
        if self.mux.closed.get() {
            return None;
        }
        tokio::select! {
            d = async { self.datagrams.lock().await.recv().await } => d,
            () = self.mux.until_closed() => None,
        }
    }

    /// Closes with `code` (an `ErrorCode`; 0 is clean) and a short reason: at once for
    /// the session (streams fail, accepts end); the socket gets its close frame if it
    /// takes it within a second.
    pub fn close(&self, code: u32, reason: &[u8]) {
        if self.mux.closed.get() {
            return;
        }
        let code = if code == 0 {
            CloseCode::Normal
        } else {
            CloseCode::from(4000u16.saturating_add(u16::try_from(code).unwrap_or(999)))
        };
        let reason = String::from_utf8_lossy(&reason[..reason.len().min(120)]).into_owned();
        let _ = self.mux.try_send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
        self.mux.close_all();
    }

    /// Resolves once the connection is gone.
    pub async fn closed(&self) {
        self.mux.until_closed().await;
    }
}

fn too_many_streams() -> [u8; 4] {
    u32::from(selfie_protocol::ErrorCode::TooManyStreams.0).to_be_bytes()
}

/// The sending half of a stream.
pub struct WsSend {
    id: u64,
    mux: Rc<Mux>,
    done: bool,
}

impl WsSend {
    fn new(id: u64, mux: &Rc<Mux>) -> Self {
        mux.stopped.borrow_mut().insert(id, None);
        WsSend {
            id,
            mux: mux.clone(),
            done: false,
        }
    }

    fn check(&self) -> Result<(), StreamError> {
        if self.mux.closed.get() {
            return Err(StreamError::Closed);
        }
        match self.mux.stopped.borrow().get(&self.id) {
            Some(Some(code)) => Err(StreamError::Reset(*code)),
            _ => Ok(()),
        }
    }

    /// Sends bytes (waits while the socket's queue is full).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.check()?;
        if self.done {
            return Err(StreamError::Closed);
        }
        self.mux.send(message(DATA, self.id, bytes)).await
    }

    /// Sends `bytes` and ends the stream, in one `FIN` message.
    pub async fn write_last(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.check()?;
        if std::mem::replace(&mut self.done, true) {
            return Err(StreamError::Closed);
        }
        self.mux.send(message(FIN, self.id, bytes)).await
    }

    /// [`WsSend::write_last`] when the socket's queue has room for it now: `None`, and
    /// nothing sent, when it would have to wait (the caller then waits, with its timer).
    pub fn try_write_last(&mut self, bytes: &[u8]) -> Option<Result<(), StreamError>> {
        if let Err(e) = self.check() {
            return Some(Err(e));
        }
        if self.done {
            return Some(Err(StreamError::Closed));
        }
        if !self.mux.try_send(message(FIN, self.id, bytes)) {
            return None;
        }
        self.done = true;
        Some(Ok(()))
    }

    /// Ends the stream.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        self.check()?;
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        self.mux.send(message(FIN, self.id, &[])).await
    }

    /// Abandons the stream with `code`.
    pub async fn reset(&mut self, code: u32) {
        if !std::mem::replace(&mut self.done, true) {
            let _ = self
                .mux
                .send(message(RESET, self.id, &code.to_be_bytes()))
                .await;
        }
    }

    /// Resolves when the peer stops the stream or the connection ends.
    pub async fn stopped(&self) {
        loop {
            let notified = self.mux.stop_signal.notified();
            if self.check().is_err() {
                return;
            }
            notified.await;
        }
    }

    /// The stream's id (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for WsSend {
    fn drop(&mut self) {
        // As a dropped quinn stream: what was written is finished (a push stream whose
        // task was aborted by an unsubscribe ends for the client too).
        if !self.done && !self.mux.closed.get() {
            let _ = self.mux.try_send(message(FIN, self.id, &[]));
        }
        self.mux.stopped.borrow_mut().remove(&self.id);
        if self.id.is_multiple_of(4) {
            // A client stream's answer is done: its slot is free.
            self.mux
                .client_open
                .set(self.mux.client_open.get().saturating_sub(1));
        }
    }
}

/// The receiving half of a client stream.
pub struct WsRecv {
    id: u64,
    rx: mpsc::UnboundedReceiver<Inbound>,
    mux: Rc<Mux>,
    ended: bool,
}

impl WsRecv {
    /// The next bytes; `Ok(None)` at the stream's end.
    pub async fn read(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv().await {
            // The permit goes back to the budget as the bytes are handed over.
            Some(Inbound::Data(bytes, _permit)) => Ok(Some(bytes)),
            Some(Inbound::Reset(code)) => Err(StreamError::Reset(code)),
            None if self.mux.closed.get() => Err(StreamError::Closed),
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }

    /// Asks the client to send no more on this stream; what it sent is dropped.
    pub fn stop(&mut self, code: u32) {
        self.ended = true;
        self.mux.inbound.borrow_mut().remove(&self.id);
        self.rx.close();
        let _ = self
            .mux
            .try_send(message(STOP, self.id, &code.to_be_bytes()));
    }
}

impl Drop for WsRecv {
    fn drop(&mut self) {
        // Whatever else arrives for this stream is dropped by the reader.
        self.mux.inbound.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's mux with a `budget` of outbound bytes and its queue's receiver
    /// (the socket writer's end).
    #[allow(clippy::type_complexity)]
    fn mux(
        budget: usize,
    ) -> (
        Rc<Mux>,
        mpsc::Receiver<(Message, Option<OwnedSemaphorePermit>)>,
    ) {
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let mux = Rc::new(Mux::new(out, budget));
        (mux, rx)
    }

    /// Client streams (ids 0, 4, 8: client-initiated bidirectional) answered by the edge.
    #[test]
    fn an_answer_that_fits_is_queued_at_once_and_one_that_does_not_is_left_whole() {
        let (mux, mut rx) = mux(64);
        let mut first = WsSend::new(0, &mux);
        assert!(matches!(first.try_write_last(b"pong"), Some(Ok(()))));
        let (msg, permit) = rx.try_recv().expect("queued");
        assert_eq!(msg, message(FIN, 0, b"pong"));
        // The socket writer wrote it: its bytes go back to the budget.
        drop(permit);
        // A second answer on the same stream: closed, nothing queued.
        assert!(matches!(
            first.try_write_last(b"again"),
            Some(Err(StreamError::Closed))
        ));
        assert!(rx.try_recv().is_err());
        // The budget taken by a socket that is behind: not queued, the stream still open
        // for the waiting write.
        let held = mux
            .outbound
            .clone()
            .try_acquire_many_owned(64)
            .expect("budget");
        let mut second = WsSend::new(4, &mux);
        assert!(second.try_write_last(b"pong").is_none());
        assert!(rx.try_recv().is_err());
        drop(held);
        assert!(matches!(second.try_write_last(b"pong"), Some(Ok(()))));
        assert_eq!(rx.try_recv().expect("queued").0, message(FIN, 4, b"pong"));
        // A stream the client stopped: its code, nothing queued.
        let mut third = WsSend::new(8, &mux);
        mux.stopped.borrow_mut().insert(8, Some(9));
        assert!(matches!(
            third.try_write_last(b"pong"),
            Some(Err(StreamError::Reset(9)))
        ));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [
            0u64,
            63,
            64,
            16_383,
            16_384,
            1 << 29,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())), "{v}");
        }
        assert_eq!(get_varint(&[0x40]), None, "truncated");
        assert_eq!(get_varint(&[]), None);
    }

    #[test]
    fn messages_parse_and_garbage_does_not() {
        let Message::Binary(m) = message(FIN, 16_384, b"abc") else {
            unreachable!("binary")
        };
        let (kind, id, payload) = parse(&m).expect("parses");
        assert_eq!((kind, id, &payload[..]), (FIN, 16_384, &b"abc"[..]));
        assert!(parse(&Bytes::from_static(&[DATA])).is_none());
        assert!(parse(&Bytes::from_static(&[DATA, 0x80, 0x00])).is_none());
        assert_eq!(code_of(&[0, 0, 0, 201]), 201);
        assert_eq!(code_of(&[1]), 0);
    }
}
