/**
 * The WebSocket fallback transport (`wss://host:port/ws` on the edge's `[web]` port):
 * the native protocol's streams and datagrams multiplexed over one WebSocket, for
 * browsers and networks without HTTP/3. Framing (see `edge/src/shard/ws.rs`): each
 * binary message is a kind byte, a QUIC varint stream id and a payload —
 * 0 DATA, 1 FIN (last bytes, then the end), 2 RESET (u32 code), 3 STOP (u32 code),
 * 4 DATAGRAM (id 0). Clients open streams 0, 4, 8, ...; the server's push streams are
 * 3, 7, 11, .... The socket closes with `4000 + ErrorCode`.
 */
import type { CloseInfo, DuplexStream, Transport } from './transport.js';

const DATA = 0;
const FIN = 1;
const RESET = 2;
const STOP = 3;
const DATAGRAM = 4;

function putVarint(v: number): Uint8Array {
  if (v < 0x40) {
    return Uint8Array.of(v);
  }
  if (v < 0x4000) {
    return Uint8Array.of(0x40 | (v >> 8), v & 0xff);
  }
  if (v < 0x40000000) {
    return Uint8Array.of(0x80 | (v >>> 24), (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
  }
  throw new Error('stream id out of range');
}

/** A varint at `at`: [value, length], or null when truncated or too large for a number. */
function getVarint(b: Uint8Array, at: number): [number, number] | null {
  const first = b[at];
  if (first === undefined) {
    return null;
  }
  const len = 1 << (first >> 6);
  if (at + len > b.length || len > 4) {
    return null;
  }
  let v = first & 0x3f;
  for (let i = 1; i < len; i++) {
    v = v * 256 + (b[at + i] ?? 0);
  }
  return [v, len];
}

function frame(kind: number, id: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const head = putVarint(id);
  const out = new Uint8Array(1 + head.length + payload.length);
  out[0] = kind;
  out.set(head, 1);
  out.set(payload, 1 + head.length);
  return out;
}

function code(c: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, c >>> 0, false);
  return b;
}

/** An error of a stream the peer reset or stopped; `streamErrorCode` as WebTransport's. */
export class WebSocketStreamError extends Error {
  override readonly name = 'WebSocketStreamError';
  constructor(readonly streamErrorCode: number) {
    super(`stream reset (${streamErrorCode})`);
  }
}

/** Opens the fallback at `url` (`wss://host:port/ws`). */
export async function openWebSocket(url: string, timeoutMs = 10_000): Promise<Transport> {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error('WebSocket timed out'));
    }, timeoutMs);
    ws.addEventListener('open', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.addEventListener('error', () => {
      clearTimeout(timer);
      reject(new Error('WebSocket failed'));
    });
  });

  /** Readable sides of streams, by id. */
  const readers = new Map<number, ReadableStreamDefaultController<Uint8Array>>();
  /** Writable sides stopped by the server, by id. */
  const stopped = new Map<number, number>();
  let nextBidi = 0;
  let pushController!: ReadableStreamDefaultController<ReadableStream<Uint8Array>>;
  let datagramController!: ReadableStreamDefaultController<Uint8Array>;
  const pushStreams = new ReadableStream<ReadableStream<Uint8Array>>({
    start(c) {
      pushController = c;
    },
  });
  const datagrams = new ReadableStream<Uint8Array>({
    start(c) {
      datagramController = c;
    },
  });
  let isClosed = false;
  const closed = new Promise<CloseInfo>((resolve) => {
    ws.addEventListener('close', (ev) => {
      isClosed = true;
      const info = { code: ev.code >= 4000 && ev.code < 5000 ? ev.code - 4000 : ev.code === 1000 ? 0 : ev.code, reason: ev.reason };
      const err = new Error(`connection closed (${info.code})`);
      for (const r of readers.values()) {
        try {
          r.error(err);
        } catch {
          // Already closed.
        }
      }
      readers.clear();
      try {
        pushController.close();
        datagramController.close();
      } catch {
        // Already closed.
      }
      resolve(info);
    });
  });

  function send(bytes: Uint8Array): void {
    if (isClosed || ws.readyState !== WebSocket.OPEN) {
      throw new Error('connection closed');
    }
    ws.send(bytes);
  }

  /** A readable side for stream `id`, registered for the messages that follow. */
  function readable(id: number): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      start(c) {
        readers.set(id, c);
      },
      cancel() {
        readers.delete(id);
        if (!isClosed) {
          send(frame(STOP, id, code(0)));
        }
      },
    });
  }

  function writable(id: number): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      write(chunk) {
        const c = stopped.get(id);
        if (c !== undefined) {
          throw new WebSocketStreamError(c);
        }
        send(frame(DATA, id, chunk));
      },
      close() {
        if (!stopped.has(id)) {
          send(frame(FIN, id));
        }
        stopped.delete(id);
      },
      abort() {
        if (!isClosed) {
          send(frame(RESET, id, code(0)));
        }
        stopped.delete(id);
      },
    });
  }

  ws.addEventListener('message', (ev: MessageEvent<ArrayBuffer | string>) => {
    if (typeof ev.data === 'string') {
      ws.close(4000 + 100, 'text message');
      return;
    }
    const b = new Uint8Array(ev.data);
    const kind = b[0];
    const v = getVarint(b, 1);
    if (kind === undefined || v === null) {
      ws.close(4000 + 100, 'malformed message');
      return;
    }
    const [id, n] = v;
    const payload = b.subarray(1 + n);
    switch (kind) {
      case DATA:
      case FIN: {
        let r = readers.get(id);
        if (r === undefined && id % 4 === 3) {
          // A new push stream from the server.
          const stream = readable(id);
          pushController.enqueue(stream);
          r = readers.get(id);
        }
        if (r === undefined) {
          return;
        }
        if (payload.length > 0) {
          r.enqueue(payload.slice());
        }
        if (kind === FIN) {
          readers.delete(id);
          r.close();
        }
        return;
      }
      case RESET: {
        const r = readers.get(id);
        readers.delete(id);
        r?.error(new WebSocketStreamError(payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset).getUint32(0, false) : 0));
        return;
      }
      case STOP: {
        stopped.set(id, payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset).getUint32(0, false) : 0);
        return;
      }
      case DATAGRAM:
        datagramController.enqueue(payload.slice());
        return;
      default:
        ws.close(4000 + 100, 'unknown message kind');
    }
  });

  return {
    kind: 'websocket',
    async openStream(): Promise<DuplexStream> {
      const id = nextBidi;
      nextBidi += 4;
      return {
        readable: readable(id),
        writable: writable(id),
        sendLast: (bytes: Uint8Array) => send(frame(FIN, id, bytes)),
      };
    },
    pushStreams,
    async sendDatagram(bytes) {
      send(frame(DATAGRAM, 0, bytes));
    },
    datagrams,
    close(c, reason) {
      try {
        ws.close(c === 0 ? 1000 : 4000 + c, reason.slice(0, 120));
      } catch {
        ws.close();
      }
    },
    closed,
  };
}
