import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatLog } from '../src/chat.js';
import { isIdempotent } from '../src/reconnect.js';
import { Body, chat, control } from '../src/proto.js';

function ev(conversationId: bigint, eventSeq: bigint, kind = chat.ChatEventKind.MessageCreated): chat.ChatEventT {
  const e = new chat.ChatEventT();
  e.kind = kind;
  e.conversationId = conversationId;
  e.eventSeq = eventSeq;
  return e;
}

test('applies each number once, in order, and names gaps', () => {
  const log = new ChatLog();
  // A conversation starts at its creation (or the reader's joining), past 1 or not.
  assert.equal(log.apply(ev(7n, 1n)), 'new');
  assert.equal(log.apply(ev(7n, 2n)), 'new');
  assert.equal(log.apply(ev(7n, 2n)), 'duplicate');
  assert.equal(log.apply(ev(7n, 1n)), 'duplicate');
  assert.equal(log.apply(ev(7n, 4n)), 'gap');
  assert.equal(log.position(7n), 2n, 'a gap does not move the position');
  assert.equal(log.apply(ev(9n, 40n)), 'gap', 'a message cannot start a conversation past 1');
  assert.equal(log.apply(ev(9n, 40n, chat.ChatEventKind.MemberJoined)), 'new');
  assert.equal(log.apply(ev(9n, 0n, chat.ChatEventKind.Typing)), 'state');
  assert.equal(log.position(9n), 40n);
});

test("the cursor is the server's format, newest conversations first, and round-trips", () => {
  const log = new ChatLog();
  log.apply(ev(3n, 1n));
  log.apply(ev(0x0102030405060708n, 5n, chat.ChatEventKind.ConversationCreated));
  const c = log.cursor();
  assert.equal(c.length, 1 + 2 * 16);
  assert.equal(c[0], 1, 'version');
  assert.deepEqual(c.slice(1, 9), [1, 2, 3, 4, 5, 6, 7, 8], 'the newest (largest id) first, big-endian');
  assert.deepEqual(c.slice(9, 17), [0, 0, 0, 0, 0, 0, 0, 5]);
  assert.equal(ChatLog.positionIn(c, 3n), 1n);
  assert.equal(ChatLog.positionIn(c, 4n), null);
  assert.equal(ChatLog.positionIn([9, ...c.slice(1)], 3n), null, 'another version is not read');
  const saved = JSON.parse(JSON.stringify(log));
  const again = ChatLog.fromJSON(saved);
  assert.deepEqual(again.cursor(), c);
  again.reset(3n, 0n);
  assert.equal(again.position(3n), 0n);
});

test('only reads are replayed after a lost connection', () => {
  const sync = new chat.ChatT(chat.ChatOp.SyncRequest, new chat.SyncRequestT());
  const send = new chat.ChatT(chat.ChatOp.SendMessageRequest, new chat.SendMessageRequestT());
  const ping = new control.ControlT(control.ControlOp.Ping, new control.PingT());
  assert.equal(isIdempotent(Body.Chat, sync), true);
  assert.equal(isIdempotent(Body.Chat, send), false);
  assert.equal(isIdempotent(Body.Control, ping), true);
  assert.equal(isIdempotent(Body.Auth, sync), false, 'an op number read with the wrong service');
  assert.equal(isIdempotent(Body.NONE, null), false);
});
