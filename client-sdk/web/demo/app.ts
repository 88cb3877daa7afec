/**
 * The web client: register, log in (with 2FA), follow, post (with a picture), the home
 * feed, profiles, direct messages, notifications and the stories tray, live over one
 * WebTransport session (or the WebSocket fallback). Signed in, the session reconnects by
 * itself (`ReconnectingClient`: a drained edge, a lost network) and subscribes again;
 * messages come through `ChatSession`, so a reconnect brings exactly what was missed.
 * Plain DOM, no framework: every user-supplied string goes through `textContent` (and
 * media through signed URLs in `src`), never HTML.
 */
import {
  ChatSession,
  Client,
  type ConnectOptions,
  ErrorCode,
  ReconnectingClient,
  type Requester,
  Selfie,
  SelfieError,
  type Subscription,
  connectWithBackoff,
  proto,
} from '../src/index.js';

interface ClientJson {
  quicPort: number;
  certificateHash: string | null;
}

interface Tokens {
  userId: string;
  username: string;
  accessToken: string;
}

const app = document.getElementById('app') as HTMLElement;
const status = document.getElementById('status') as HTMLElement;
let live: Subscription[] = [];
let session: Selfie<Requester & { close(): void }> | null = null;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    e.setAttribute(k, v);
  }
  for (const c of children) {
    e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function str(s: string | Uint8Array | null | undefined): string {
  if (s === null || s === undefined) {
    return '';
  }
  return typeof s === 'string' ? s : new TextDecoder().decode(s);
}

function message(e: unknown): string {
  if (e instanceof SelfieError) {
    return e.message;
  }
  return String(e);
}

async function config(): Promise<ClientJson> {
  const r = await fetch('/client.json', { cache: 'no-store' });
  return (await r.json()) as ClientJson;
}

/** How to reach the edge: WebTransport unless the page says otherwise (`?transport=`). */
async function options(accessToken: string | null): Promise<ConnectOptions> {
  const c = await config();
  const only = new URLSearchParams(location.search).get('transport');
  return {
    url: `https://${location.hostname}:${c.quicPort}/`,
    certificateHashes: c.certificateHash === null ? [] : [c.certificateHash],
    accessToken,
    app: { name: 'selfie-web-demo', version: '0.1.0' },
    websocketUrl: `wss://${location.host}/ws`,
    transports: only === 'websocket' ? ['websocket'] : only === 'webtransport' ? ['webtransport'] : undefined,
  };
}

function showStatus(signedIn: boolean, c: Client | null): void {
  status.textContent = c === null ? 'reconnecting…' : `${signedIn ? 'signed in' : 'signed out'} · ${c.transportKind}`;
  if (c !== null) {
    status.dataset['transport'] = c.transportKind;
  }
}

/** An anonymous session (sign-up and log-in screens). */
async function connect(): Promise<Selfie> {
  const o = await options(null);
  const client = await connectWithBackoff(() => Client.connect(o), { attempts: 6 });
  showStatus(false, client);
  return new Selfie(client);
}

function saveTokens(t: proto.auth.AuthTokensT | null, username: string): Tokens {
  if (t === null) {
    throw new Error('no tokens in the answer');
  }
  const tokens: Tokens = {
    userId: t.userId.toString(),
    username,
    accessToken: str(t.accessToken),
  };
  sessionStorage.setItem('selfie.tokens', JSON.stringify(tokens));
  return tokens;
}

function authScreen(anon: Selfie): void {
  app.className = 'single';
  app.replaceChildren();
  const regError = el('p', { class: 'error', 'data-testid': 'register-error' });
  const register = el(
    'form',
    { 'data-testid': 'register' },
    el('input', { name: 'username', placeholder: 'username', autocomplete: 'username', required: '' }),
    el('input', { name: 'email', type: 'email', placeholder: 'email', required: '' }),
    el('input', { name: 'password', type: 'password', placeholder: 'password (8+ characters)', autocomplete: 'new-password', required: '' }),
    el('button', { type: 'submit' }, 'Create account'),
    regError,
  );
  register.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(register);
    const username = String(f.get('username'));
    anon.auth
      .register({ username, email: String(f.get('email')), password: String(f.get('password')) })
      .then((r) => signedIn(saveTokens(r.tokens, username)))
      .catch((e: unknown) => (regError.textContent = message(e)));
  });
  const loginError = el('p', { class: 'error', 'data-testid': 'login-error' });
  const login = el(
    'form',
    { 'data-testid': 'login' },
    el('input', { name: 'identifier', placeholder: 'username or email', autocomplete: 'username', required: '' }),
    el('input', { name: 'password', type: 'password', placeholder: 'password', autocomplete: 'current-password', required: '' }),
    el('input', { name: 'totp', placeholder: 'authenticator code (if 2FA is on)', inputmode: 'numeric', autocomplete: 'one-time-code' }),
    el('button', { type: 'submit' }, 'Log in'),
    loginError,
  );
  login.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(login);
    const identifier = String(f.get('identifier'));
    const totp = String(f.get('totp') ?? '').trim();
    anon.auth
      .login({ identifier, password: String(f.get('password')), totpCode: totp === '' ? undefined : totp })
      .then((r) => signedIn(saveTokens(r.tokens, str(r.user?.username) || identifier)))
      .catch((e: unknown) => {
        loginError.textContent =
          e instanceof SelfieError && e.code === ErrorCode.SecondFactorRequired
            ? 'This account has two-factor authentication: enter the code from your app.'
            : message(e);
      });
  });
  app.append(
    el('section', {}, el('h2', {}, 'Create an account'), register),
    el('section', {}, el('h2', {}, 'Log in'), login),
  );
}

function postItem(
  p: proto.posts.PostT,
  names: Map<bigint, string>,
  open: (userId: bigint) => void,
  picture: (mediaId: bigint) => Promise<string>,
): HTMLLIElement {
  const id = p.author?.userId ?? 0n;
  const name = str(p.author?.username) || names.get(id) || id.toString();
  const who = el('button', { class: 'link author', type: 'button' }, `@${name}`);
  who.addEventListener('click', () => open(p.author?.userId ?? 0n));
  const when = new Date(Number(p.createdAtMs)).toLocaleString();
  const item = el('li', { 'data-testid': 'post' }, who, ' ', el('span', { class: 'muted' }, when), el('p', {}, str(p.text)));
  for (const m of p.media) {
    // A signed, expiring URL to the picture for this viewer (an object without an image
    // rendition, a video, is left out); the alt text as the image's.
    const img = el('img', { alt: str(m.altText), 'data-testid': 'post-image' });
    if (m.width > 0 && m.height > 0) {
      img.setAttribute('width', String(Math.min(m.width, 480)));
    }
    item.append(img);
    picture(m.mediaId)
      .then((url) => (img.src = url))
      .catch(() => img.remove());
  }
  return item;
}

async function signedIn(tokens: Tokens): Promise<void> {
  session?.client.close();
  for (const s of live) {
    void s.close().catch(() => {});
  }
  live = [];
  let rc: ReconnectingClient;
  try {
    rc = await ReconnectingClient.connect(await options(tokens.accessToken), { attempts: 6 });
  } catch (e) {
    sessionStorage.removeItem('selfie.tokens');
    status.textContent = `could not sign in: ${message(e)}`;
    return start();
  }
  const s = new Selfie(rc);
  session = s;
  showStatus(true, rc.connection);
  // A session the edge refuses later (an expired or revoked token): sign in again.
  void rc.refused.then((e) => {
    if (session === s) {
      session = null;
      sessionStorage.removeItem('selfie.tokens');
      status.textContent = `signed out: ${message(e)}`;
      void start();
    }
  });
  app.className = '';
  app.replaceChildren();

  const feedList = el('ul', { 'data-testid': 'feed' });
  const notesList = el('ul', { 'data-testid': 'notifications' });
  const tray = el('div', { class: 'tray', 'data-testid': 'stories' });
  const profile = el('section', { 'data-testid': 'profile', hidden: '' });
  const error = el('p', { class: 'error', 'data-testid': 'error' });

  const openProfile = (userId: bigint): void => {
    s.users
      .profile({ userId })
      .then((r) => showProfile(r.profile))
      .catch((e: unknown) => (error.textContent = message(e)));
  };
  const showProfile = (p: proto.users.ProfileT | null): void => {
    if (p === null) {
      return;
    }
    profile.hidden = false;
    profile.replaceChildren(
      el('h2', {}, `@${str(p.user?.username)}`),
      el('p', {}, str(p.bio)),
      el(
        'p',
        { class: 'muted', 'data-testid': 'profile-counts' },
        `${p.postsCount} posts · ${p.followersCount} followers · ${p.followingCount} following`,
      ),
    );
  };
  const picture = async (mediaId: bigint): Promise<string> => str((await s.media.url(mediaId, 'medium')).url);
  const loadFeed = async (): Promise<void> => {
    const page = await s.feed.page({ limit: 30 });
    // Feed items name their authors by id: one lookup for the page's usernames.
    const ids = [...new Set(page.items.map((i) => i.post?.author?.userId ?? 0n).filter((id) => id !== 0n))];
    const names = new Map<bigint, string>();
    if (ids.length > 0) {
      for (const u of (await s.users.lookup({ userIds: ids })).users) {
        names.set(u.userId, str(u.username));
      }
    }
    feedList.replaceChildren(
      ...page.items.flatMap((i) => (i.post === null ? [] : [postItem(i.post, names, openProfile, picture)])),
    );
    if (page.items.length === 0) {
      feedList.append(el('li', { class: 'muted' }, 'Nothing yet: follow someone or post.'));
    }
  };
  // Usernames by id: notifications and the tray name users by id only.
  const known = new Map<bigint, string>([[BigInt(tokens.userId), tokens.username]]);
  const nameOf = async (ids: readonly bigint[]): Promise<(id: bigint) => string> => {
    const missing = [...new Set(ids)].filter((id) => id !== 0n && !known.has(id));
    if (missing.length > 0) {
      for (const u of (await s.users.lookup({ userIds: missing })).users) {
        known.set(u.userId, str(u.username));
      }
    }
    return (id) => known.get(id) ?? id.toString();
  };
  const loadNotifications = async (): Promise<void> => {
    const page = await s.notifications.list({ limit: 20 });
    const name = await nameOf(page.notifications.map((n) => n.actor?.userId ?? 0n));
    notesList.replaceChildren(
      ...page.notifications.map((n) =>
        el(
          'li',
          { 'data-testid': 'notification' },
          el('span', { class: 'author' }, `@${str(n.actor?.username) || name(n.actor?.userId ?? 0n)}`),
          ` ${proto.notifications.NotificationKind[n.kind] ?? 'activity'}`.toLowerCase(),
          n.actorsCount > 1 ? ` and ${n.actorsCount - 1} others` : '',
        ),
      ),
    );
  };
  const loadTray = async (): Promise<void> => {
    const t = await s.stories.tray();
    const name = await nameOf(t.entries.map((e) => e.author?.userId ?? 0n));
    tray.replaceChildren(
      ...t.entries.map((e) => el('span', {}, `@${str(e.author?.username) || name(e.author?.userId ?? 0n)}`)),
    );
    if (t.entries.length === 0) {
      tray.append(el('span', { class: 'muted' }, 'No stories'));
    }
  };

  const compose = el(
    'form',
    { 'data-testid': 'compose' },
    el('textarea', { name: 'text', rows: '3', placeholder: "What's happening?", required: '', maxlength: '2000' }),
    el('input', { name: 'picture', type: 'file', accept: 'image/jpeg,image/png,image/webp,image/gif' }),
    el('button', { type: 'submit' }, 'Post'),
  );
  compose.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const form = new FormData(compose);
    const text = String(form.get('text'));
    const file = form.get('picture');
    void (async () => {
      const mediaIds: bigint[] = [];
      if (file instanceof File && file.size > 0) {
        // Chunks in parallel; the post waits for the renditions.
        status.textContent = `uploading ${file.name}…`;
        const bytes = new Uint8Array(await file.arrayBuffer());
        const m = await s.media.upload(proto.common.MediaKind.Image, bytes, {
          mimeType: file.type,
          filename: file.name,
          onProgress: (offset, total) => (status.textContent = `uploading ${file.name}: ${(offset * 100n) / total}%`),
        });
        const ready = await s.media.waitReady(m.mediaId);
        showStatus(true, rc.connection);
        if (ready.state !== proto.media.MediaState.Ready) {
          throw new Error(`the picture was not accepted (${proto.media.MediaState[ready.state]})`);
        }
        mediaIds.push(m.mediaId);
      }
      await s.posts.create({ text, mediaIds });
      compose.reset();
      await loadFeed();
    })().catch((e: unknown) => (error.textContent = message(e)));
  });
  const follow = el(
    'form',
    { 'data-testid': 'follow' },
    el('input', { name: 'username', placeholder: 'username to follow', required: '' }),
    el('button', { type: 'submit' }, 'Follow'),
  );
  follow.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const username = String(new FormData(follow).get('username')).replace(/^@/, '');
    s.users
      .profile({ username })
      .then(async (r) => {
        const id = r.profile?.user?.userId ?? 0n;
        const f = await s.graph.follow(id);
        follow.reset();
        error.textContent = '';
        showProfile((await s.users.profile({ userId: id })).profile);
        return f;
      })
      .catch((e: unknown) => (error.textContent = message(e)));
  });
  // Direct messages: send to a username; every conversation's new messages, live.
  const messages = el('ul', { 'data-testid': 'messages' });
  const names = known;
  const chatForm = el(
    'form',
    { 'data-testid': 'chat' },
    el('input', { name: 'to', placeholder: 'send to (username)', required: '' }),
    el('input', { name: 'text', placeholder: 'message', required: '', maxlength: '4000' }),
    el('button', { type: 'submit' }, 'Send'),
  );
  chatForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(chatForm);
    const to = String(f.get('to')).replace(/^@/, '');
    const text = String(f.get('text'));
    s.users
      .profile({ username: to })
      .then(async (r) => {
        const id = r.profile?.user?.userId ?? 0n;
        names.set(id, to);
        const c = await s.chat.direct(id);
        const conversation = c.conversation?.conversationId ?? 0n;
        await s.chat.send(conversation, globalThis.crypto.randomUUID(), text);
        (chatForm.elements.namedItem('text') as HTMLInputElement).value = '';
      })
      .catch((e: unknown) => (error.textContent = message(e)));
  });
  const showMessage = async (m: proto.chat.MessageT): Promise<void> => {
    if (!names.has(m.senderId)) {
      for (const u of (await s.users.lookup({ userIds: [m.senderId] })).users) {
        names.set(u.userId, str(u.username));
      }
    }
    messages.append(
      el(
        'li',
        { 'data-testid': 'message' },
        el('span', { class: 'author' }, `@${names.get(m.senderId) ?? m.senderId.toString()}`),
        ` ${str(m.text)}`,
      ),
    );
  };
  const twoFactor = el('div', { 'data-testid': 'two-factor' });
  const enable = el('button', { type: 'button' }, 'Turn on two-factor authentication');
  const password = el('input', { type: 'password', placeholder: 'your password', autocomplete: 'current-password' });
  enable.addEventListener('click', () => {
    s.auth
      .totpEnroll(password.value)
      .then((r) => {
        const code = el('input', { placeholder: 'code from your app', inputmode: 'numeric' });
        const confirm = el('button', { type: 'button' }, 'Confirm');
        confirm.addEventListener('click', () => {
          s.auth
            .totpConfirm(code.value.trim())
            .then((c) =>
              twoFactor.replaceChildren(
                el('p', {}, 'Two-factor authentication is on. Recovery codes (keep them safe):'),
                el('pre', {}, c.recoveryCodes.join('\n')),
              ),
            )
            .catch((e: unknown) => (error.textContent = message(e)));
        });
        twoFactor.replaceChildren(
          el('p', {}, 'Add this secret to your authenticator app:'),
          el('code', { 'data-testid': 'totp-secret' }, str(r.secretBase32)),
          code,
          confirm,
        );
      })
      .catch((e: unknown) => (error.textContent = message(e)));
  });
  twoFactor.append(password, enable);
  const me = el('button', { class: 'link', type: 'button' }, `@${tokens.username}`);
  me.addEventListener('click', () => openProfile(BigInt(tokens.userId)));
  const logout = el('button', { class: 'link', type: 'button' }, 'Log out');
  logout.addEventListener('click', () => {
    // Revoke the session on the server before the connection goes.
    void s.auth
      .logout()
      .catch(() => {})
      .finally(() => {
        sessionStorage.removeItem('selfie.tokens');
        session = null;
        s.client.close();
        void start();
      });
  });

  app.append(
    el(
      'div',
      {},
      el('section', {}, el('h2', {}, 'Post'), compose, error),
      el('section', {}, el('h2', {}, 'Home'), feedList),
    ),
    el(
      'div',
      {},
      el('section', {}, el('h2', {}, 'You'), me, ' · ', logout, twoFactor),
      el('section', {}, el('h2', {}, 'Follow'), follow),
      profile,
      el('section', {}, el('h2', {}, 'Messages'), chatForm, messages),
      el('section', {}, el('h2', {}, 'Stories'), tray),
      el('section', {}, el('h2', {}, 'Notifications'), notesList),
    ),
  );
  await Promise.all([loadFeed(), loadNotifications(), loadTray()]).catch(
    (e: unknown) => (error.textContent = message(e)),
  );

  // Live: each event of a topic reloads what it changed; on every new connection the
  // topics are subscribed again and reloaded (what changed meanwhile).
  const followLive = async (c: Client, kind: proto.control.SubscriptionKind, reload: () => Promise<void>): Promise<void> => {
    try {
      const sub = await c.subscribe(kind);
      live.push(sub);
      for await (const _event of sub) {
        await reload();
      }
    } catch (e) {
      if (rc.connection === c) {
        error.textContent = `live updates stopped: ${message(e)}`;
      }
    }
  };
  const topics: Array<[proto.control.SubscriptionKind, () => Promise<void>]> = [
    [proto.control.SubscriptionKind.HomeFeed, loadFeed],
    [proto.control.SubscriptionKind.Notifications, loadNotifications],
    [proto.control.SubscriptionKind.StoryTray, loadTray],
  ];
  const liveOn = (c: Client): void => {
    for (const [kind, reload] of topics) {
      void followLive(c, kind, reload);
    }
    // Drained or cut off: say so until the next connection is up.
    void Promise.race([c.goAway, c.closed]).then(() => {
      if (session === s && (rc.connection === null || rc.connection === c)) {
        showStatus(true, null);
      }
    });
  };
  const first = await rc.client();
  liveOn(first);
  rc.onConnect((c) => {
    if (session !== s) {
      return;
    }
    showStatus(true, c);
    liveOn(c);
    void Promise.all(topics.map(([, reload]) => reload())).catch((e: unknown) => (error.textContent = message(e)));
  });
  // Messages: the history the device is missing, then live, and again after every
  // reconnect — each message once, in order.
  void (async () => {
    try {
      const chat = await ChatSession.start(rc);
      for await (const u of chat) {
        if (session !== s) {
          chat.close();
          return;
        }
        if (u.type === 'event') {
          const e = u.event;
          if (e.kind === proto.chat.ChatEventKind.MessageCreated && e.message !== null) {
            await showMessage(e.message);
          }
        } else {
          // Too far behind to replay: the newest page of that conversation.
          const page = await s.chat.history(u.conversationId);
          for (const m of [...page.messages].sort((a, b) => (a.seq < b.seq ? -1 : 1))) {
            await showMessage(m);
          }
        }
      }
    } catch (e) {
      error.textContent = `live messages stopped: ${message(e)}`;
    }
  })();
  app.dataset['ready'] = 'true';
}

async function start(): Promise<void> {
  app.dataset['ready'] = 'false';
  const saved = sessionStorage.getItem('selfie.tokens');
  if (saved !== null) {
    return signedIn(JSON.parse(saved) as Tokens);
  }
  try {
    authScreen(await connect());
  } catch (e) {
    status.textContent = `cannot reach the edge: ${message(e)}`;
  }
}

void start();
