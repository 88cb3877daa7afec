//! What the session layer needs from a transport, whichever carries it: QUIC (native
//! clients, and browsers over WebTransport, which is QUIC streams with a prefix) or the
//! WebSocket fallback ([`super::ws`]). Enums rather than trait objects: two variants,
//! no allocation, and the QUIC path compiles to the calls it made before.

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use super::ws::{StreamError, WsLink, WsRecv, WsSend};

/// A client connection.
#[derive(Clone)]
pub(super) enum Link {
    Quic(Connection),
    Ws(WsLink),
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("{0}")]
    Ws(#[from] StreamError),
}

impl Link {
    /// Closes the connection with `code` (an `ErrorCode`, or 0) and a reason.
    pub(super) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Link::Quic(c) => c.close(VarInt::from_u32(code), reason),
            Link::Ws(w) => w.close(code, reason),
        }
    }

    /// The next stream the client opened; `None` once the connection is gone.
    pub(super) async fn accept_bi(&self) -> Option<(SendHalf, RecvHalf)> {
        match self {
            Link::Quic(c) => {
                let (s, r) = c.accept_bi().await.ok()?;
                Some((SendHalf::Quic(s), RecvHalf::Quic(r)))
            }
            Link::Ws(w) => {
                let (s, r) = w.accept_bi().await?;
                Some((SendHalf::Ws(s), RecvHalf::Ws(r)))
            }
        }
    }

    /// Opens a push stream.
    pub(super) async fn open_uni(&self) -> Option<SendHalf> {
        match self {
            Link::Quic(c) => c.open_uni().await.ok().map(SendHalf::Quic),
            Link::Ws(w) => w.open_uni().map(SendHalf::Ws),
        }
    }

    /// Sends a datagram (best effort); `false` when it was dropped.
    pub(super) fn send_datagram(&self, d: Bytes) -> bool {
        match self {
            Link::Quic(c) => c.send_datagram(d).is_ok(),
            Link::Ws(w) => w.send_datagram(&d),
        }
    }

    /// The next datagram; `None` once the connection is gone.
    pub(super) async fn read_datagram(&self) -> Option<Bytes> {
        match self {
            Link::Quic(c) => c.read_datagram().await.ok(),
            Link::Ws(w) => w.read_datagram().await,
        }
    }

    /// Resolves once the connection is gone.
    pub(super) async fn closed(&self) {
        match self {
            Link::Quic(c) => {
                c.closed().await;
            }
            Link::Ws(w) => w.closed().await,
        }
    }

    /// `"quic"` or `"websocket"`, for logs.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
            Link::Ws(_) => "websocket",
        }
    }
}

/// The sending half of a stream.
pub(super) enum SendHalf {
    Quic(SendStream),
    Ws(WsSend),
}

impl SendHalf {
    /// Sends `bytes` (for QUIC without a copy).
    pub(super) async fn write_chunk(&mut self, bytes: Bytes) -> Result<(), LinkError> {
        match self {
            SendHalf::Quic(s) => Ok(s.write_chunk(bytes).await?),
            SendHalf::Ws(s) => Ok(s.write(&bytes).await?),
        }
    }

    /// Sends `bytes`.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        match self {
            SendHalf::Quic(s) => Ok(s.write_all(bytes).await?),
            SendHalf::Ws(s) => Ok(s.write(bytes).await?),
        }
    }

    /// Sends `bytes` and ends the stream: the whole answer to a request (one message
    /// over the WebSocket fallback instead of two).
    pub(super) async fn write_last(&mut self, bytes: Bytes) -> Result<(), LinkError> {
        match self {
            SendHalf::Quic(s) => {
                s.write_chunk(bytes).await?;
                let _ = s.finish();
                Ok(())
            }
            SendHalf::Ws(s) => Ok(s.write_last(&bytes).await?),
        }
    }

    /// [`SendHalf::write_last`], abandoned (the stream reset with `code`) when the client
    /// has not taken it within `deadline`: an answer a client never reads (a zero receive
    /// window) would otherwise hold its task, its stream and its bytes for as long as the
    /// connection lives. No timer is armed when the write completes at once, as answers
    /// to a reading client do.
    pub(super) async fn write_last_within(
        &mut self,
        bytes: Bytes,
        deadline: std::time::Duration,
        code: VarInt,
    ) -> Handed {
        match self.try_write_last(bytes) {
            Ok(handed) => handed,
            Err(rest) => Box::pin(self.write_last_waiting(rest, deadline, code)).await,
        }
    }

    /// [`SendHalf::write_last`] when the transport takes the whole answer now, as it
    /// does for a reading client: `Ok` with how it was handed, or `Err` with what is left
    /// to write (all of it when nothing was taken), for [`SendHalf::write_last_waiting`].
    /// For QUIC a future made and dropped here (`write_chunks` writes only when it
    /// resolves), for the WebSocket fallback a queueing that never waits: nothing of the
    /// write is held by the caller.
    pub(super) fn try_write_last(&mut self, bytes: Bytes) -> Result<Handed, Bytes> {
        match self {
            SendHalf::Quic(s) => {
                let mut chunks = [bytes];
                match futures::FutureExt::now_or_never(s.write_chunks(&mut chunks)) {
                    Some(Err(_)) => Ok(Handed::Failed),
                    Some(Ok(_)) if chunks[0].is_empty() => {
                        let _ = s.finish();
                        Ok(Handed::Over)
                    }
                    // Blocked (nothing written) or written in part (the rest is left).
                    _ => {
                        let [rest] = chunks;
                        Err(rest)
                    }
                }
            }
            SendHalf::Ws(s) => match s.try_write_last(&bytes) {
                Some(Ok(())) => Ok(Handed::Over),
                Some(Err(_)) => Ok(Handed::Failed),
                None => Err(bytes),
            },
        }
    }

    /// The rest of [`SendHalf::write_last_within`]: the write that has to wait for room,
    /// abandoned (the stream reset with `code`) after `deadline`.
    pub(super) async fn write_last_waiting(
        &mut self,
        bytes: Bytes,
        deadline: std::time::Duration,
        code: VarInt,
    ) -> Handed {
        match tokio::time::timeout(deadline, self.write_last(bytes)).await {
            Ok(Ok(())) => Handed::Over,
            Ok(Err(_)) => Handed::Failed,
            Err(_) => {
                self.reset(code).await;
                Handed::Abandoned
            }
        }
    }

    /// [`SendHalf::write_chunk`], `None` when the client has not made room for it within
    /// `deadline` (a download to a client that stopped reading). No timer is armed when
    /// the write completes at once.
    pub(super) async fn write_chunk_within(
        &mut self,
        bytes: Bytes,
        deadline: std::time::Duration,
    ) -> Option<Result<(), LinkError>> {
        let mut write = std::pin::pin!(self.write_chunk(bytes));
        match futures::poll!(&mut write) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => Box::pin(tokio::time::timeout(deadline, write)).await.ok(),
        }
    }

    /// Ends the stream after what was written.
    pub(super) async fn finish(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.finish();
            }
            SendHalf::Ws(s) => {
                let _ = s.finish().await;
            }
        }
    }

    /// Abandons the stream with an application `code` (already mapped for WebTransport).
    pub(super) async fn reset(&mut self, code: VarInt) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.reset(code);
            }
            SendHalf::Ws(s) => {
                s.reset(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
                    .await;
            }
        }
    }

    /// Resolves when the peer stops reading (or has read everything, for QUIC).
    pub(super) async fn stopped(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.stopped().await;
            }
            SendHalf::Ws(s) => s.stopped().await,
        }
    }

    /// A QUIC send priority (the WebSocket fallback has one queue: ignored).
    pub(super) fn set_priority(&self, priority: i32) {
        if let SendHalf::Quic(s) = self {
            let _ = s.set_priority(priority);
        }
    }

    /// The stream's id, for logs.
    pub(super) fn id(&self) -> u64 {
        match self {
            SendHalf::Quic(s) => VarInt::from(s.id()).into_inner(),
            SendHalf::Ws(s) => s.id(),
        }
    }
}

/// What became of an answer given to [`SendHalf::write_last_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handed {
    /// Handed to the transport whole, and the stream ended.
    Over,
    /// The stream was gone (reset, stopped, the connection closed).
    Failed,
    /// Not taken within the deadline: the stream was reset.
    Abandoned,
}

/// The receiving half of a client stream.
pub(super) enum RecvHalf {
    Quic(RecvStream),
    Ws(WsRecv),
}

impl RecvHalf {
    /// The next bytes, at most `max` (QUIC); `Ok(None)` at the end of the stream.
    pub(super) async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, LinkError> {
        match self {
            RecvHalf::Quic(r) => Ok(r.read_chunk(max, true).await?.map(|c| c.bytes)),
            RecvHalf::Ws(r) => Ok(r.read().await?),
        }
    }

    /// Takes the end of the stream when it has already arrived (a request is one frame
    /// and then the end, usually in the same packet), without waiting for it: a QUIC
    /// stream dropped before its end was read makes quinn send the client a
    /// `STOP_SENDING`, a frame (and its retransmission state) per request for nothing.
    /// When bytes follow the frame instead, at most one is read and discarded, and
    /// dropping the stream then stops it as before.
    pub(super) fn take_end(&mut self) {
        use futures::FutureExt;
        if let RecvHalf::Quic(r) = self {
            let _ = r.read_chunk(1, true).now_or_never();
        }
    }

    /// Asks the client to stop sending, with a code from [`super::connection::Conn::code`]
    /// (or an HTTP/3 code).
    pub(super) fn stop(&mut self, code: VarInt) {
        match self {
            RecvHalf::Quic(r) => {
                let _ = r.stop(code);
            }
            RecvHalf::Ws(r) => r.stop(u32::try_from(code.into_inner()).unwrap_or(u32::MAX)),
        }
    }
}
