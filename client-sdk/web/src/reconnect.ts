/**
 * A session that outlives its connections, as the native SDK's `ReconnectingClient`:
 * when the connection is lost it reconnects at once with exponential backoff and full
 * jitter; when the edge says `GoAway` (a drain, a rebalance) it waits the server's
 * `reconnectAfterMs`, opens a new connection (to the hinted host when there is one) and
 * lets the old one finish what it carries. Requests wait for a connection; a request
 * that only reads (marked `(idempotent)` in the schemas) is sent again on the next
 * connection when the first one is lost, anything else fails with the error and the
 * caller retries with its idempotency key (a chat send's `clientMsgId`).
 *
 * A session that had to fall back to the WebSocket returns to WebTransport by itself
 * when it can (tried after 5 s, then at growing intervals up to 5 minutes).
 *
 * Subscriptions belong to one connection: `onConnect` runs for every new connection so
 * that a caller subscribes again there (with its cursor; `ChatSession` does this for
 * chat). A refused session (bad token, unsupported version) is final and ends the
 * client.
 */
import {
  type Backoff,
  Client,
  type RawSink,
  type ConnectOptions,
  ErrorCode,
  SelfieError,
  type Subscription,
  connectWithBackoff,
  isRetryable,
} from './client.js';
import { hasWebTransport } from './transport.js';
import {
  Body,
  EnvelopeT,
  IDEMPOTENT,
  admin,
  ads,
  analytics,
  auth,
  chat,
  control,
  feed,
  graph,
  media,
  moderation,
  notifications,
  payments,
  posts,
  recommend,
  search,
  stories,
  users,
} from './proto.js';

/** What typed requests need of a session (`Client` or `ReconnectingClient`). */
export interface Requester {
  request(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT>;
  /** See `Client.rawRequest` (media chunks and downloads). */
  rawRequest(bodyType: Body, body: EnvelopeT['body'], payload: Uint8Array | null, sink: RawSink | null): Promise<EnvelopeT>;
  subscribe(kind: control.SubscriptionKind, targetId?: bigint, sinceCursor?: readonly number[]): Promise<Subscription>;
}

/** Each service's operation enum (its names survive minification, class names do not). */
const OPS: Partial<Record<Body, Record<number, string>>> = {
  [Body.Control]: control.ControlOp,
  [Body.Auth]: auth.AuthOp,
  [Body.Users]: users.UsersOp,
  [Body.Graph]: graph.GraphOp,
  [Body.Posts]: posts.PostsOp,
  [Body.Feed]: feed.FeedOp,
  [Body.Stories]: stories.StoriesOp,
  [Body.Chat]: chat.ChatOp,
  [Body.Media]: media.MediaOp,
  [Body.Notifications]: notifications.NotificationsOp,
  [Body.Search]: search.SearchOp,
  [Body.Recommend]: recommend.RecommendOp,
  [Body.Moderation]: moderation.ModerationOp,
  [Body.Admin]: admin.AdminOp,
  [Body.Payments]: payments.PaymentsOp,
  [Body.Ads]: ads.AdsOp,
  [Body.Analytics]: analytics.AnalyticsOp,
};

/** Whether a request only reads: safe to send again after a lost answer. */
export function isIdempotent(bodyType: Body, body: EnvelopeT['body']): boolean {
  const opType = (body as { opType?: unknown } | null)?.opType;
  const ops = OPS[bodyType];
  if (typeof opType !== 'number' || ops === undefined) {
    return false;
  }
  const op = ops[opType];
  return op !== undefined && IDEMPOTENT.has(`${Body[bodyType]}.${op}`);
}

/** The longest a `GoAway`'s `reconnectAfterMs` is honoured, ms. */
const MAX_GOAWAY_WAIT_MS = 30_000;
/** A connection that ends sooner than this after it was made counts as a flap: the next
 * one waits a growing delay first (no tight loop against an edge that drops it). */
const FLAP_MS = 5_000;
/** The first try of a preferred transport after connecting on a fallback, ms. */
const UPGRADE_FIRST_MS = 5_000;
/** The longest wait between such tries, ms. */
const UPGRADE_MAX_MS = 300_000;
/** A connection on the preferred transport that lives this long resets the wait before
 * the next upgrade try (shorter lives keep it growing: no flapping between transports). */
const UPGRADE_STABLE_MS = 60_000;

/** Whether a server's answer says to try the same request again later. */
function retryLater(e: SelfieError): boolean {
  return [ErrorCode.Unavailable, ErrorCode.Timeout, ErrorCode.Overloaded, ErrorCode.RateLimited].includes(e.code);
}

/** `url` with its host (`host` or `host:port`) replaced: a `GoAway`'s hint. */
function moved(url: string, host: string): string {
  try {
    const u = new URL(url);
    u.host = host;
    return u.toString();
  } catch {
    return url;
  }
}

/** The hostname of `host` (`host` or `host:port`, IPv6 in brackets), if it parses. */
function hostnameOf(host: string): string | null {
  try {
    return new URL(`https://${host}/`).hostname;
  } catch {
    return null;
  }
}

/** How a `ReconnectingClient` reconnects, besides the backoff. */
export interface ReconnectOptions extends Backoff {
  /**
   * Whether to follow a `GoAway`'s host hint (the session's token goes there). Default:
   * only to the configured hostname (another port of the same edge or balancer).
   */
  readonly followHost?: (hostname: string) => boolean;
}

/** A client that reconnects by itself; see the module docs. */
export class ReconnectingClient implements Requester {
  private current: Client | null = null;
  private connecting: Promise<Client> | null = null;
  private readonly listeners = new Set<(c: Client) => void | Promise<void>>();
  /** Each connection's `onConnect` listeners, once they have run. */
  private readonly listened = new WeakMap<Client, Promise<void>>();
  private readonly connectedAt = new WeakMap<Client, number>();
  private flaps = 0;
  private closedByUser = false;
  private connectedOnce = false;
  private failure: SelfieError | null = null;
  private options: ConnectOptions;
  /** New connections made after the first, except upgrades (`upgrades`). */
  reconnects = 0;
  /** The wait before the next try of a preferred transport. */
  private upgradeMs = UPGRADE_FIRST_MS;
  private upgradeTimer: ReturnType<typeof setTimeout> | null = null;
  /** The URL each connection was made to (a `GoAway`'s hint, or the configured one). */
  private readonly urls = new WeakMap<Client, string>();
  /** `GoAway`s received. */
  goAways = 0;
  /** Moves from a fallback transport back to a preferred one. */
  upgrades = 0;
  private refuse: (e: SelfieError) => void = () => {};
  /** Resolves when the edge refuses the session (an expired or revoked token, an
   * unsupported version): sign in again, or `setAccessToken` with a fresh token. */
  readonly refused: Promise<SelfieError> = new Promise((resolve) => (this.refuse = resolve));
  private finish: () => void = () => {};
  /** Resolves when the client is closed or refused: nothing more will come. */
  readonly ended: Promise<void> = new Promise((resolve) => (this.finish = resolve));

  private constructor(
    options: ConnectOptions,
    private readonly backoff: ReconnectOptions,
  ) {
    this.options = options;
  }

  /**
   * Connects (with `backoff`; by default retrying for as long as failures are
   * transient) and keeps the session connected from then on.
   */
  static async connect(options: ConnectOptions, backoff: ReconnectOptions = {}): Promise<ReconnectingClient> {
    const rc = new ReconnectingClient(options, backoff);
    await rc.client();
    return rc;
  }

  /** The access token for later connections (after a refresh); a session refused for
   * its token may connect again with the new one. */
  setAccessToken(token: string | null): void {
    this.options = { ...this.options, accessToken: token };
    this.failure = null;
  }

  /** The current connection, if one is open. */
  get connection(): Client | null {
    return this.current;
  }

  /**
   * Runs `f` for every new connection after the first: subscribe there again. Returns a
   * function that stops it.
   */
  onConnect(f: (c: Client) => void | Promise<void>): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  /** A usable connection: the current one, or the one being made. */
  client(): Promise<Client> {
    if (this.closedByUser) {
      return Promise.reject(new SelfieError(ErrorCode.Unavailable, 'the client is closed'));
    }
    if (this.failure !== null) {
      return Promise.reject(this.failure);
    }
    if (this.current !== null) {
      return Promise.resolve(this.current);
    }
    return this.connecting ?? this.reopen(0);
  }

  /**
   * Sends a request on the current connection. An idempotent request is sent again:
   * on the next connection when its connection was lost under it, on the same one
   * (after the server's pause, or a backoff) when the server answered "later"
   * (`Overloaded`, `Unavailable`, `Timeout`, `RateLimited`); up to the backoff's
   * attempts. Anything else fails with the error.
   */
  async request(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT> {
    const again = isIdempotent(bodyType, body);
    const attempts = this.backoff.attempts ?? 8;
    const base = this.backoff.baseMs ?? 250;
    const max = this.backoff.maxMs ?? 15_000;
    const sleep = this.backoff.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    const random = this.backoff.random ?? Math.random;
    for (let i = 0; ; i++) {
      const c = await this.client();
      try {
        return await c.request(bodyType, body);
      } catch (e) {
        const answered = e instanceof SelfieError && e.fromServer;
        if (!again || i + 1 >= attempts || (answered && !retryLater(e))) {
          throw e;
        }
        // A lost connection is replaced by `watch`; a slow or busy server is waited
        // for. The connection itself is never dropped for a request's sake.
        const told = e instanceof SelfieError ? Math.min(e.retryAfterMs, max) : 0;
        await sleep(Math.max(told, Math.floor(random() * Math.min(max, base * 2 ** i))));
      }
    }
  }

  /** A raw-bytes request on the current connection (never replayed: a download that was
   * cut off is asked again by its caller, from the bytes it has). */
  async rawRequest(
    bodyType: Body,
    body: EnvelopeT['body'],
    payload: Uint8Array | null,
    sink: RawSink | null,
  ): Promise<EnvelopeT> {
    const c = await this.client();
    return c.rawRequest(bodyType, body, payload, sink);
  }

  /** Subscribes on the current connection (see `onConnect` to follow reconnects). */
  async subscribe(kind: control.SubscriptionKind, targetId = 0n, sinceCursor: readonly number[] = []): Promise<Subscription> {
    const c = await this.client();
    return c.subscribe(kind, targetId, sinceCursor);
  }

  /** Closes the session for good. */
  close(): void {
    this.closedByUser = true;
    if (this.upgradeTimer !== null) {
      clearTimeout(this.upgradeTimer);
      this.upgradeTimer = null;
    }
    this.current?.close();
    this.current = null;
    this.finish();
  }

  /** Starts a new connection (after `waitMs`), replacing whatever was being made. */
  private reopen(waitMs: number, url?: string): Promise<Client> {
    const p = this.open(waitMs, url);
    this.connecting = p;
    void p
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        if (this.connecting === p) {
          this.connecting = null;
        }
      });
    return p;
  }

  /** Opens a connection (after `waitMs`, to `url` when a `GoAway` named a host) and
   * watches it; `onConnect` listeners run once it is the current one. */
  private async open(waitMs: number, url?: string): Promise<Client> {
    const sleep = this.backoff.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    if (waitMs > 0) {
      await sleep(waitMs);
    }
    let c: Client;
    try {
      // Keep trying while failures are transient (a phone in a tunnel comes back), a
      // full backoff round at a time; the token is read at each attempt. A hinted host
      // that does not answer a round is given up for the configured one.
      for (let round = 0; ; round++) {
        const at = round === 0 ? url : undefined;
        try {
          c = await connectWithBackoff(
            () => Client.connect(at === undefined ? this.options : { ...this.options, url: at }),
            this.backoff,
          );
          this.urls.set(c, at ?? this.options.url);
          break;
        } catch (e) {
          if (!isRetryable(e) || this.closedByUser) {
            throw e;
          }
          await sleep(this.backoff.maxMs ?? 15_000);
        }
      }
    } catch (e) {
      if (e instanceof SelfieError && !isRetryable(e)) {
        this.failure = e; // The session is refused: final until a new token.
        this.refuse(e);
        this.finish();
      }
      throw e;
    }
    if (this.closedByUser) {
      c.close();
      throw new SelfieError(ErrorCode.Unavailable, 'the client is closed');
    }
    return this.install(c, false);
  }

  /** Makes `c` the current connection: watched, and (after the first connection) the
   * `onConnect` listeners run on it. A connection on a fallback transport is probed
   * for an upgrade. */
  private install(c: Client, upgrade: boolean): Client {
    const again = this.connectedOnce;
    this.connectedOnce = true;
    if (again && !upgrade) {
      this.reconnects += 1;
    }
    this.current = c;
    this.connectedAt.set(c, Date.now());
    this.watch(c);
    // Listeners run with the connection current (a request made meanwhile uses it);
    // the connection is handed out at once.
    const listened = (async () => {
      if (!again) {
        return;
      }
      for (const f of [...this.listeners]) {
        try {
          await f(c);
        } catch {
          // A listener's failure is its own (it sees its subscription end).
        }
      }
    })();
    this.listened.set(c, listened);
    this.upgradeLater(c);
    return c;
  }

  /**
   * On a fallback transport (the WebSocket, while WebTransport comes first in the
   * order and the browser has it), tries the preferred transports again, to the same
   * URL, after a jittered wait that doubles after each try, up to `UPGRADE_MAX_MS` (it
   * starts again from `UPGRADE_FIRST_MS` once a preferred connection has lived
   * `UPGRADE_STABLE_MS`): a session that fell back while the edge was down or
   * restarting, or on a network that has since unblocked UDP, returns to WebTransport.
   * The new connection becomes current as after a `GoAway` (listeners subscribe again
   * there) and the old one goes once they have, or after `MAX_GOAWAY_WAIT_MS`.
   */
  private upgradeLater(c: Client): void {
    const order = this.options.transports ?? ['webtransport', 'websocket'];
    const at = order.indexOf(c.transportKind);
    const better = order.slice(0, at < 0 ? 0 : at).filter((k) => k !== 'webtransport' || hasWebTransport());
    if (better.length === 0) {
      return;
    }
    const random = this.backoff.random ?? Math.random;
    const delayMs = this.upgradeMs;
    this.upgradeMs = Math.min(delayMs * 2, UPGRADE_MAX_MS);
    const wait = Math.floor(delayMs / 2 + (random() * delayMs) / 2);
    const slept =
      this.backoff.sleep?.(wait) ??
      new Promise<void>((r) => {
        if (this.upgradeTimer !== null) {
          clearTimeout(this.upgradeTimer);
        }
        this.upgradeTimer = setTimeout(() => {
          this.upgradeTimer = null;
          r();
        }, wait);
      });
    void (async () => {
      await slept;
      if (this.current !== c || this.closedByUser) {
        return;
      }
      let n: Client;
      try {
        n = await Client.connect({ ...this.options, url: this.urls.get(c) ?? this.options.url, transports: better });
      } catch {
        if (this.current === c && !this.closedByUser) {
          this.upgradeLater(c);
        }
        return;
      }
      if (this.current !== c || this.closedByUser) {
        n.close();
        return;
      }
      this.upgrades += 1;
      this.urls.set(n, this.urls.get(c) ?? this.options.url);
      this.install(n, true);
      const listened = this.listened.get(n) ?? Promise.resolve();
      const deadline = new Promise<void>((r) => setTimeout(r, MAX_GOAWAY_WAIT_MS));
      void Promise.race([listened.catch(() => undefined), deadline]).then(() => c.closeWhenIdle());
    })();
  }

  /** Follows `c` until it ends or is asked to move. */
  private watch(c: Client): void {
    void c.goAway.then((g) => {
      if (this.current !== c || this.closedByUser) {
        return;
      }
      this.goAways += 1;
      // Stop using it now (requests in flight finish on it); a new one after the
      // server's pause, to the hinted host when it may be followed.
      this.current = null;
      const wait = Math.min(g.reconnectAfterMs, MAX_GOAWAY_WAIT_MS);
      const host =
        typeof g.reconnectHost === 'string'
          ? g.reconnectHost
          : g.reconnectHost === null
            ? ''
            : new TextDecoder().decode(g.reconnectHost);
      const name = host === '' ? null : hostnameOf(host);
      const configured = hostnameOf(new URL(this.options.url).host);
      const follow = this.backoff.followHost ?? ((h: string) => h === configured);
      const url = name !== null && follow(name) ? moved(this.options.url, host) : undefined;
      const next = this.reopen(wait, url);
      // The old connection goes once the new one is subscribed again (its pushes
      // cover the gap), or at the server's deadline.
      void next
        .then((n) => this.listened.get(n))
        .catch(() => undefined)
        .then(() => c.closeWhenIdle());
    });
    void c.closed.then(() => this.lost(c));
  }

  /** `c` is gone: reconnect (with a growing pause when connections keep dropping soon
   * after they are made) unless the user closed the client. */
  private lost(c: Client): void {
    if (this.current !== c || this.closedByUser) {
      return;
    }
    this.current = null;
    c.close();
    const lived = Date.now() - (this.connectedAt.get(c) ?? 0);
    const order = this.options.transports ?? ['webtransport', 'websocket'];
    if (c.transportKind === order[0] && lived >= UPGRADE_STABLE_MS) {
      // The preferred transport held: a later fallback tries it again soon.
      this.upgradeMs = UPGRADE_FIRST_MS;
    }
    this.flaps = lived < FLAP_MS ? this.flaps + 1 : 0;
    const base = this.backoff.baseMs ?? 250;
    const max = this.backoff.maxMs ?? 15_000;
    const random = this.backoff.random ?? Math.random;
    const wait = this.flaps === 0 ? 0 : Math.floor(random() * Math.min(max, base * 2 ** this.flaps));
    this.reopen(wait).catch(() => {});
  }
}
