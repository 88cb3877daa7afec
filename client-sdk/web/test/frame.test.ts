import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameError, FrameReader, decodeDatagram, encodeDatagram, encodeEnvelope, readFrames } from '../src/frame.js';
import { Body, EnvelopeT, control, datagram } from '../src/proto.js';

function ping(id: bigint, nonce: bigint): Uint8Array {
  const c = new control.ControlT(control.ControlOp.Ping, new control.PingT(nonce, 0n));
  return encodeEnvelope(new EnvelopeT(id, Body.Control, c));
}

test('frames are reassembled whatever the chunk boundaries', () => {
  const bytes = new Uint8Array([...ping(1n, 11n), ...ping(2n, 22n), ...ping(3n, 33n)]);
  for (const size of [1, 2, 3, 5, 7, 64, bytes.length]) {
    const r = new FrameReader();
    const got: bigint[] = [];
    for (let i = 0; i < bytes.length; i += size) {
      r.push(bytes.subarray(i, i + size));
      for (let env = r.next(); env !== null; env = r.next()) {
        const c = env.body as control.ControlT;
        assert.ok(c.op instanceof control.PingT);
        got.push(c.op.nonce);
      }
    }
    assert.deepEqual(got, [11n, 22n, 33n], `chunks of ${size}`);
    assert.equal(r.pending, 0);
  }
});

test('a frame over the limit is refused before it is buffered', () => {
  const r = new FrameReader(1024);
  r.push(new Uint8Array([0x00, 0x00, 0x10, 0x00]));
  assert.throws(() => r.next(), FrameError);
});

test('garbage is a FrameError, not a crash', () => {
  const r = new FrameReader();
  r.push(new Uint8Array([5, 0, 0, 0, 104, 101, 108, 108, 111]));
  assert.throws(() => r.next(), FrameError);
});

test('a stream that ends inside a frame is an error', async () => {
  const whole = ping(1n, 1n);
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(whole.subarray(0, whole.length - 2));
      c.close();
    },
  });
  await assert.rejects(async () => {
    for await (const _ of readFrames(stream, 1 << 20)) {
      // Nothing whole arrives.
    }
  }, FrameError);
});

test('datagrams round-trip and foreign bytes are dropped', () => {
  const t = new datagram.TypingT(42n, 0n, true, 0n);
  const d = new datagram.DatagramT(7n, datagram.DatagramBody.Typing, t);
  const back = decodeDatagram(encodeDatagram(d));
  assert.ok(back !== null);
  assert.equal(back.seq, 7n);
  assert.ok(back.body instanceof datagram.TypingT);
  assert.equal(back.body.conversationId, 42n);
  assert.equal(decodeDatagram(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9])), null);
});
