import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatLog, ChatSession, type ChatUpdate } from '../src/chat.js';
import type { Client, Subscription } from '../src/client.js';
import type { ReconnectingClient } from '../src/reconnect.js';
import { Body, EnvelopeT, chat } from '../src/proto.js';

/** A conversation log on a pretend server: some entries are hidden from the reader. */
class Server {
  entries: chat.ChatEventT[] = [];
  hidden = new Set<bigint>();
  syncs = 0;
  push: ((e: chat.ChatEventT) => void) | null = null;

  add(seq: bigint, hidden = false): chat.ChatEventT {
    const e = new chat.ChatEventT();
    e.kind = seq === 1n ? chat.ChatEventKind.ConversationCreated : chat.ChatEventKind.MessageCreated;
    e.conversationId = 9n;
    e.eventSeq = seq;
    this.entries.push(e);
    if (hidden) {
      this.hidden.add(seq);
    } else {
      this.push?.(e);
    }
    return e;
  }

  /** The server's sync: entries past the cursor the reader may see; the cursor moves
   * past hidden ones too. */
  sync(req: chat.SyncRequestT): chat.SyncResponseT {
    this.syncs += 1;
    const from = ChatLog.parseCursor(req.sinceCursor).get(9n) ?? 0n;
    const events = this.entries.filter((e) => e.eventSeq > from && !this.hidden.has(e.eventSeq));
    const last = this.entries.length === 0 ? from : this.entries[this.entries.length - 1]!.eventSeq;
    const reached = new ChatLog();
    reached.reset(9n, last > from ? last : from);
    return new chat.SyncResponseT(events, reached.cursor(), false, []);
  }

  /** A connection to it. */
  client(): Client {
    const server = this;
    const queue: EnvelopeT[] = [];
    let wake: (() => void) | null = null;
    const sub = {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          const env = queue.shift();
          if (env !== undefined) {
            yield env;
          } else {
            await new Promise<void>((r) => (wake = r));
          }
        }
      },
      close: async () => {},
    } as unknown as Subscription;
    server.push = (e) => {
      queue.push(new EnvelopeT(0n, Body.Chat, new chat.ChatT(chat.ChatOp.ChatEvent, e)));
      wake?.();
    };
    return {
      subscribe: async () => sub,
      request: async (_b: Body, body: chat.ChatT) =>
        new EnvelopeT(1n, Body.Chat, new chat.ChatT(chat.ChatOp.SyncResponse, server.sync(body.op as chat.SyncRequestT))),
    } as unknown as Client;
  }
}

function over(c: Client): ReconnectingClient {
  return {
    onConnect: () => () => {},
    ended: new Promise(() => {}),
    client: async () => c,
    connection: c,
  } as unknown as ReconnectingClient;
}

async function seqs(session: ChatSession, n: number): Promise<bigint[]> {
  const out: bigint[] = [];
  while (out.length < n) {
    const r = await session.next();
    const u = r.value as ChatUpdate;
    assert.equal(u.type, 'event');
    if (u.type === 'event') {
      out.push(u.event.eventSeq);
    }
  }
  return out;
}

test('entries hidden from the reader leave holes that neither stop the sync nor a later push', async () => {
  const server = new Server();
  server.add(1n);
  server.add(2n);
  server.add(3n, true); // e.g. a message of someone the reader blocked
  server.add(4n);
  const session = await ChatSession.start(over(server.client()), new ChatLog());
  assert.deepEqual(await seqs(session, 3), [1n, 2n, 4n]);
  server.add(5n, true);
  server.add(6n); // pushed: past a hole, filled by a sync of the conversation
  assert.deepEqual(await seqs(session, 1), [6n]);
  assert.equal(session.delivered.position(9n), 6n);
  assert.equal(session.stats.duplicates, 1, 'the push came again in the sync');
  session.close();
});

test('only what the app has read is in the positions it saves', async () => {
  const server = new Server();
  for (let s = 1n; s <= 5n; s++) {
    server.add(s);
  }
  const saved = ChatLog.fromJSON({});
  const session = await ChatSession.start(over(server.client()), saved);
  assert.deepEqual(await seqs(session, 2), [1n, 2n]);
  // Three more are queued, not read: a reload now must get them again.
  const reload = ChatLog.fromJSON(JSON.parse(JSON.stringify(session.delivered)));
  assert.equal(reload.position(9n), 2n);
  session.close();
  const again = await ChatSession.start(over(server.client()), reload);
  assert.deepEqual(await seqs(again, 3), [3n, 4n, 5n]);
  again.close();
});
