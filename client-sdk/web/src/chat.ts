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
 * The positions are the device's state: save `ChatLog.toJSON()` (localStorage,
 * IndexedDB) and pass `ChatLog.fromJSON` to the next session to resume across reloads.
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

  /** The position a server's cursor gives `conversationId` (absent: not a member). */
  static positionIn(cursor: readonly number[], conversationId: bigint): bigint | null {
    if (cursor.length < 1 || cursor[0] !== CURSOR_VERSION) {
      return null;
    }
    const bytes = Uint8Array.from(cursor);
    const view = new DataView(bytes.buffer);
    for (let at = 1; at + 16 <= bytes.length; at += 16) {
      if (view.getBigUint64(at) === conversationId) {
        return view.getBigUint64(at + 8);
      }
    }
    return null;
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

/** A bounded-by-nothing queue of updates: the app reads them as they come. */
class Updates {
  private items: ChatUpdate[] = [];
  private waiters: Array<(r: IteratorResult<ChatUpdate>) => void> = [];
  private done = false;

  push(u: ChatUpdate): void {
    const w = this.waiters.shift();
    if (w !== undefined) {
      w({ value: u, done: false });
    } else if (!this.done) {
      this.items.push(u);
    }
  }

  end(): void {
    this.done = true;
    for (const w of this.waiters.splice(0)) {
      w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<ChatUpdate>> {
    const u = this.items.shift();
    if (u !== undefined) {
      return Promise.resolve({ value: u, done: false });
    }
    if (this.done) {
      return Promise.resolve({ value: undefined, done: true });
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
  /** Serialises catch-ups and pushes: one conversation's events never interleave. */
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    private readonly rc: ReconnectingClient,
    /** The device's positions (save `log.toJSON()` to resume after a reload). */
    readonly log: ChatLog,
  ) {}

  /** Starts on `rc`'s connection, catching up from `log`, and follows its reconnects. */
  static async start(rc: ReconnectingClient, log: ChatLog = new ChatLog()): Promise<ChatSession> {
    const s = new ChatSession(rc, log);
    s.stopListening = rc.onConnect((c) => s.serve(c));
    await s.serve(await rc.client());
    return s;
  }

  next(): Promise<IteratorResult<ChatUpdate>> {
    return this.updates.next();
  }

  async return(): Promise<IteratorResult<ChatUpdate>> {
    this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<ChatUpdate> {
    return this;
  }

  /** Stops following the conversations (the client stays open). */
  close(): void {
    this.closed = true;
    this.stopListening();
    void this.serving?.sub.close().catch(() => {});
    this.serving = null;
    this.updates.end();
  }

  /**
   * Serves connection `c`: subscribe first (nothing sent meanwhile falls between), then
   * catch up from the cursor, then apply pushes as they come.
   */
  private async serve(c: Client): Promise<void> {
    if (this.closed) {
      return;
    }
    const sub = await c.subscribe(control.SubscriptionKind.AllConversations);
    if (this.closed) {
      void sub.close().catch(() => {});
      return;
    }
    this.serving = { client: c, sub };
    // Catch up; a refusal while the connection lives (a rate limit) is retried after
    // the server's pause, a lost connection is left to the next `onConnect`.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.serial(async () => {
          this.stats.resumes += 1;
          await this.sync(c, 0n);
        });
        break;
      } catch (e) {
        if (this.closed || this.rc.connection !== c || attempt >= 8) {
          void sub.close().catch(() => {});
          throw e;
        }
        const told = e instanceof SelfieError ? e.retryAfterMs : 0;
        await new Promise((r) => setTimeout(r, Math.max(told, Math.min(15_000, 250 * 2 ** attempt))));
      }
    }
    void this.pump(c, sub);
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
    } catch (e) {
      // The subscriber fell behind (`ResyncRequired`) while the connection lives:
      // subscribe again there and catch up; a lost connection comes back by `onConnect`.
      if (e instanceof SelfieError && e.code === ErrorCode.ResyncRequired && this.rc.connection === c && !this.closed) {
        void this.serve(c).catch(() => {});
      }
    }
  }

  private async applyPush(c: Client, e: chat.ChatEventT): Promise<void> {
    let applied = this.log.apply(e);
    if (applied === 'gap') {
      // Something between was missed (a push lost to a reconnect): fill it from the
      // server, which brings this event too.
      await this.sync(c, e.conversationId);
      applied = this.log.apply(e);
    }
    this.emit(e, applied, 'push');
  }

  private emit(e: chat.ChatEventT, applied: Applied, via: 'sync' | 'push'): void {
    if (applied === 'duplicate') {
      this.stats.duplicates += 1;
      return;
    }
    if (applied === 'gap') {
      return; // Still missing after a sync: the next sync or push fills it.
    }
    if (applied === 'new') {
      if (via === 'sync') {
        this.stats.synced += 1;
      } else {
        this.stats.pushed += 1;
      }
    }
    this.updates.push({ type: 'event', event: e, via });
  }

  /** Catches up from the cursor: every conversation, or only `conversationId`. */
  private async sync(c: Client, conversationId: bigint): Promise<void> {
    for (;;) {
      const req = new chat.SyncRequestT(this.log.cursor(), SYNC_PAGE, conversationId);
      const env = await c.request(Body.Chat, new chat.ChatT(chat.ChatOp.SyncRequest, req));
      const b = env.body;
      if (!(b instanceof chat.ChatT) || !(b.op instanceof chat.SyncResponseT)) {
        throw new SelfieError(ErrorCode.UnexpectedMessage, 'expected SyncResponse');
      }
      const page = b.op;
      for (const e of page.events) {
        const applied = this.log.apply(e);
        if (applied === 'gap') {
          throw new SelfieError(ErrorCode.UnexpectedMessage, "the server's sync skipped numbers");
        }
        this.emit(e, applied, 'sync');
      }
      for (const id of page.limited) {
        // Start over from the server's position (absent: no longer a member).
        this.log.reset(id, ChatLog.positionIn(page.nextCursor, id) ?? 0n);
        this.stats.refetched += 1;
        this.updates.push({ type: 'limited', conversationId: id });
      }
      if (!page.hasMore || page.events.length === 0) {
        return;
      }
    }
  }
}
