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
 * Subscriptions belong to one connection: `onConnect` runs for every new connection so
 * that a caller subscribes again there (with its cursor; `ChatSession` does this for
 * chat). A refused session (bad token, unsupported version) is final and ends the
 * client.
 */
import {
  type Backoff,
  Client,
  type ConnectOptions,
  ErrorCode,
  SelfieError,
  type Subscription,
  connectWithBackoff,
  isRetryable,
} from './client.js';
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
  rawRequest(
    bodyType: Body,
    body: EnvelopeT['body'],
    payload: Uint8Array | null,
    onBytes: ((bytes: Uint8Array) => void) | null,
  ): Promise<EnvelopeT>;
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

/** Whether a failed request may have been cut off by its connection (worth another). */
function connectionLost(e: unknown): boolean {
  return (
    !(e instanceof SelfieError) ||
    [ErrorCode.Unavailable, ErrorCode.Timeout, ErrorCode.Draining, ErrorCode.Overloaded].includes(e.code)
  );
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

/** A client that reconnects by itself; see the module docs. */
export class ReconnectingClient implements Requester {
  private current: Client | null = null;
  private connecting: Promise<Client> | null = null;
  private readonly listeners = new Set<(c: Client) => void | Promise<void>>();
  private closedByUser = false;
  private connectedOnce = false;
  private failure: unknown = null;
  private options: ConnectOptions;
  /** New connections made after the first. */
  reconnects = 0;
  private refuse: (e: SelfieError) => void = () => {};
  /** Resolves when the edge refuses the session for good (an expired or revoked token,
   * an unsupported version): sign in again. */
  readonly refused: Promise<SelfieError> = new Promise((resolve) => (this.refuse = resolve));
  /** `GoAway`s received. */
  goAways = 0;

  private constructor(
    options: ConnectOptions,
    private readonly backoff: Backoff,
  ) {
    this.options = options;
  }

  /**
   * Connects (with `backoff`; by default retrying for as long as failures are
   * transient) and keeps the session connected from then on.
   */
  static async connect(options: ConnectOptions, backoff: Backoff = {}): Promise<ReconnectingClient> {
    const rc = new ReconnectingClient(options, backoff);
    await rc.client();
    return rc;
  }

  /** The access token used by later connections (after a refresh). */
  setAccessToken(token: string | null): void {
    this.options = { ...this.options, accessToken: token };
  }

  /** The current connection, if one is open. */
  get connection(): Client | null {
    return this.current;
  }

  /**
   * Runs `f` for every new connection (not for the current one): subscribe there again.
   * Returns a function that stops it.
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
    this.connecting ??= this.open(0).finally(() => (this.connecting = null));
    return this.connecting;
  }

  /**
   * Sends a request on the current connection. When the connection is lost under it,
   * an idempotent request is sent again on the next one (up to the backoff's
   * attempts); any other request fails with the error.
   */
  async request(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT> {
    const again = isIdempotent(bodyType, body);
    const attempts = this.backoff.attempts ?? 8;
    for (let i = 0; ; i++) {
      const c = await this.client();
      try {
        return await c.request(bodyType, body);
      } catch (e) {
        if (!again || !connectionLost(e) || i + 1 >= attempts) {
          throw e;
        }
        // Move off a connection that failed it: the next call waits for a new one.
        if (this.current === c) {
          this.lost(c);
        }
      }
    }
  }

  /** A raw-bytes request on the current connection (never replayed: a download that was
   * cut off is asked again by its caller, from the bytes it has). */
  async rawRequest(
    bodyType: Body,
    body: EnvelopeT['body'],
    payload: Uint8Array | null,
    onBytes: ((bytes: Uint8Array) => void) | null,
  ): Promise<EnvelopeT> {
    const c = await this.client();
    return c.rawRequest(bodyType, body, payload, onBytes);
  }

  /** Subscribes on the current connection (see `onConnect` to follow reconnects). */
  async subscribe(kind: control.SubscriptionKind, targetId = 0n, sinceCursor: readonly number[] = []): Promise<Subscription> {
    const c = await this.client();
    return c.subscribe(kind, targetId, sinceCursor);
  }

  /** Closes the session for good. */
  close(): void {
    this.closedByUser = true;
    this.current?.close();
    this.current = null;
  }

  /** Opens a connection (after `waitMs`, to `url` when a `GoAway` named a host) and
   * watches it. */
  private async open(waitMs: number, url?: string): Promise<Client> {
    const sleep = this.backoff.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    if (waitMs > 0) {
      await sleep(waitMs);
    }
    let c: Client;
    try {
      // Keep trying while failures are transient (a phone in a tunnel comes back), a
      // full backoff round at a time; the token is read at each attempt.
      for (;;) {
        try {
          c = await connectWithBackoff(
            () => Client.connect(url === undefined ? this.options : { ...this.options, url }),
            this.backoff,
          );
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
        this.failure = e; // The session is refused: final.
        this.refuse(e);
      }
      throw e;
    }
    if (this.closedByUser) {
      c.close();
      throw new SelfieError(ErrorCode.Unavailable, 'the client is closed');
    }
    const again = this.connectedOnce;
    this.connectedOnce = true;
    if (again) {
      this.reconnects += 1;
    }
    this.current = c;
    this.watch(c);
    if (again) {
      for (const f of this.listeners) {
        try {
          await f(c);
        } catch {
          // A listener's failure is its own (it sees its subscription end and retries).
        }
      }
    }
    return c;
  }

  /** Follows `c` until it ends or is asked to move. */
  private watch(c: Client): void {
    void c.goAway.then((g) => {
      if (this.current !== c || this.closedByUser) {
        return;
      }
      this.goAways += 1;
      // Stop using it now (requests in flight finish on it); a new one after the
      // server's pause.
      this.current = null;
      const wait = Math.min(g.reconnectAfterMs, MAX_GOAWAY_WAIT_MS);
      const host = typeof g.reconnectHost === 'string' ? g.reconnectHost : g.reconnectHost === null ? '' : new TextDecoder().decode(g.reconnectHost);
      const url = host === '' ? undefined : moved(this.options.url, host);
      this.connecting ??= this.open(wait, url).finally(() => (this.connecting = null));
      this.connecting.catch(() => {});
      // Leave once what it carries is answered: the server need not wait its deadline.
      c.closeWhenIdle();
    });
    void c.closed.then(() => this.lost(c));
  }

  /** `c` is gone: reconnect now (with backoff) unless the user closed the client. */
  private lost(c: Client): void {
    if (this.current !== c || this.closedByUser) {
      return;
    }
    this.current = null;
    c.close();
    this.connecting ??= this.open(0).finally(() => (this.connecting = null));
    this.connecting.catch(() => {});
  }
}
