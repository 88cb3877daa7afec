// Browser tests: Debian's Chromium (never a downloaded browser), driven by
// playwright-core, against a real `selfie serve` serving the built web client on its
// `[web]` HTTPS port. Two users in two browser contexts register, one follows the
// other, a post arrives live in the follower's feed; one turns on 2FA and logs back in
// with a code. Screenshots of each main screen are kept in $SELFIE_ARTIFACTS.
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

async function startEdge() {
  const [quic, ops, web] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'selfie-web-'));
  const args = [
    'serve',
    '--set', `server.data_dir="${dir}"`,
    '--set', `server.listen="127.0.0.1:${quic}"`,
    '--set', 'server.shards=2',
    '--set', `ops.listen="127.0.0.1:${ops}"`,
    '--set', `web.listen="127.0.0.1:${web}"`,
    '--set', `web.client_dir="${join(here, 'dist/app')}"`,
  ];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${ops}/readyz`);
      if (r.status === 200) {
        return { child, web, ops, dir, log: () => log };
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

async function register(page, base, name, shot) {
  await page.goto(`${base}/`);
  const form = page.getByTestId('register');
  await form.waitFor();
  if (shot) {
    await page.screenshot({ path: join(artifacts, 'auth.png'), fullPage: true });
  }
  await form.locator('[name=username]').fill(name);
  await form.locator('[name=email]').fill(`${name}@example.com`);
  await form.locator('[name=password]').fill(`${name} correct horse battery`);
  await form.locator('button').click();
  await page.getByTestId('compose').waitFor({ timeout: 20_000 });
  await page.locator('main[data-ready=true]').waitFor({ timeout: 20_000 });
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
    const base = `https://127.0.0.1:${edge.web}`;
    // The development certificate: the page over HTTPS needs the click-through a
    // newcomer does once; WebTransport pins the certificate's hash from /client.json.
    const ctxA = await browser.newContext({ ignoreHTTPSErrors: true });
    const ctxB = await browser.newContext({ ignoreHTTPSErrors: true });
    const a = await ctxA.newPage();
    const b = await ctxB.newPage();
    for (const p of [a, b]) {
      p.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
    }
    const suffix = Date.now().toString(36).slice(-5);
    const ana = `ana${suffix}`;
    const ben = `ben${suffix}`;
    await register(a, base, ana, true);
    await register(b, base, ben, false);
    const transport = await b.getByTestId('status').getAttribute('data-transport');
    if (transport !== 'webtransport') {
      failures.push(`expected WebTransport, the client is on ${transport}`);
    }

    // Ben follows Ana; her profile shows it.
    const follow = b.getByTestId('follow');
    await follow.locator('[name=username]').fill(ana);
    await follow.locator('button').click();
    await b.getByTestId('profile-counts').filter({ hasText: '1 followers' }).waitFor({ timeout: 20_000 });
    await b.screenshot({ path: join(artifacts, 'profile.png'), fullPage: true });

    // Ana posts; it arrives in Ben's feed live (no reload), and Ana hears of the follow.
    const text = `hello from ${ana} over WebTransport`;
    await a.getByTestId('compose').locator('textarea').fill(text);
    await a.getByTestId('compose').locator('button').click();
    await b.getByTestId('feed').getByText(text).waitFor({ timeout: 20_000 });
    await a.getByTestId('notification').first().waitFor({ timeout: 20_000 });
    await b.screenshot({ path: join(artifacts, 'feed.png'), fullPage: true });
    await a.screenshot({ path: join(artifacts, 'notifications.png'), fullPage: true });

    // Ana turns on 2FA, logs out, and logs back in with a code.
    a.on('dialog', (d) => void d.accept(`${ana} correct horse battery`));
    await a.getByTestId('two-factor').locator('button').click();
    const secret = await a.getByTestId('totp-secret').textContent({ timeout: 20_000 });
    await a.getByTestId('two-factor').locator('input').fill(totp(secret.trim()));
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
    await login.locator('[name=totp]').fill(totp(secret.trim(), Date.now() + 30_000));
    await login.locator('button').click();
    await a.getByTestId('compose').waitFor({ timeout: 20_000 });
    await a.getByTestId('feed').getByText(text).waitFor({ timeout: 20_000 });
    await a.screenshot({ path: join(artifacts, 'home.png'), fullPage: true });
  } catch (e) {
    failures.push(String(e?.stack ?? e));
    for (const [i, ctx] of browser.contexts().entries()) {
      for (const [j, p] of ctx.pages().entries()) {
        await p.screenshot({ path: join(artifacts, `failure-${i}-${j}.png`), fullPage: true }).catch(() => {});
      }
    }
  } finally {
    await browser.close();
    edge.child.kill('SIGTERM');
    await new Promise((r) => edge.child.once('exit', r));
    rmSync(edge.dir, { recursive: true, force: true });
  }
  if (failures.length > 0) {
    console.error(failures.join('\n'));
    console.error(`--- selfie serve log ---\n${edge.log().slice(-4000)}`);
    process.exit(1);
  }
  console.log(`browser tests passed; screenshots in ${artifacts}`);
}

await run();
