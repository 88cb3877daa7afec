/**
 * The session: `Hello` → `Welcome` on the first stream (the control stream, which then
 * carries `Ping`/`Pong` and the server's `GoAway`), one stream per request, push streams
 * routed to their subscription by the `PushStreamHeader` each starts with, datagrams.
 * The same protocol as the native Rust client (`selfie-client`), over a browser
 * transport.
 */
import { ErrorCode } from '../../../protocol/ts/generated/selfie/control/error-code.js';
import { DatagramT } from '../../../protocol/ts/generated/selfie/datagram.js';
import {
  FrameError,
  FrameReader,
  DEFAULT_MAX_FRAME_BYTES,
  decodeDatagram,
  encodeDatagram,
  encodeEnvelope,
  readFrames,
} from './frame.js';
import { Body, EnvelopeT, common, control } from './proto.js';
import {
  type CloseInfo,
  type Transport,
  type TransportKind,
  hasWebTransport,
  openWebTransport,
} from './transport.js';
import { openWebSocket } from './websocket.js';

export { ErrorCode };

/** A refusal or failure the server answered with (`control.Error`), or a local one. */
export class SelfieError extends Error {
  override readonly name = 'SelfieError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** When the server says to retry (rate limits, overload), in ms; 0 otherwise. */
    readonly retryAfterMs = 0,
    /** The request field it is about, when the server names one. */
    readonly field: string | null = null,
    /** Whether the server answered it (else: the connection, a timeout, this SDK). */
    readonly fromServer = false,
  ) {
    super(`${ErrorCode[code] ?? code}: ${message}`);
  }
}

/** How to reach the edge and who is asking. */
export interface ConnectOptions {
  /** The edge's WebTransport URL: `https://host:port/` (the QUIC port). */
  readonly url: string;
  /** SHA-256 (hex) of a development certificate to pin; empty with a CA certificate. */
  readonly certificateHashes?: readonly string[];
  /** Signs the session in (`auth` tokens); anonymous sessions may only use `auth`. */
  readonly accessToken?: string | null;
  readonly app?: { readonly name: string; readonly version: string };
  readonly deviceId?: string;
  /** Transports to try, in order (default: WebTransport, then the WebSocket fallback). */
  readonly transports?: readonly TransportKind[];
  /** The WebSocket fallback's URL (`wss://host:port/ws`, the edge's `[web]` port). */
  readonly websocketUrl?: string;
  /** Budget for connecting and for `Welcome`, ms (default 10 s). */
  readonly timeoutMs?: number;
  /** Budget for one request's answer, ms (default 30 s). */
  readonly requestTimeoutMs?: number;
}

/** How `connectWithBackoff` retries. */
export interface Backoff {
  /** Attempts in all (default 8). */
  readonly attempts?: number;
  /** First delay, ms (default 250); it doubles each time, up to `maxMs`. */
  readonly baseMs?: number;
  /** Longest delay, ms (default 15 s). */
  readonly maxMs?: number;
  /** Waits `ms` (injectable for tests; default `setTimeout`). */
  readonly sleep?: (ms: number) => Promise<void>;
  /** A uniform random number in [0, 1) (injectable for tests; default `Math.random`). */
  readonly random?: () => number;
}

/** The longest pause a server's `retryAfterMs` can impose on a reconnect. */
const MAX_RETRY_AFTER_MS = 300_000;

/** Whether a failure to connect may succeed later: the network, an overloaded or
 * draining edge. A refused `Hello` (bad token, unsupported version) is final. */
export function isRetryable(e: unknown): boolean {
  if (!(e instanceof SelfieError)) {
    return true;
  }
  return [
    ErrorCode.Unavailable,
    ErrorCode.Timeout,
    ErrorCode.Overloaded,
    ErrorCode.Draining,
    ErrorCode.RateLimited,
    ErrorCode.TooManyConnections,
    ErrorCode.HandshakeTimeout,
  ].includes(e.code);
}

/**
 * Connects with retries: exponential backoff with full jitter (a fleet's clients do not
 * return in step after an outage), honouring a server's `retryAfterMs`; gives up at once
 * on a refusal that retrying cannot fix.
 */
export async function connectWithBackoff<C>(
  connect: () => Promise<C>,
  backoff: Backoff = {},
): Promise<C> {
  const attempts = backoff.attempts ?? 8;
  const base = backoff.baseMs ?? 250;
  const max = backoff.maxMs ?? 15_000;
  const sleep = backoff.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const random = backoff.random ?? Math.random;
  let last: unknown = null;
  for (let i = 0; i < attempts; i++) {
    try {
      return await connect();
    } catch (e) {
      last = e;
      if (!isRetryable(e) || i === attempts - 1) {
        break;
      }
      const ceiling = Math.min(max, base * 2 ** i);
      const told = e instanceof SelfieError ? Math.min(e.retryAfterMs, MAX_RETRY_AFTER_MS) : 0;
      await sleep(Math.max(told, Math.floor(random() * ceiling)));
    }
  }
  throw last;
}

/** The protocol version this SDK speaks (the generated code's). */
export const PROTOCOL_VERSION = { major: 1, minor: 9 } as const;

/** Events a subscription holds unread before it ends with `ResyncRequired`. */
const MAX_UNREAD_EVENTS = 1024;
/** Datagrams held unread; older ones are dropped (typing and presence: latest wins). */
const MAX_UNREAD_DATAGRAMS = 64;
/** Push streams held for subscriptions whose answer has not been read yet. */
const MAX_EARLY_STREAMS = 64;

/**
 * A bounded async queue: pushes wake one waiting reader; `end` finishes iteration. Past
 * `limit` unread items it either drops the oldest or ends with `overflow`.
 */
class Queue<T> {
  private items: T[] = [];
  private waiters: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  private done = false;
  private failure: unknown = null;

  constructor(
    private readonly limit: number,
    private readonly overflow: (() => unknown) | null = null,
  ) {}

  /** Whether it has ended (a full queue with `overflow` ends). */
  get ended(): boolean {
    return this.done;
  }

  push(item: T): void {
    const w = this.waiters.shift();
    if (w !== undefined) {
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.done) {
      return;
    }
    if (this.items.length >= this.limit) {
      if (this.overflow !== null) {
        this.end(this.overflow());
        return;
      }
      this.items.shift();
    }
    this.items.push(item);
  }

  end(failure: unknown = null): void {
    if (this.done) {
      return;
    }
    this.done = true;
    this.failure = failure;
    for (const w of this.waiters.splice(0)) {
      if (failure !== null) {
        w.reject(failure);
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
  }

  next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) {
      return Promise.resolve({ value: item, done: false });
    }
    if (this.done) {
      return this.failure !== null
        ? Promise.reject(this.failure)
        : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

/** A live subscription: the events of its push stream, as an async iterator. */
export class Subscription implements AsyncIterableIterator<EnvelopeT> {
  /** @internal */
  readonly queue = eventQueue();

  /** @internal */
  constructor(
    readonly id: bigint,
    readonly kind: control.SubscriptionKind,
    private readonly client: Client,
  ) {}

  next(): Promise<IteratorResult<EnvelopeT>> {
    return this.queue.next();
  }

  async return(): Promise<IteratorResult<EnvelopeT>> {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<EnvelopeT> {
    return this;
  }

  /** Ends the subscription on the server and here. */
  async close(): Promise<void> {
    this.queue.end();
    await this.client.unsubscribe(this.id);
  }
}

/** A subscription's events: a reader that falls too far behind must resubscribe. */
function eventQueue(): Queue<EnvelopeT> {
  return new Queue<EnvelopeT>(
    MAX_UNREAD_EVENTS,
    () => new SelfieError(ErrorCode.ResyncRequired, 'the subscriber fell behind: subscribe again from its cursor'),
  );
}

function errorOf(env: EnvelopeT): control.ErrorT | null {
  if (env.bodyType !== Body.Control || !(env.body instanceof control.ControlT)) {
    return null;
  }
  const c = env.body;
  return c.opType === control.ControlOp.Error && c.op instanceof control.ErrorT ? c.op : null;
}

/** Throws the server's `control.Error` when `env` is one. */
function throwIfError(env: EnvelopeT): void {
  const e = errorOf(env);
  if (e !== null) {
    throw new SelfieError(e.code, text(e.message), e.retryAfterMs, e.field === null ? null : text(e.field), true);
  }
}

/**
 * Where a raw-bytes answer goes (`Client.rawRequest`): `header` gets the answer's frame
 * first and may throw to refuse what it announces; `bytes` gets what follows, in order.
 */
export interface RawSink {
  header(env: EnvelopeT): void;
  bytes(chunk: Uint8Array): void;
}

function text(s: string | Uint8Array | null): string {
  if (s === null) {
    return '';
  }
  return typeof s === 'string' ? s : new TextDecoder().decode(s);
}

function controlBody(opType: control.ControlOp, op: control.ControlT['op']): control.ControlT {
  return new control.ControlT(opType, op);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SelfieError(ErrorCode.Timeout, `${what} timed out`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A session with the edge. */
export class Client {
  private nextId = 1n;
  private readonly subscriptions = new Map<bigint, Subscription>();
  /** Push streams whose `SubscribeResponse` has not been read yet. */
  private readonly early = new Map<bigint, Queue<EnvelopeT>>();
  private readonly pings = new Map<bigint, (ok: boolean) => void>();
  private readonly datagramQueue = new Queue<DatagramT>(MAX_UNREAD_DATAGRAMS);
  private goAwayResolve: (g: control.GoAwayT) => void = () => {};
  /** Resolves when the server asks this client to move (`GoAway`: drain, rebalance). */
  readonly goAway: Promise<control.GoAwayT>;
  /** Resolves when the connection ends. */
  readonly closed: Promise<CloseInfo>;
  private readonly maxFrameBytes: number;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  /** Requests sent and not yet answered. */
  private inFlight = 0;
  /** Set by `closeWhenIdle`: close once the last request is answered. */
  private leaving = false;

  private constructor(
    private readonly transport: Transport,
    private readonly controlWriter: WritableStreamDefaultWriter<Uint8Array>,
    controlFrames: AsyncGenerator<EnvelopeT, void, undefined>,
    /** The server's `Welcome`: session, user, limits. */
    readonly welcome: control.WelcomeT,
    private readonly requestTimeoutMs: number,
  ) {
    this.goAway = new Promise((resolve) => (this.goAwayResolve = resolve));
    this.closed = transport.closed;
    this.maxFrameBytes = welcome.limits?.maxFrameBytes || DEFAULT_MAX_FRAME_BYTES;
    void this.controlLoop(controlFrames);
    void this.pushLoop();
    void this.datagramLoop();
    // Heartbeats at the interval the edge asks for: an idle session stays open (QUIC
    // and the WebSocket fallback both close a silent peer at the idle timeout).
    const every = welcome.heartbeatIntervalMs;
    if (every > 0) {
      this.heartbeat = setInterval(() => void this.ping().catch(() => {}), every);
    }
    void transport.closed.then(() => this.endAll());
  }

  /** Which transport this session is on. */
  get transportKind(): TransportKind {
    return this.transport.kind;
  }

  /** The signed-in user (0n for an anonymous session). */
  get userId(): bigint {
    return this.welcome.userId;
  }

  /**
   * Connects: WebTransport first, then the WebSocket fallback when WebTransport is
   * missing or fails (UDP blocked), then `Hello` → `Welcome`.
   */
  static async connect(options: ConnectOptions): Promise<Client> {
    const order = options.transports ?? ['webtransport', 'websocket'];
    const timeoutMs = options.timeoutMs ?? 10_000;
    const failures: string[] = [];
    for (const kind of order) {
      let transport: Transport;
      try {
        if (kind === 'webtransport') {
          if (!hasWebTransport()) {
            failures.push('webtransport: not available in this browser');
            continue;
          }
          transport = await openWebTransport(options.url, options.certificateHashes ?? [], timeoutMs);
        } else {
          if (options.websocketUrl === undefined) {
            failures.push('websocket: no websocketUrl');
            continue;
          }
          transport = await openWebSocket(options.websocketUrl, timeoutMs);
        }
      } catch (e) {
        failures.push(`${kind}: ${String(e)}`);
        continue;
      }
      // The server's refusal of `Hello` is final (bad token, old version): no fallback.
      return await Client.handshake(transport, options, timeoutMs);
    }
    throw new SelfieError(ErrorCode.Unavailable, `no transport reached the edge (${failures.join('; ')})`);
  }

  private static async handshake(transport: Transport, options: ConnectOptions, timeoutMs: number): Promise<Client> {
    try {
      const stream = await transport.openStream();
      const writer = stream.writable.getWriter();
      const v = new common.ProtocolVersionT(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor);
      const info = new control.ClientInfoT(
        options.app?.name ?? 'selfie-web',
        options.app?.version ?? '0.1.0',
        common.Platform.Web,
        null,
        null,
        options.deviceId ?? null,
      );
      const hello = new control.HelloT(v, v, info, options.accessToken ?? null);
      await writer.write(
        encodeEnvelope(new EnvelopeT(0n, Body.Control, controlBody(control.ControlOp.Hello, hello))),
      );
      const frames = readFrames(stream.readable, DEFAULT_MAX_FRAME_BYTES);
      const first = await withTimeout(frames.next(), timeoutMs, 'Welcome');
      if (first.done === true) {
        const info = await transport.closed;
        throw new SelfieError(info.code as ErrorCode, `the edge closed the session: ${info.reason}`);
      }
      const env = first.value;
      const refusal = errorOf(env);
      if (refusal !== null) {
        throw new SelfieError(refusal.code, text(refusal.message), refusal.retryAfterMs, null, true);
      }
      const c = env.body;
      if (!(c instanceof control.ControlT) || !(c.op instanceof control.WelcomeT)) {
        throw new SelfieError(ErrorCode.UnexpectedMessage, 'expected Welcome');
      }
      return new Client(transport, writer, frames, c.op, options.requestTimeoutMs ?? 30_000);
    } catch (e) {
      transport.close(0, 'handshake failed');
      throw e;
    }
  }

  /** Sends one request and returns the answer's envelope; a `control.Error` throws. */
  async request(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT> {
    this.inFlight += 1;
    try {
      return await this.requestOnce(bodyType, body);
    } finally {
      this.inFlight -= 1;
      if (this.leaving && this.inFlight === 0) {
        this.close();
      }
    }
  }

  private async requestOnce(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT> {
    const id = this.nextId++;
    const answer = (async () => {
      const stream = await this.transport.openStream();
      const bytes = encodeEnvelope(new EnvelopeT(id, bodyType, body));
      if (stream.sendLast !== undefined) {
        stream.sendLast(bytes);
      } else {
        const writer = stream.writable.getWriter();
        await writer.write(bytes);
        // The server may stop reading once it has the whole request (STOP_SENDING):
        // the answer, not the close, says how the request went.
        writer.close().catch(() => {});
      }
      const frames = readFrames(stream.readable, this.maxFrameBytes);
      const first = await frames.next();
      void frames.return(undefined);
      if (first.done === true) {
        throw new SelfieError(ErrorCode.Unavailable, 'the stream ended without an answer');
      }
      return first.value;
    })();
    const env = await withTimeout(answer, this.requestTimeoutMs, 'request');
    throwIfError(env);
    return env;
  }

  /**
   * A request whose stream carries raw bytes besides frames: `payload` follows the
   * request's frame (a media chunk after its `UploadChunkHeader`), and the answer's
   * frame goes to `sink.header`, then the bytes after it (a download after its
   * `DownloadHeader`) to `sink.bytes` until the stream ends. Returns the answer's
   * envelope; a `control.Error` throws. The answer, and each read after it, must come
   * within the request timeout; a failure stops reading the stream.
   */
  async rawRequest(
    bodyType: Body,
    body: EnvelopeT['body'],
    payload: Uint8Array | null,
    sink: RawSink | null,
  ): Promise<EnvelopeT> {
    this.inFlight += 1;
    let reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
    try {
      const id = this.nextId++;
      const stream = await this.transport.openStream();
      const writer = stream.writable.getWriter();
      const frame = encodeEnvelope(new EnvelopeT(id, bodyType, body));
      if (payload === null) {
        await writer.write(frame);
      } else {
        const both = new Uint8Array(frame.length + payload.length);
        both.set(frame, 0);
        both.set(payload, frame.length);
        await writer.write(both);
      }
      writer.close().catch(() => {});
      const r = stream.readable.getReader();
      reader = r;
      const read = () => withTimeout(r.read(), this.requestTimeoutMs, 'request');
      const frames = new FrameReader(this.maxFrameBytes);
      let first: EnvelopeT | null = frames.next();
      while (first === null) {
        const { value, done } = await read();
        if (done) {
          throw new SelfieError(ErrorCode.Unavailable, 'the stream ended without an answer');
        }
        frames.push(value);
        first = frames.next();
      }
      throwIfError(first);
      if (sink !== null) {
        sink.header(first);
        for (const chunk of frames.takeRest()) {
          sink.bytes(chunk);
        }
        for (;;) {
          const { value, done } = await read();
          if (done) {
            break;
          }
          sink.bytes(value);
        }
      }
      return first;
    } finally {
      if (reader !== null) {
        void reader.cancel().catch(() => {});
        try {
          reader.releaseLock();
        } catch {
          // A read still pending: the cancel ends it.
        }
      }
      this.inFlight -= 1;
      if (this.leaving && this.inFlight === 0) {
        this.close();
      }
    }
  }

  /**
   * Subscribes to a live topic (`control.SubscriptionKind`): the events of its push
   * stream. `sinceCursor` resumes where a previous subscription stopped.
   */
  async subscribe(
    kind: control.SubscriptionKind,
    targetId = 0n,
    sinceCursor: readonly number[] = [],
  ): Promise<Subscription> {
    const req = new control.SubscribeRequestT(kind, targetId, [...sinceCursor]);
    const env = await this.request(Body.Control, controlBody(control.ControlOp.SubscribeRequest, req));
    const c = env.body;
    if (!(c instanceof control.ControlT) || !(c.op instanceof control.SubscribeResponseT)) {
      throw new SelfieError(ErrorCode.UnexpectedMessage, 'expected SubscribeResponse');
    }
    const id = c.op.subscriptionId;
    const sub = new Subscription(id, kind, this);
    this.subscriptions.set(id, sub);
    // Events that arrived before the answer was read.
    const early = this.early.get(id);
    if (early !== undefined) {
      this.early.delete(id);
      void (async () => {
        for (;;) {
          const r = await early.next().catch((e: unknown) => {
            sub.queue.end(e);
            return { done: true as const, value: undefined };
          });
          if (r.done === true) {
            sub.queue.end();
            return;
          }
          sub.queue.push(r.value);
        }
      })();
    }
    return sub;
  }

  /** @internal Ends a subscription on the server. */
  async unsubscribe(id: bigint): Promise<void> {
    if (!this.subscriptions.delete(id)) {
      return;
    }
    const req = new control.UnsubscribeRequestT(id);
    await this.request(Body.Control, controlBody(control.ControlOp.UnsubscribeRequest, req)).catch(() => {});
  }

  /** A `Ping` on the control stream; resolves with the round trip in ms. */
  async ping(): Promise<number> {
    const id = this.nextId++;
    const started = performance.now();
    const answered = new Promise<boolean>((resolve) => this.pings.set(id, resolve));
    const ping = new control.PingT(id, BigInt(Date.now()));
    await this.controlWriter.write(
      encodeEnvelope(new EnvelopeT(id, Body.Control, controlBody(control.ControlOp.Ping, ping))),
    );
    const ok = await withTimeout(answered, this.requestTimeoutMs, 'ping').finally(() => this.pings.delete(id));
    if (!ok) {
      throw new SelfieError(ErrorCode.RateLimited, 'ping refused');
    }
    return performance.now() - started;
  }

  /** Sends a datagram (typing, presence): best effort, latest wins. */
  async sendDatagram(d: DatagramT): Promise<void> {
    await this.transport.sendDatagram(encodeDatagram(d));
  }

  /** The datagrams the server sends (typing and presence of a `Presence` subscription). */
  datagrams(): AsyncIterableIterator<DatagramT> {
    const q = this.datagramQueue;
    return {
      next: () => q.next(),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /**
   * Closes the session once the requests in flight are answered (after a `GoAway`:
   * the server need not wait its deadline for this client).
   */
  closeWhenIdle(): void {
    this.leaving = true;
    if (this.inFlight === 0) {
      this.close();
    }
  }

  /** Closes the session. */
  close(): void {
    this.transport.close(0, 'client closed');
    this.endAll();
  }

  private endAll(failure: unknown = null): void {
    clearInterval(this.heartbeat);
    for (const s of this.subscriptions.values()) {
      s.queue.end(failure);
    }
    this.subscriptions.clear();
    for (const q of this.early.values()) {
      q.end(failure);
    }
    this.early.clear();
    this.datagramQueue.end();
    for (const resolve of this.pings.values()) {
      resolve(false);
    }
  }

  private async controlLoop(frames: AsyncGenerator<EnvelopeT, void, undefined>): Promise<void> {
    try {
      for await (const env of frames) {
        const c = env.body;
        if (!(c instanceof control.ControlT)) {
          continue;
        }
        if (c.op instanceof control.PongT) {
          this.pings.get(env.id)?.(true);
        } else if (c.op instanceof control.ErrorT) {
          this.pings.get(env.id)?.(false);
        } else if (c.op instanceof control.GoAwayT) {
          this.goAwayResolve(c.op);
        }
      }
    } catch {
      // The connection ended or framed badly: `closed` says how.
    }
  }

  private async pushLoop(): Promise<void> {
    const reader = this.transport.pushStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          return;
        }
        void this.readPushStream(value);
      }
    } catch {
      // Closed.
    }
  }

  private async readPushStream(stream: ReadableStream<Uint8Array>): Promise<void> {
    const frames = readFrames(stream, this.maxFrameBytes);
    let queue: Queue<EnvelopeT> | null = null;
    try {
      const head = await frames.next();
      const c = head.done === true ? null : head.value.body;
      if (!(c instanceof control.ControlT) || !(c.op instanceof control.PushStreamHeaderT)) {
        return;
      }
      const id = c.op.subscriptionId;
      const sub = this.subscriptions.get(id);
      if (sub !== undefined) {
        queue = sub.queue;
      } else if (this.early.size < MAX_EARLY_STREAMS && !this.early.has(id)) {
        queue = eventQueue();
        this.early.set(id, queue);
      } else {
        return;
      }
      for await (const env of frames) {
        queue.push(env);
        if (queue.ended) {
          // Overflowed: stop reading (the server's stream is left to its flow control).
          break;
        }
      }
      queue.end();
    } catch (e) {
      // A reset stream: the server says why (`ResyncRequired` for a subscriber that
      // fell behind: subscribe again from its cursor).
      const code = typeof e === 'object' && e !== null && 'streamErrorCode' in e ? Number((e as { streamErrorCode: unknown }).streamErrorCode) : 0;
      const failure =
        e instanceof FrameError
          ? new SelfieError(ErrorCode.MalformedFrame, e.message)
          : new SelfieError(code === 0 ? ErrorCode.Unavailable : (code as ErrorCode), 'push stream ended');
      queue?.end(failure);
    }
  }

  private async datagramLoop(): Promise<void> {
    const reader = this.transport.datagrams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          return;
        }
        const d = decodeDatagram(value);
        if (d !== null) {
          this.datagramQueue.push(d);
        }
      }
    } catch {
      // Closed.
    }
  }
}
