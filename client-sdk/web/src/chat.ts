/**
 * Chat that resumes: a device's positions (`ChatLog`: per conversation, the last number
 * it holds) and a live session (`ChatSession`) that, on every connection, subscribes to
 * the user's conversations, catches up from the device's cursor (`SyncRequest`), then
 * applies pushes. Each conversation's events come out once each, in order, whatever
 * reconnects, `GoAway`s or overlapping sync and push deliver; a pushed event past a gap
 * first fills the gap from the server. A conversation whose gap is larger than the
 * server replays comes out as `limited` (refetch its history), as the native SDK's
 * `ChatStore` does.
 *
 * Numbers may have holes the device never sees (an entry hidden from this user: a
 * block, an MLS welcome for other members): a sync's cursor says how far the server has
 * gone, and the device's positions move on to it.
 *
 * The positions handed to the app are the device's state: save `session.delivered`
 * (`toJSON()`, in localStorage or IndexedDB) after handling an update, and pass
 * `ChatLog.fromJSON` to the next session to resume across reloads: an update read from
 * the session is in `delivered`, one still queued is not, so nothing is skipped.
 */
import { ErrorCode, SelfieError, type Client, type Subscription } from './client.js';
import type { ReconnectingClient } from './reconnect.js';
import { Body, EnvelopeT, chat, control } from './proto.js';

/** The cursor format's version (the server's `chat::SyncCursor`). */
const CURSOR_VERSION = 1;
/** Conversations a cursor names at most (the newest; as the native SDK). */
export const MAX_CURSOR = 4000;
/** Events asked per sync page. */
const SYNC_PAGE = 500;

/** What applying an event did. */
export type Applied =
  /** The next event of its conversation: new to the device. */
  | 'new'
  /** Already held. */
  | 'duplicate'
  /** Past the next number: something between is missing (sync the conversation). */
  | 'gap'
  /** Not part of the log (typing, presence): nothing to order. */
  | 'state';

/** A device's positions in its conversations. */
export class ChatLog {
  private readonly positions = new Map<bigint, bigint>();

  /** The last number held of `conversationId` (0n: nothing). */
  position(conversationId: bigint): bigint {
    return this.positions.get(conversationId) ?? 0n;
  }

  /** Applies one event's number (see `Applied`). */
  apply(e: chat.ChatEventT): Applied {
    const seq = e.eventSeq;
    if (seq === 0n) {
      return 'state';
    }
    const have = this.position(e.conversationId);
    if (seq <= have) {
      return 'duplicate';
    }
    // A conversation's first entry is its creation, or (for someone added later) their
    // joining: both may start past 1.
    const starts =
      have === 0n &&
      (e.kind === chat.ChatEventKind.ConversationCreated || e.kind === chat.ChatEventKind.MemberJoined);
    if (seq !== have + 1n && !starts) {
      return 'gap';
    }
    this.positions.set(e.conversationId, seq);
    return 'new';
  }

  /** Sets a conversation's position (after a refetch); 0n forgets it. */
  reset(conversationId: bigint, position: bigint): void {
    if (position === 0n) {
      this.positions.delete(conversationId);
    } else {
      this.positions.set(conversationId, position);
    }
  }

  /**
   * The sync cursor: a version byte, then (conversation, number) pairs, big-endian, of
   * the newest `MAX_CURSOR` conversations (ids grow with time).
   */
  cursor(): number[] {
    const ids = [...this.positions.keys()].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0)).slice(0, MAX_CURSOR);
    const out = new Uint8Array(1 + 16 * ids.length);
    const view = new DataView(out.buffer);
    out[0] = CURSOR_VERSION;
    ids.forEach((id, i) => {
      view.setBigUint64(1 + 16 * i, id);
      view.setBigUint64(9 + 16 * i, this.positions.get(id) ?? 0n);
    });
    return [...out];
  }

  /**
   * Applies an event of a sync page: new when past the position (a sync may skip
   * numbers hidden from this user; the page's cursor then moves the position on).
   */
  applySynced(e: chat.ChatEventT): Applied {
    if (e.eventSeq === 0n) {
      return 'state';
    }
    if (e.eventSeq <= this.position(e.conversationId)) {
      return 'duplicate';
    }
    this.positions.set(e.conversationId, e.eventSeq);
    return 'new';
  }

  /** Moves positions on to `to` (never back). */
  advance(to: ReadonlyMap<bigint, bigint>): void {
    for (const [id, seq] of to) {
      if (seq > this.position(id)) {
        this.positions.set(id, seq);
      }
    }
  }

  /** The positions a server's cursor holds (empty when it is not one). */
  static parseCursor(cursor: readonly number[]): Map<bigint, bigint> {
    const out = new Map<bigint, bigint>();
    if (cursor.length < 1 || cursor[0] !== CURSOR_VERSION) {
      return out;
    }
    const bytes = Uint8Array.from(cursor);
    const view = new DataView(bytes.buffer);
    for (let at = 1; at + 16 <= bytes.length; at += 16) {
      out.set(view.getBigUint64(at), view.getBigUint64(at + 8));
    }
    return out;
  }

  /** The position a server's cursor gives `conversationId` (absent: not a member). */
  static positionIn(cursor: readonly number[], conversationId: bigint): bigint | null {
    return ChatLog.parseCursor(cursor).get(conversationId) ?? null;
  }

  /** A copy. */
  clone(): ChatLog {
    const log = new ChatLog();
    for (const [k, v] of this.positions) {
      log.positions.set(k, v);
    }
    return log;
  }

  /** The positions, for saving (decimal strings: JSON has no 64-bit integers). */
  toJSON(): Record<string, string> {
    return Object.fromEntries([...this.positions].map(([k, v]) => [k.toString(), v.toString()]));
  }

  /** Positions saved by `toJSON`. */
  static fromJSON(saved: Record<string, string>): ChatLog {
    const log = new ChatLog();
    for (const [k, v] of Object.entries(saved)) {
      log.positions.set(BigInt(k), BigInt(v));
    }
    return log;
  }
}

/** What a `ChatSession` hands the app. */
export type ChatUpdate =
  /** An event, once, in its conversation's order (`eventSeq` 0: typing, presence). */
  | { readonly type: 'event'; readonly event: chat.ChatEventT; readonly via: 'sync' | 'push' }
  /** The server no longer covers this conversation's gap: refetch its history. */
  | { readonly type: 'limited'; readonly conversationId: bigint };

/** What a session has done, for apps and tests. */
export interface ChatSessionStats {
  /** Events new to the device that came from a sync. */
  synced: number;
  /** Events new to the device that came live. */
  pushed: number;
  /** Events delivered twice (by sync and push) and dropped. */
  duplicates: number;
  /** Conversations refetched (`limited`). */
  refetched: number;
  /** Catch-ups run after a connection (the first included). */
  resumes: number;
}

/** The chat event an envelope carries, if any. */
function eventOf(env: EnvelopeT): chat.ChatEventT | null {
  const b = env.body;
  return env.bodyType === Body.Chat && b instanceof chat.ChatT && b.op instanceof chat.ChatEventT ? b.op : null;
}

/** What the session queues for the app: an update, or positions to move on to once
 * the updates before them are read (entries hidden from this user). */
type Item =
  | { readonly update: ChatUpdate; readonly reset?: bigint }
  | { readonly advance: ReadonlyMap<bigint, bigint> };

/** Updates queued past this make the session wait (pushes then overflow the
 * subscription, which ends in a resync: nothing is lost, memory stays bounded). */
const HIGH_WATER = 4096;

/** The queue between the session and the app. */
class Updates {
  private items: Item[] = [];
  private waiters: Array<(r: Item | null) => void> = [];
  private roomWaiters: Array<() => void> = [];
  private done = false;
  private failure: unknown = null;

  push(i: Item): void {
    const w = this.waiters.shift();
    if (w !== undefined) {
      w(i);
    } else if (!this.done) {
      this.items.push(i);
    }
  }

  /** Resolves once fewer than `HIGH_WATER` items wait to be read. */
  room(): Promise<void> {
    if (this.items.length < HIGH_WATER || this.done) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  end(failure: unknown = null): void {
    if (this.done) {
      return;
    }
    this.done = true;
    this.failure = failure;
    for (const w of this.waiters.splice(0)) {
      w(null);
    }
    for (const r of this.roomWaiters.splice(0)) {
      r();
    }
  }

  /** The next item; `null` at the end (after the queued ones are read). */
  async take(): Promise<Item | null> {
    const i = this.items.shift();
    if (this.items.length < HIGH_WATER) {
      for (const r of this.roomWaiters.splice(0)) {
        r();
      }
    }
    if (i !== undefined) {
      return i;
    }
    if (this.done) {
      if (this.failure !== null) {
        const f = this.failure;
        this.failure = null;
        throw f;
      }
      return null;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/** A live chat that resumes from the device's positions; see the module docs. */
export class ChatSession implements AsyncIterableIterator<ChatUpdate> {
  readonly stats: ChatSessionStats = { synced: 0, pushed: 0, duplicates: 0, refetched: 0, resumes: 0 };
  private readonly updates = new Updates();
  private closed = false;
  private stopListening: () => void = () => {};
  /** The connection being served and its subscription. */
  private serving: { client: Client; sub: Subscription } | null = null;
  /** Connections served already (a reconnect under way at start is served once). */
  private readonly served = new WeakSet<Client>();
  /** Serialises catch-ups and pushes: one conversation's events never interleave. */
  private chain: Promise<void> = Promise.resolve();
  /** Positions of what was applied (sync cursors, duplicates): ahead of `delivered`. */
  private readonly applied: ChatLog;

  private constructor(
    private readonly rc: ReconnectingClient,
    /** Positions of what the app has read from the session: save this one. */
    readonly delivered: ChatLog,
  ) {
    this.applied = delivered.clone();
  }

  /**
   * Starts on `rc`'s connection, catching up from `log` (positions saved from an
   * earlier session's `delivered`), and follows its reconnects until `close`, or until
   * `rc` is closed or refused.
   */
  static async start(rc: ReconnectingClient, log: ChatLog = new ChatLog()): Promise<ChatSession> {
    const s = new ChatSession(rc, log);
    s.stopListening = rc.onConnect((c) => s.serve(c));
    void rc.ended.then(() => s.close());
    await s.serve(await rc.client());
    return s;
  }

  async next(): Promise<IteratorResult<ChatUpdate>> {
    for (;;) {
      const i = await this.updates.take();
      if (i === null) {
        return { value: undefined, done: true };
      }
      if ('advance' in i) {
        this.delivered.advance(i.advance);
        continue;
      }
      const u = i.update;
      if (u.type === 'event') {
        this.delivered.advance(new Map([[u.event.conversationId, u.event.eventSeq]]));
      } else {
        this.delivered.reset(u.conversationId, i.reset ?? 0n);
      }
      return { value: u, done: false };
    }
  }

  async return(): Promise<IteratorResult<ChatUpdate>> {
    this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<ChatUpdate> {
    return this;
  }

  /** Stops following the conversations (the client stays open); the updates already
   * queued can still be read. */
  close(): void {
    this.end(null);
  }

  private end(failure: unknown): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.stopListening();
    void this.serving?.sub.close().catch(() => {});
    this.serving = null;
    this.updates.end(failure);
  }

  /**
   * Serves connection `c`: subscribe first (nothing sent meanwhile falls between), then
   * catch up from the cursor, then apply pushes as they come. A refusal while the
   * connection lives (a rate limit) is retried after the server's pause; one that
   * persists ends the session with the error.
   */
  private async serve(c: Client): Promise<void> {
    if (this.closed || this.served.has(c)) {
      return;
    }
    this.served.add(c);
    for (let attempt = 0; ; attempt++) {
      try {
        const sub = await c.subscribe(control.SubscriptionKind.AllConversations);
        if (this.closed) {
          void sub.close().catch(() => {});
          return;
        }
        this.serving = { client: c, sub };
        await this.serial(async () => {
          this.stats.resumes += 1;
          await this.sync(c, 0n);
        });
        void this.pump(c, sub);
        return;
      } catch (e) {
        void this.serving?.sub.close().catch(() => {});
        if (this.closed || this.rc.connection !== c) {
          return; // The connection went: the next one is served by `onConnect`.
        }
        if (attempt >= 8) {
          this.end(e);
          return;
        }
        const told = e instanceof SelfieError ? Math.min(e.retryAfterMs, 15_000) : 0;
        await new Promise((r) => setTimeout(r, Math.max(told, Math.min(15_000, 250 * 2 ** attempt))));
      }
    }
  }

  /** Runs `f` after whatever this session is doing. */
  private serial(f: () => Promise<void>): Promise<void> {
    const run = this.chain.then(f);
    this.chain = run.catch(() => {});
    return run;
  }

  /** Applies the pushes of `sub` until it ends. */
  private async pump(c: Client, sub: Subscription): Promise<void> {
    try {
      for await (const env of sub) {
        const e = eventOf(env);
        if (e === null) {
          continue;
        }
        await this.serial(() => this.applyPush(c, e));
      }
    } catch {
      // The subscriber fell behind (`ResyncRequired`), or catching up failed: while the
      // connection lives, subscribe again there and catch up; a lost connection comes
      // back by `onConnect`.
      void sub.close().catch(() => {});
      if (this.rc.connection === c && !this.closed) {
        this.served.delete(c);
        void this.serve(c);
      }
    }
  }

  private async applyPush(c: Client, e: chat.ChatEventT): Promise<void> {
    await this.updates.room();
    let applied = this.applied.apply(e);
    // Something between was missed (a push lost to a reconnect): fill it from the
    // server, which brings this event too; a server whose copy lags (CQL replicas) is
    // asked again, a few times.
    for (let attempt = 0; applied === 'gap' && attempt < 4; attempt++) {
      if (attempt > 0) {
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
      await this.sync(c, e.conversationId);
      applied = this.applied.apply(e);
    }
    this.emit(e, applied, 'push');
  }

  private emit(e: chat.ChatEventT, applied: Applied, via: 'sync' | 'push'): void {
    if (applied === 'duplicate') {
      this.stats.duplicates += 1;
      return;
    }
    if (applied === 'gap') {
      return; // Still missing after the syncs: the next push or reconnect fills it.
    }
    if (applied === 'new') {
      if (via === 'sync') {
        this.stats.synced += 1;
      } else {
        this.stats.pushed += 1;
      }
    }
    this.updates.push({ update: { type: 'event', event: e, via } });
  }

  /** Catches up from the cursor: every conversation, or only `conversationId`. */
  private async sync(c: Client, conversationId: bigint): Promise<void> {
    for (;;) {
      await this.updates.room();
      const req = new chat.SyncRequestT(this.applied.cursor(), SYNC_PAGE, conversationId);
      const env = await c.request(Body.Chat, new chat.ChatT(chat.ChatOp.SyncRequest, req));
      const b = env.body;
      if (!(b instanceof chat.ChatT) || !(b.op instanceof chat.SyncResponseT)) {
        throw new SelfieError(ErrorCode.UnexpectedMessage, 'expected SyncResponse');
      }
      const page = b.op;
      for (const e of page.events) {
        this.emit(e, this.applied.applySynced(e), 'sync');
      }
      const reached = ChatLog.parseCursor(page.nextCursor);
      for (const id of page.limited) {
        // Start over from the server's position (absent: no longer a member).
        const at = reached.get(id) ?? 0n;
        this.applied.reset(id, at);
        reached.delete(id);
        this.stats.refetched += 1;
        this.updates.push({ update: { type: 'limited', conversationId: id }, reset: at });
      }
      // Past entries hidden from this user: the server's positions.
      const moved = [...reached].some(([id, seq]) => seq > this.applied.position(id));
      this.applied.advance(reached);
      this.updates.push({ advance: reached });
      if (!page.hasMore || (page.events.length === 0 && !moved)) {
        return;
      }
    }
  }
}
