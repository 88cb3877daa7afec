import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, SelfieError, type Subscription } from '../src/client.js';
import { Selfie } from '../src/services.js';
import type { Requester } from '../src/reconnect.js';
import { Body, EnvelopeT, chat, control, graph } from '../src/proto.js';

/** A session that records what is sent and answers with `reply`. */
class Recorder implements Requester {
  sent: Array<{ bodyType: Body; body: EnvelopeT['body'] }> = [];
  constructor(private reply: EnvelopeT) {}
  async request(bodyType: Body, body: EnvelopeT['body']): Promise<EnvelopeT> {
    this.sent.push({ bodyType, body });
    return this.reply;
  }
  rawRequest(): Promise<EnvelopeT> {
    throw new Error('not used');
  }
  subscribe(): Promise<Subscription> {
    throw new Error('not used');
  }
}

test('a generated operation sends its request and returns the answer its schema names', async () => {
  const page = new chat.MessagesPageT();
  const r = new Recorder(new EnvelopeT(1n, Body.Chat, new chat.ChatT(chat.ChatOp.MessagesPage, page)));
  const s = new Selfie(r);
  const got = await s.ops.chat.history(new chat.HistoryRequestT(7n, 0n, 20));
  assert.equal(got, page);
  assert.equal(r.sent.length, 1);
  assert.equal(r.sent[0]!.bodyType, Body.Chat);
  const body = r.sent[0]!.body as chat.ChatT;
  assert.equal(body.opType, chat.ChatOp.HistoryRequest);
  assert.equal((body.op as chat.HistoryRequestT).conversationId, 7n);
});

test('an answer of another kind is refused, and an Ack answers a change', async () => {
  const wrong = new Recorder(new EnvelopeT(1n, Body.Chat, new chat.ChatT(chat.ChatOp.SyncResponse, new chat.SyncResponseT())));
  await assert.rejects(new Selfie(wrong).ops.chat.history(new chat.HistoryRequestT()), (e: unknown) => {
    return e instanceof SelfieError && e.code === ErrorCode.UnexpectedMessage;
  });
  const ack = new EnvelopeT(1n, Body.Control, new control.ControlT(control.ControlOp.Ack, new control.AckT()));
  const ok = new Recorder(ack);
  assert.equal(await new Selfie(ok).ops.graph.unfollow(new graph.UnfollowRequestT(5n)), undefined);
  assert.equal((ok.sent[0]!.body as graph.GraphT).opType, graph.GraphOp.UnfollowRequest);
  // A change answered by anything but an Ack is refused too.
  await assert.rejects(new Selfie(wrong).ops.graph.unfollow(new graph.UnfollowRequestT(5n)), SelfieError);
});

test('every service the edge serves has its operations', () => {
  const s = new Selfie(new Recorder(new EnvelopeT()));
  assert.deepEqual(Object.keys(s.ops).sort(), [
    'auth', 'chat', 'feed', 'graph', 'media', 'notifications', 'posts', 'stories', 'users',
  ]);
  // A few from each: the names follow the requests' (`...Request` dropped).
  for (const [service, op] of [
    ['auth', 'totpEnroll'], ['chat', 'mlsCommit'], ['feed', 'notInterested'], ['graph', 'closeFriendsUpdate'],
    ['media', 'uploadInit'], ['notifications', 'markRead'], ['posts', 'createComment'], ['stories', 'storyViewers'],
    ['users', 'updateSettings'],
  ] as const) {
    assert.equal(typeof (s.ops[service] as unknown as Record<string, unknown>)[op], 'function', `${service}.${op}`);
  }
});
