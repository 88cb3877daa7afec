import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, SelfieError, connectWithBackoff } from '../src/client.js';

test('retries transient failures with growing, jittered delays, then succeeds', async () => {
  const slept: number[] = [];
  let calls = 0;
  const got = await connectWithBackoff(
    async () => {
      calls += 1;
      if (calls < 4) {
        throw new SelfieError(ErrorCode.Unavailable, 'edge down');
      }
      return 'session';
    },
    { baseMs: 100, maxMs: 1000, sleep: async (ms) => void slept.push(ms), random: () => 0.999 },
  );
  assert.equal(got, 'session');
  assert.equal(calls, 4);
  // Full jitter under a doubling ceiling: 100, 200, 400 (just under each).
  assert.deepEqual(slept, [99, 199, 399]);
});

test("honours the server's retry-after over its own ceiling", async () => {
  const slept: number[] = [];
  await assert.rejects(
    connectWithBackoff(
      async () => {
        throw new SelfieError(ErrorCode.Overloaded, 'busy', 5000);
      },
      { attempts: 3, baseMs: 100, maxMs: 150, sleep: async (ms) => void slept.push(ms), random: () => 0.5 },
    ),
    (e: unknown) => e instanceof SelfieError && e.code === ErrorCode.Overloaded,
  );
  assert.deepEqual(slept, [5000, 5000]);
});

test('a refused Hello is final: no retry', async () => {
  let calls = 0;
  await assert.rejects(
    connectWithBackoff(async () => {
      calls += 1;
      throw new SelfieError(ErrorCode.Unauthenticated, 'bad token');
    }),
  );
  assert.equal(calls, 1);
});
