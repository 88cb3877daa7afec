//! The browser transports under load: the same requests as the native client's `ping()`
//! (a `Ping` on a stream of its own, answered `Pong`, the stream then ended) over
//! WebTransport (`wtransport`'s client, as a browser speaks it) and over the WebSocket
//! fallback (tokio-tungstenite over TLS), against the same edge process as the native
//! run, so that `rpc --browser` reports them beside native QUIC and raw quinn.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use selfie_codec::{Encoder, Frame, FrameDecoder, Limits, build};
use selfie_protocol::control::{ControlOp, Hello, HelloArgs};
use tokio::sync::oneshot;

use crate::edge::{RpcArgs, ServerProcess, merge};
use crate::report::{Latencies, Line};

fn hello_frame() -> anyhow::Result<Bytes> {
    let mut enc = Encoder::new(Limits::DEFAULT);
    Ok(enc.encode_bytes(|b| {
        let v = selfie_protocol::PROTOCOL_VERSION.to_wire();
        let h = Hello::create(
            b,
            &HelloArgs {
                version: Some(&v),
                min_version: Some(&v),
                ..Default::default()
            },
        );
        build::control(b, 0, ControlOp::Hello, h.as_union_value())
    })?)
}

fn ping_frame(id: u64) -> anyhow::Result<Bytes> {
    let mut enc = Encoder::new(Limits::DEFAULT);
    Ok(enc.encode_bytes(|b| build::ping(b, id, 0))?)
}

/// Answers awaited on one WebSocket connection, by stream id.
#[derive(Default)]
struct Pending {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, (FrameDecoder, oneshot::Sender<Frame>)>>,
}

impl Pending {
    /// A new request stream (ids 4, 8, ...: 0 is the control stream).
    fn register(&self) -> (u64, oneshot::Receiver<Frame>) {
        let id = self.next.get() + 4;
        self.next.set(id);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .borrow_mut()
            .insert(id, (FrameDecoder::new(Limits::DEFAULT), tx));
        (id, rx)
    }

    /// Bytes of stream `id`: the first whole frame answers it.
    fn data(&self, id: u64, bytes: Bytes) {
        let mut waiting = self.waiting.borrow_mut();
        let Some((dec, _)) = waiting.get_mut(&id) else {
            return;
        };
        dec.push(bytes);
        if let Ok(Some(frame)) = dec.next_frame()
            && let Some((_, tx)) = waiting.remove(&id)
        {
            let _ = tx.send(frame);
        }
    }
}

/// Runs `in_flight` request loops per connection until the deadline; `request` sends
/// one ping and resolves with its answer.
async fn load<C, F>(conns: &[C], args: &RpcArgs, request: F) -> anyhow::Result<(u64, Latencies)>
where
    F: Fn(&C) -> futures::future::LocalBoxFuture<'static, anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let request = &request;
    let tasks = conns
        .iter()
        .flat_map(|c| (0..args.in_flight).map(move |_| c))
        .map(|c| async move {
            let mut lat = Latencies::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                tokio::time::timeout(Duration::from_secs(10), request(c))
                    .await
                    .context("no answer in time")??;
                lat.record(t.elapsed());
                n += 1;
            }
            anyhow::Ok((n, lat))
        });
    merge(futures::future::join_all(tasks).await)
}

fn is_pong(frame: &Frame) -> bool {
    frame
        .envelope()
        .body_as_control()
        .and_then(|c| c.op_as_pong())
        .is_some()
}

/// Pings, one stream each, over WebTransport.
pub async fn webtransport_rpc(
    server: &ServerProcess,
    args: &RpcArgs,
) -> anyhow::Result<(Line, Duration)> {
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(
            server.fingerprint.get(2 * i..2 * i + 2).context("hash")?,
            16,
        )?;
    }
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let endpoint = wtransport::Endpoint::client(config)?;
    let url = format!("https://{}/", server.addr);
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        let conn = endpoint.connect(&url).await?;
        let (mut send, mut recv) = conn.open_bi().await?.await?;
        send.write_all(&hello_frame()?).await?;
        let mut buf = vec![0u8; 4096];
        let n = recv.read(&mut buf).await?.context("no Welcome")?;
        anyhow::ensure!(n > 8, "no Welcome");
        // The control stream stays open (its end would end the session).
        conns.push(Rc::new((conn, send, recv)));
    }
    let ping = ping_frame(1)?;
    let cpu0 = server.cpu();
    let start = Instant::now();
    let (ops, lat) = load(&conns, args, |c| {
        let (c, ping) = (c.clone(), ping.clone());
        Box::pin(async move {
            let (mut send, mut recv) = c.0.open_bi().await?.await?;
            send.write_all(&ping).await?;
            // The edge may stop the stream once it has the frame (STOP_SENDING 0): the
            // answer, not the finish, says how the request went (as in the web SDK).
            let _ = send.finish().await;
            let mut dec = FrameDecoder::new(Limits::DEFAULT);
            let mut buf = vec![0u8; 4096];
            loop {
                if let Some(frame) = dec.next_frame()? {
                    anyhow::ensure!(is_pong(&frame), "not a Pong");
                    return Ok(());
                }
                let n = recv.read(&mut buf).await?.context("stream ended early")?;
                dec.push(Bytes::copy_from_slice(&buf[..n]));
            }
        })
    })
    .await?;
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    Ok((
        Line {
            name: "edge ping over WebTransport".into(),
            ops,
            elapsed,
            lat,
        },
        cpu,
    ))
}

/// A fallback message: kind, stream id (QUIC varint), payload.
fn ws_message(kind: u8, id: u64, bytes: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    let mut m = Vec::with_capacity(9 + bytes.len());
    m.push(kind);
    match id {
        0..=0x3f => m.push(id as u8),
        0x40..=0x3fff => m.extend_from_slice(&(0x4000 | id as u16).to_be_bytes()),
        0x4000..=0x3fff_ffff => m.extend_from_slice(&(0x8000_0000 | id as u32).to_be_bytes()),
        _ => m.extend_from_slice(&(0xc000_0000_0000_0000 | id).to_be_bytes()),
    }
    m.extend_from_slice(bytes);
    tokio_tungstenite::tungstenite::Message::Binary(m.into())
}

/// A fallback message's kind, stream id and payload.
fn ws_split(b: &Bytes) -> Option<(u8, u64, Bytes)> {
    let kind = *b.first()?;
    let first = *b.get(1)?;
    let len = 1usize << (first >> 6);
    let id = b
        .get(2..1 + len)?
        .iter()
        .fold(u64::from(first & 0x3f), |acc, x| acc << 8 | u64::from(*x));
    Some((kind, id, b.slice(1 + len..)))
}

/// Pings, one stream each, over the WebSocket fallback.
pub async fn websocket_rpc(
    server: &ServerProcess,
    args: &RpcArgs,
) -> anyhow::Result<(Line, Duration)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let web = server.web.context("the edge has no [web] listener")?;
    let tls = Arc::new(selfie_client::tls_client_config(
        &server.trust()?,
        &[b"http/1.1"],
    )?);
    let mut conns = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..args.connections {
        let tcp = tokio::net::TcpStream::connect(web).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        let request = format!("wss://{web}/ws").into_client_request()?;
        let (ws, _) = tokio_tungstenite::client_async(request, tls).await?;
        let (mut sink, mut source) = ws.split();
        sink.send(ws_message(0, 0, &hello_frame()?)).await?;
        let pending = Rc::new(Pending::default());
        let reader_pending = pending.clone();
        readers.push(async move {
            while let Some(Ok(msg)) = source.next().await {
                let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else {
                    continue;
                };
                // DATA and FIN of request streams; the control stream's Welcome is skipped.
                if let Some((0 | 1, id, payload)) = ws_split(&b)
                    && id != 0
                {
                    reader_pending.data(id, payload);
                }
            }
        });
        conns.push(Rc::new((pending, tokio::sync::Mutex::new(sink))));
    }
    let readers = futures::future::join_all(readers);
    let ping = ping_frame(1)?;
    let cpu0 = server.cpu();
    let start = Instant::now();
    let run = load(&conns, args, |c| {
        let (c, ping) = (c.clone(), ping.clone());
        Box::pin(async move {
            let (id, answered) = c.0.register();
            c.1.lock().await.send(ws_message(1, id, &ping)).await?;
            let frame = answered.await?;
            anyhow::ensure!(is_pong(&frame), "not a Pong");
            Ok(())
        })
    });
    let (ops, lat) = tokio::select! {
        r = run => r?,
        _ = readers => anyhow::bail!("a WebSocket session ended"),
    };
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    Ok((
        Line {
            name: "edge ping over WebSocket (TLS/TCP)".into(),
            ops,
            elapsed,
            lat,
        },
        cpu,
    ))
}
