// Browser tests: Debian's Chromium (never a downloaded browser), driven by
// playwright-core, against a real `selfie serve` serving the built web client on its
// `[web]` HTTPS port. Two users in two browser contexts register, one follows the
// other, a post arrives live in the follower's feed, then one with a picture (uploaded
// in chunks, shown from a signed URL), a direct message arrives live; one
// turns on 2FA and logs back in
// with a code. Then the same with WebTransport removed from the browser: the client
// falls back to the WebSocket transport. Screenshots of each main screen are kept in
// $SELFIE_ARTIFACTS. Last, the SDK's chat resume in the page: the edge restarts (SIGTERM:
// `GoAway`, drain) while messages are sent, then a client away for 60 messages resumes
// from its saved cursor; media: a chunked upload, one resumed on a new connection, a
// rendition downloaded over the session and by its signed URL (both transports).
//
//   SELFIE_BIN=target/debug/selfie node test/browser.mjs
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const here = new URL('..', import.meta.url).pathname;
const bin = process.env.SELFIE_BIN ?? resolve(here, '../../target/debug/selfie');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = resolve(process.env.SELFIE_ARTIFACTS ?? join(here, 'dist/artifacts'));
mkdirSync(artifacts, { recursive: true });

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** RFC 6238 TOTP (SHA-1, 30 s, 6 digits) from a base32 secret. */
function totp(secret, at = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30000)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  return ((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).toString().padStart(6, '0');
}

/** Starts `selfie serve`; `same` (an earlier start's ports and directory) restarts it. */
async function startEdge(same = null) {
  const { quic, ops, web, dir } = same ?? {
    quic: await freePort(),
    ops: await freePort(),
    web: await freePort(),
    dir: mkdtempSync(join(tmpdir(), 'selfie-web-')),
  };
  const args = [
    'serve',
    '--set', `server.data_dir="${dir}"`,
    '--set', `server.listen="127.0.0.1:${quic}"`,
    '--set', 'server.shards=2',
    '--set', `ops.listen="127.0.0.1:${ops}"`,
    '--set', `web.listen="127.0.0.1:${web}"`,
    '--set', `web.client_dir="${join(here, 'dist/app')}"`,
    // Every test user registers from 127.0.0.1: room for all of them at once (the
    // limit itself is tested in the accounts tests).
    '--set', 'auth.register_burst=16',
    // Small chunks: a test image is several of them.
    '--set', 'media.chunk_bytes=65536',
  ];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = same?.log() ?? '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${ops}/readyz`);
      if (r.status === 200) {
        return { child, quic, web, ops, dir, log: () => log };
      }
    } catch {
      // Not up yet.
    }
    if (child.exitCode !== null) {
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`selfie serve did not become ready:\n${log}`);
}

/** Stops the edge as an operator does (SIGTERM: `GoAway`, drain) and waits for it. */
async function stopEdge(edge) {
  if (edge.child.exitCode !== null) {
    return;
  }
  const exited = new Promise((r) => edge.child.once('exit', r));
  edge.child.kill('SIGTERM');
  await exited;
}

async function register(page, base, name) {
  await page.goto(`${base}/`);
  const form = page.getByTestId('register');
  await form.waitFor();
  await form.locator('[name=username]').fill(name);
  await form.locator('[name=email]').fill(`${name}@example.com`);
  await form.locator('[name=password]').fill(`${name} correct horse battery`);
  await form.locator('button').click();
  await page.getByTestId('compose').waitFor({ timeout: 20_000 });
  await page.locator('main[data-ready=true]').waitFor({ timeout: 20_000 });
}

/**
 * Two users in two contexts: register, follow, a post arrives live, notifications.
 * `websocket`: the browser has no WebTransport (as older Safari): the client falls back
 * to the WebSocket transport on its own.
 */
async function scenario(browser, base, mode, failures) {
  const options = { ignoreHTTPSErrors: true };
  const ctxA = await browser.newContext(options);
  const ctxB = await browser.newContext(options);
  if (mode === 'websocket') {
    for (const ctx of [ctxA, ctxB]) {
      await ctx.addInitScript(() => {
        delete globalThis.WebTransport;
      });
    }
  }
  const a = await ctxA.newPage();
  const b = await ctxB.newPage();
  for (const p of [a, b]) {
    p.on('pageerror', (e) => failures.push(`${mode}: page error: ${e.message}`));
  }
  const shot = (page, name) => page.screenshot({ path: join(artifacts, `${mode}-${name}.png`), fullPage: true });
  const suffix = Date.now().toString(36).slice(-5);
  const ana = `ana${suffix}`;
  const ben = `ben${suffix}`;
  await register(a, base, ana);
  await shot(a, 'auth');
  await register(b, base, ben);
  for (const p of [a, b]) {
    const transport = await p.getByTestId('status').getAttribute('data-transport');
    if (transport !== mode) {
      failures.push(`${mode}: the client is on ${transport}`);
    }
  }

  // Ben follows Ana; her profile shows it.
  const follow = b.getByTestId('follow');
  await follow.locator('[name=username]').fill(ana);
  await follow.locator('button').click();
  await b.getByTestId('profile-counts').filter({ hasText: '1 followers' }).waitFor({ timeout: 20_000 });
  await shot(b, 'profile');

  // Ana posts; it arrives in Ben's feed live (no reload), and Ana hears of the follow.
  const text = `hello from ${ana} over ${mode}`;
  await a.getByTestId('compose').locator('textarea').fill(text);
  await a.getByTestId('compose').locator('button').click();
  await b.getByTestId('feed').getByText(text).waitFor({ timeout: 20_000 });
  // The follow, named.
  await a.getByTestId('notification').filter({ hasText: `@${ben}` }).first().waitFor({ timeout: 20_000 });
  await shot(b, 'feed');
  await shot(a, 'notifications');

  // Ana posts a picture (a screenshot: a real PNG); Ben's feed shows its rendition,
  // loaded from a signed URL.
  const picture = await a.screenshot();
  await a.getByTestId('compose').locator('textarea').fill(`a picture from ${ana}`);
  await a.getByTestId('compose').locator('input[type=file]').setInputFiles({
    name: 'screen.png',
    mimeType: 'image/png',
    buffer: picture,
  });
  await a.getByTestId('compose').locator('button').click();
  const img = b.getByTestId('feed').locator('img[data-testid=post-image]').first();
  await img.waitFor({ timeout: 30_000 });
  await b.waitForFunction(
    () => [...document.querySelectorAll('img[data-testid=post-image]')].some((i) => i.complete && i.naturalWidth > 0),
    null,
    { timeout: 30_000 },
  );
  await shot(b, 'feed-picture');

  // Ana writes to Ben (who follows her); it arrives live in his messages.
  const dm = `psst ${ben}, ${mode} here`;
  const chat = a.getByTestId('chat');
  await chat.locator('[name=to]').fill(ben);
  await chat.locator('[name=text]').fill(dm);
  await chat.locator('button').click();
  await b.getByTestId('messages').getByText(dm).waitFor({ timeout: 20_000 });
  await shot(b, 'messages');
  return { a, ana, text };
}

/** Ana turns on 2FA, logs out, and logs back in with a code. */
async function twoFactor({ a, ana, text }) {
  await a.getByTestId('two-factor').locator('input[type=password]').fill(`${ana} correct horse battery`);
  await a.getByTestId('two-factor').locator('button').click();
  const secret = (await a.getByTestId('totp-secret').textContent({ timeout: 20_000 })).trim();
  await a.getByTestId('two-factor').locator('input[inputmode=numeric]').fill(totp(secret));
  await a.getByTestId('two-factor').getByText('Confirm').click();
  await a.getByTestId('two-factor').getByText('Recovery codes', { exact: false }).waitFor({ timeout: 20_000 });
  await a.getByText('Log out').click();
  const login = a.getByTestId('login');
  await login.waitFor();
  await login.locator('[name=identifier]').fill(ana);
  await login.locator('[name=password]').fill(`${ana} correct horse battery`);
  await login.locator('button').click();
  await a.getByTestId('login-error').filter({ hasText: 'two-factor' }).waitFor({ timeout: 20_000 });
  // A code is good once (replays are refused): the next time step's, which the server
  // accepts as clock skew.
  await login.locator('[name=totp]').fill(totp(secret, Date.now() + 30_000));
  await login.locator('button').click();
  await a.getByTestId('compose').waitFor({ timeout: 20_000 });
  await a.getByTestId('feed').getByText(text).waitFor({ timeout: 20_000 });
  await a.screenshot({ path: join(artifacts, 'webtransport-home.png'), fullPage: true });
}

/**
 * The SDK's own resume path, in the page (the bundle `sdk.js`): Ana follows Ben's chat
 * through `ReconnectingClient` + `ChatSession`. The edge is stopped with SIGTERM
 * (`GoAway`, drain) and started again while Ben sends: both reconnect by themselves and
 * Ana receives what was sent meanwhile. Then Ana closes her session (an app sent to the
 * background), Ben sends 60 more, and Ana's next session resumes from her saved cursor:
 * exactly the 76 messages, in order, once each, the missed ones by sync.
 */
async function resume(browser, base, edge, mode, failures) {
  const ctxA = await browser.newContext({ ignoreHTTPSErrors: true });
  const ctxB = await browser.newContext({ ignoreHTTPSErrors: true });
  const [a, b] = [await ctxA.newPage(), await ctxB.newPage()];
  for (const p of [a, b]) {
    p.on('pageerror', (e) => failures.push(`resume ${mode}: page error: ${e.message}`));
    await p.goto(`${base}/`);
  }
  const suffix = Date.now().toString(36).slice(-5);
  // Registers, then opens a reconnecting session; `t` holds it for later steps.
  const open = (p, name) =>
    p.evaluate(
      async ({ name, mode }) => {
        const sdk = await import('/sdk.js');
        const c = await (await fetch('/client.json', { cache: 'no-store' })).json();
        const str = (s) => (typeof s === 'string' ? s : new TextDecoder().decode(s));
        const options = {
          url: `https://${location.hostname}:${c.quicPort}/`,
          certificateHashes: c.certificateHash === null ? [] : [c.certificateHash],
          websocketUrl: `wss://${location.host}/ws`,
          transports: [mode],
          timeoutMs: 3000,
        };
        const anon = new sdk.Selfie(await sdk.Client.connect(options));
        const r = await anon.auth.register({ username: name, email: `${name}@example.com`, password: `${name} correct horse` });
        anon.client.close();
        const tokens = { ...options, accessToken: str(r.tokens.accessToken) };
        const backoff = { baseMs: 100, maxMs: 1000 };
        const rc = await sdk.ReconnectingClient.connect(tokens, backoff);
        window.t = { sdk, str, tokens, backoff, rc, s: new sdk.Selfie(rc), texts: [], sessions: [] };
        return r.tokens.userId.toString();
      },
      { name, mode },
    );
  const anaId = await open(a, `ana${suffix}`);
  const benId = await open(b, `ben${suffix}`);
  // Ana follows Ben (his messages are not requests); Ben opens their conversation.
  await a.evaluate((id) => window.t.s.graph.follow(BigInt(id)), benId);
  const conversation = await b.evaluate(
    async (id) => (await window.t.s.chat.direct(BigInt(id))).conversation.conversationId.toString(),
    anaId,
  );
  // Ana's session: every message text, in the order the session hands them over.
  const follow = () =>
    a.evaluate(async () => {
      const t = window.t;
      const session = await t.sdk.ChatSession.start(t.rc, t.log ?? new t.sdk.ChatLog());
      t.sessions.push(session);
      void (async () => {
        for await (const u of session) {
          if (u.type === 'event' && u.event.kind === t.sdk.proto.chat.ChatEventKind.MessageCreated) {
            t.texts.push(t.str(u.event.message?.text ?? ''));
          }
        }
      })();
    });
  // Ben sends `from..to`; a send cut off by the restart is retried with its id.
  const send = (from, to) =>
    b.evaluate(
      async ({ conversation, from, to, mode }) => {
        for (let i = from; i <= to; i++) {
          for (let attempt = 0; ; attempt++) {
            try {
              await window.t.s.chat.send(BigInt(conversation), `${mode}-${i}`, `m${i}`);
              break;
            } catch (e) {
              if (attempt > 100) {
                throw e;
              }
              await new Promise((r) => setTimeout(r, 100));
            }
          }
        }
      },
      { conversation, from, to, mode },
    );
  const received = (n) => a.waitForFunction((n) => window.t.texts.length >= n, n, { timeout: 30_000 });
  await follow();
  await send(1, 5);
  await received(5);

  // The operator restarts the edge while Ben sends.
  const sending = send(6, 15);
  await stopEdge(edge);
  Object.assign(edge, await startEdge(edge));
  await sending;
  await received(15);
  const moved = await a.evaluate(() => ({ reconnects: window.t.rc.reconnects, goAways: window.t.rc.goAways }));
  if (moved.reconnects < 1 || moved.goAways < 1) {
    failures.push(`resume ${mode}: the restart was not followed: ${JSON.stringify(moved)}`);
  }

  // Ana leaves (her positions saved, as an app going to the background does), Ben
  // sends 60, Ana comes back on a new connection and resumes from the cursor.
  await a.evaluate(() => {
    const t = window.t;
    for (const s of t.sessions) {
      s.close();
    }
    t.saved = JSON.stringify(t.sessions[t.sessions.length - 1].delivered);
    t.rc.close();
  });
  await send(16, 75);
  await a.evaluate(async () => {
    const t = window.t;
    t.rc = await t.sdk.ReconnectingClient.connect(t.tokens, t.backoff);
    t.s = new t.sdk.Selfie(t.rc);
    t.log = t.sdk.ChatLog.fromJSON(JSON.parse(t.saved));
  });
  await follow();
  await received(75);
  await send(76, 76);
  await received(76);
  const got = await a.evaluate(() => ({
    texts: window.t.texts,
    stats: window.t.sessions[window.t.sessions.length - 1].stats,
  }));
  // The generated operations against the real server: history, a read receipt, the
  // conversation's unread count after it.
  const ops = await a.evaluate(async (conversation) => {
    const { sdk, s, str } = window.t;
    const id = BigInt(conversation);
    const page = await s.ops.chat.history(new sdk.proto.chat.HistoryRequestT(id, 0n, 100));
    const newest = page.messages.reduce((m, x) => (x.seq > m ? x.seq : m), 0n);
    const before = await s.ops.chat.getConversation(new sdk.proto.chat.GetConversationRequestT(id));
    await s.ops.chat.readReceipt(new sdk.proto.chat.ReadReceiptRequestT(id, newest));
    const after = await s.ops.chat.getConversation(new sdk.proto.chat.GetConversationRequestT(id));
    return {
      history: page.messages.map((m) => str(m.text)).filter((t) => t.startsWith('m')).length,
      unreadBefore: before.conversation.unreadCount,
      unreadAfter: after.conversation.unreadCount,
    };
  }, conversation);
  if (ops.history !== 76 || ops.unreadBefore !== 76 || ops.unreadAfter !== 0) {
    failures.push(`resume ${mode}: typed operations: ${JSON.stringify(ops)}`);
  }
  const want = Array.from({ length: 76 }, (_, i) => `m${i + 1}`);
  if (JSON.stringify(got.texts) !== JSON.stringify(want)) {
    failures.push(`resume ${mode}: got ${JSON.stringify(got.texts)}`);
  }
  if (got.stats.synced < 60 || got.stats.pushed < 1) {
    failures.push(`resume ${mode}: the missed messages did not come by sync: ${JSON.stringify(got.stats)}`);
  }
  console.log(`resume ${mode}: ${JSON.stringify({ ...moved, ...got.stats })}`);
  await ctxA.close();
  await ctxB.close();
}

/**
 * Media through the SDK in the page: Ana uploads a PNG drawn on a canvas (several
 * chunks, in parallel), drops her connection after the first chunk of a second upload
 * and finishes it with `uploadResume` on a new one, posts the first; Ben, who follows
 * her, downloads its `large` rendition over the session and loads its signed HTTPS URL.
 */
async function mediaFlow(browser, base, mode, failures) {
  const ctxA = await browser.newContext({ ignoreHTTPSErrors: true });
  const ctxB = await browser.newContext({ ignoreHTTPSErrors: true });
  const [a, b] = [await ctxA.newPage(), await ctxB.newPage()];
  const suffix = Date.now().toString(36).slice(-5);
  const ids = {};
  for (const [p, name] of [[a, `mia${suffix}`], [b, `max${suffix}`]]) {
    p.on('pageerror', (e) => failures.push(`media ${mode}: page error: ${e.message}`));
    await p.goto(`${base}/`);
    ids[name[1]] = await p.evaluate(
      async ({ name, mode }) => {
        const sdk = await import('/sdk.js');
        const c = await (await fetch('/client.json', { cache: 'no-store' })).json();
        const options = {
          url: `https://${location.hostname}:${c.quicPort}/`,
          certificateHashes: c.certificateHash === null ? [] : [c.certificateHash],
          websocketUrl: `wss://${location.host}/ws`,
          transports: [mode],
        };
        const anon = new sdk.Selfie(await sdk.Client.connect(options));
        const r = await anon.auth.register({ username: name, email: `${name}@example.com`, password: `${name} correct horse` });
        anon.client.close();
        const str = (s) => (typeof s === 'string' ? s : new TextDecoder().decode(s));
        const tokens = { ...options, accessToken: str(r.tokens.accessToken) };
        const rc = await sdk.ReconnectingClient.connect(tokens);
        window.t = { sdk, str, tokens, rc, s: new sdk.Selfie(rc) };
        return r.tokens.userId.toString();
      },
      { name, mode },
    );
  }
  await b.evaluate((id) => window.t.s.graph.follow(BigInt(id)), ids.i);
  const made = await a.evaluate(async () => {
    const { sdk, tokens } = window.t;
    // A noisy picture: PNG cannot squeeze it below several 64 KiB chunks.
    const png = async (seed) => {
      const canvas = new OffscreenCanvas(400, 300);
      const g = canvas.getContext('2d');
      const img = g.createImageData(400, 300);
      let x = seed;
      for (let i = 0; i < img.data.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        x >>>= 0;
        img.data[i] = i % 4 === 3 ? 255 : x & 0xff;
      }
      g.putImageData(img, 0, 0);
      return new Uint8Array(await (await canvas.convertToBlob({ type: 'image/png' })).arrayBuffer());
    };
    const kind = sdk.proto.common.MediaKind.Image;
    const first = await png(1);
    const progress = [];
    const up = await window.t.s.media.upload(kind, first, {
      mimeType: 'image/png',
      altText: 'noise',
      parallel: 3,
      onProgress: (o) => progress.push(o),
    });
    const ready = await window.t.s.media.waitReady(up.mediaId);
    const post = await window.t.s.posts.create({ text: 'a picture', mediaIds: [up.mediaId] });
    // A second upload cut off after its first chunk, finished on a new connection.
    const second = await png(2);
    const digest = [...new Uint8Array(await crypto.subtle.digest('SHA-256', second))];
    const init = await window.t.s.ops.media.uploadInit(
      new sdk.proto.media.UploadInitRequestT(kind, 'image/png', BigInt(second.length), digest, null, null),
    );
    await window.t.s.media.sendChunk(init.uploadId, 0n, second.subarray(0, init.chunkSize));
    window.t.rc.close();
    const rc = await sdk.ReconnectingClient.connect(tokens);
    const s = new sdk.Selfie(rc);
    const resumed = await s.media.uploadResume(init.uploadId, second);
    return {
      bytes: first.length,
      chunks: progress.length,
      state: ready.state,
      renditions: ready.renditions.map((r) => window.t.str(r.name)),
      post: post.postId.toString(),
      media: up.mediaId.toString(),
      resumedSize: resumed.sizeBytes.toString(),
      secondBytes: second.length,
    };
  });
  if (made.chunks < 3 || made.secondBytes < 3 * 65536 || made.state !== 2 || !made.renditions.includes('large') || made.resumedSize !== String(made.secondBytes)) {
    failures.push(`media ${mode}: upload: ${JSON.stringify(made)}`);
  }
  const seen = await b.evaluate(async (mediaId) => {
    const { s, str } = window.t;
    const id = BigInt(mediaId);
    const d = await s.media.download(id, 'large');
    const u = await s.media.url(id, 'large');
    const r = await fetch(str(u.url));
    const viaUrl = new Uint8Array(await r.arrayBuffer());
    // The original is its owner's alone.
    const original = await s.media.download(id, 'original').then(() => 'allowed', (e) => e.code);
    return {
      mime: str(d.header.mimeType),
      length: d.bytes.length,
      jpeg: d.bytes[0] === 0xff && d.bytes[1] === 0xd8,
      status: r.status,
      same: viaUrl.length === d.bytes.length && viaUrl.every((x, i) => x === d.bytes[i]),
      original,
    };
  }, made.media);
  if (!seen.jpeg || seen.status !== 200 || !seen.same || seen.length === 0 || seen.original === 'allowed') {
    failures.push(`media ${mode}: download: ${JSON.stringify(seen)}`);
  }
  console.log(`media ${mode}: ${JSON.stringify({ ...made, download: seen })}`);
  await ctxA.close();
  await ctxB.close();
}

/**
 * A session that had to fall back to the WebSocket (WebTransport failing, as where UDP is
 * blocked) returns to WebTransport by itself once it works, and keeps its subscriptions:
 * the page's `WebTransport` is replaced by one that throws, then given back.
 */
async function upgrade(browser, base, failures) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  const p = await ctx.newPage();
  p.on('pageerror', (e) => failures.push(`upgrade: page error: ${e.message}`));
  await p.goto(`${base}/`);
  const name = `up${Date.now().toString(36).slice(-5)}`;
  const seen = await p.evaluate(async (name) => {
    const sdk = await import('/sdk.js');
    const c = await (await fetch('/client.json', { cache: 'no-store' })).json();
    const str = (s) => (typeof s === 'string' ? s : new TextDecoder().decode(s));
    const options = {
      url: `https://${location.hostname}:${c.quicPort}/`,
      certificateHashes: c.certificateHash === null ? [] : [c.certificateHash],
      websocketUrl: `wss://${location.host}/ws`,
      timeoutMs: 3000,
    };
    const anon = new sdk.Selfie(await sdk.Client.connect(options));
    const r = await anon.auth.register({ username: name, email: `${name}@example.com`, password: `${name} correct horse` });
    anon.client.close();
    const Real = window.WebTransport;
    window.WebTransport = function Blocked() {
      throw new Error('blocked for the test');
    };
    const rc = await sdk.ReconnectingClient.connect({ ...options, accessToken: str(r.tokens.accessToken) });
    const before = rc.connection?.transportKind;
    const s = new sdk.Selfie(rc);
    // Live notifications, subscribed again on each connection.
    const kinds = [];
    const follow = async (conn) => {
      const sub = await conn.subscribe(sdk.proto.control.SubscriptionKind.Notifications, 0n);
      kinds.push(conn.transportKind);
      void (async () => {
        for await (const _ of sub) {
          // (Only the subscription's presence matters here.)
        }
      })();
    };
    await follow(rc.connection);
    rc.onConnect(follow);
    window.WebTransport = Real;
    const deadline = Date.now() + 30_000;
    while (rc.connection?.transportKind !== 'webtransport' && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 100));
    }
    const me = await s.users.profile({ userId: r.tokens.userId }).then((u) => str(u.profile?.user?.username ?? ""), (e) => `error ${e}`);
    return { before, after: rc.connection?.transportKind, upgrades: rc.upgrades, reconnects: rc.reconnects, kinds, me };
  }, name);
  if (seen.before !== 'websocket' || seen.after !== 'webtransport' || seen.upgrades !== 1 || seen.reconnects !== 0
    || seen.kinds.join() !== 'websocket,webtransport' || seen.me !== name) {
    failures.push(`upgrade: ${JSON.stringify(seen)}`);
  }
  console.log(`upgrade: ${JSON.stringify(seen)}`);
  await ctx.close();
}

async function run() {
  const edge = await startEdge();
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const failures = [];
  try {
    // The development certificate: the page over HTTPS needs the click-through a
    // newcomer does once; WebTransport pins the certificate's hash from /client.json.
    const base = `https://127.0.0.1:${edge.web}`;
    const first = await scenario(browser, base, 'webtransport', failures);
    await twoFactor(first);
    await scenario(browser, base, 'websocket', failures);
    await upgrade(browser, base, failures);
    await resume(browser, base, edge, 'webtransport', failures);
    await resume(browser, base, edge, 'websocket', failures);
    // The web client open since the start came back by itself after both restarts.
    await first.a.getByTestId('status').filter({ hasText: 'signed in · webtransport' }).waitFor({ timeout: 30_000 });
    const after = `still here after the restarts, ${first.ana}`;
    await first.a.getByTestId('compose').locator('textarea').fill(after);
    await first.a.getByTestId('compose').locator('button').click();
    await first.a.getByTestId('feed').getByText(after).waitFor({ timeout: 20_000 });
    await mediaFlow(browser, base, 'webtransport', failures);
    await mediaFlow(browser, base, 'websocket', failures);
  } catch (e) {
    failures.push(String(e?.stack ?? e));
    for (const [i, ctx] of browser.contexts().entries()) {
      for (const [j, p] of ctx.pages().entries()) {
        await p.screenshot({ path: join(artifacts, `failure-${i}-${j}.png`), fullPage: true }).catch(() => {});
      }
    }
  } finally {
    await browser.close();
    await stopEdge(edge);
    rmSync(edge.dir, { recursive: true, force: true });
  }
  if (failures.length > 0) {
    console.error(failures.join('\n'));
    console.error(`--- selfie serve log ---\n${edge.log().slice(-4000)}`);
    process.exit(1);
  }
  console.log(`browser tests passed (WebTransport, then the WebSocket fallback and the way back; chat resumed across a restart and media on each); screenshots in ${artifacts}`);
}

await run();
