/**
 * Typed requests, one namespace per service the edge serves. Each method builds the
 * generated request object, sends it, and returns the typed answer (or throws the
 * server's `SelfieError`). Anything not wrapped here is one `Client.request` away with
 * the generated types.
 */
import { Body, EnvelopeT, auth, chat, common, control, feed, graph, media, notifications, posts, stories, users } from './proto.js';
import { ErrorCode, SelfieError } from './client.js';
import type { Client } from './client.js';
import type { Requester } from './reconnect.js';
import { allOps, type Caller } from '../../../protocol/ts/generated/ops.js';

type Ctor<T> = abstract new (...args: never[]) => T;

/** Sends `body` and returns the answer's op when it is a `T`. */
async function answer<T>(client: Requester, bodyType: Body, body: EnvelopeT['body'], want: Ctor<T>): Promise<T> {
  const env = await client.request(bodyType, body);
  const b = env.body as { op?: unknown } | null;
  if (b === null || !(b.op instanceof want)) {
    throw new SelfieError(ErrorCode.UnexpectedMessage, `expected ${want.name}`);
  }
  return b.op;
}

/** The generated operations' `Caller` over a session: typed answers, `Ack` checked. */
function caller(r: Requester): Caller {
  return {
    async call<T>(bodyType: Body, body: EnvelopeT['body'], want: Ctor<T> | null): Promise<T> {
      if (want !== null) {
        return answer(r, bodyType, body, want);
      }
      const env = await r.request(bodyType, body);
      const c = env.body;
      if (env.bodyType !== Body.Control || !(c instanceof control.ControlT) || !(c.op instanceof control.AckT)) {
        throw new SelfieError(ErrorCode.UnexpectedMessage, 'expected Ack');
      }
      return undefined as T;
    },
  };
}

/** Every operation the edge serves, one typed method each (generated from the schemas'
 * `answer` marks): `s.ops.chat.history(new proto.chat.HistoryRequestT(id, 0n, 50))`. */
export type Ops = ReturnType<typeof allOps>;

/** Sends `body` for an answer without content (`control.Ack`). */
async function ack(client: Requester, bodyType: Body, body: EnvelopeT['body']): Promise<void> {
  await client.request(bodyType, body);
}

function page(cursor: readonly number[] | null, limit: number): common.PageRequestT {
  return new common.PageRequestT(cursor === null ? [] : [...cursor], limit);
}

function webDevice(name: string): auth.DeviceInfoT {
  return new auth.DeviceInfoT(name, common.Platform.Web, null);
}

/** Accounts: registration, login (with a second factor), tokens, sessions, 2FA. */
export class AuthApi {
  constructor(private readonly c: Requester) {}

  private call<T>(opType: auth.AuthOp, op: auth.AuthT['op'], want: Ctor<T>): Promise<T> {
    return answer(this.c, Body.Auth, new auth.AuthT(opType, op), want);
  }

  register(r: { username: string; email: string; password: string; device?: string }): Promise<auth.RegisterResponseT> {
    const req = new auth.RegisterRequestT(r.username, r.email, r.password, webDevice(r.device ?? 'browser'));
    return this.call(auth.AuthOp.RegisterRequest, req, auth.RegisterResponseT);
  }

  /** Logs in; with 2FA on, pass `totpCode` (or a `recoveryCode`), else `TotpRequired`. */
  login(r: {
    identifier: string;
    password: string;
    totpCode?: string;
    recoveryCode?: string;
    device?: string;
  }): Promise<auth.LoginResponseT> {
    const req = new auth.LoginRequestT(
      r.identifier,
      r.password,
      r.totpCode ?? null,
      r.recoveryCode ?? null,
      webDevice(r.device ?? 'browser'),
    );
    return this.call(auth.AuthOp.LoginRequest, req, auth.LoginResponseT);
  }

  refresh(refreshToken: string): Promise<auth.RefreshResponseT> {
    return this.call(auth.AuthOp.RefreshRequest, new auth.RefreshRequestT(refreshToken), auth.RefreshResponseT);
  }

  logout(): Promise<void> {
    return ack(this.c, Body.Auth, new auth.AuthT(auth.AuthOp.LogoutRequest, new auth.LogoutRequestT()));
  }

  /** Starts TOTP enrolment: the secret and an `otpauth://` URI for an authenticator app. */
  totpEnroll(password: string): Promise<auth.TotpEnrollResponseT> {
    return this.call(auth.AuthOp.TotpEnrollRequest, new auth.TotpEnrollRequestT(password), auth.TotpEnrollResponseT);
  }

  /** Confirms TOTP with a first code; returns the one-time recovery codes. */
  totpConfirm(code: string): Promise<auth.TotpConfirmResponseT> {
    return this.call(auth.AuthOp.TotpConfirmRequest, new auth.TotpConfirmRequestT(code), auth.TotpConfirmResponseT);
  }

  sessions(): Promise<auth.SessionsListResponseT> {
    return this.call(auth.AuthOp.SessionsListRequest, new auth.SessionsListRequestT(), auth.SessionsListResponseT);
  }
}

/** Profiles. */
export class UsersApi {
  constructor(private readonly c: Requester) {}

  /** A profile by id or by username. */
  profile(who: { userId: bigint } | { username: string }): Promise<users.GetProfileResponseT> {
    const req =
      'userId' in who ? new users.GetProfileRequestT(who.userId, null) : new users.GetProfileRequestT(0n, who.username);
    return answer(this.c, Body.Users, new users.UsersT(users.UsersOp.GetProfileRequest, req), users.GetProfileResponseT);
  }

  /** Summaries (username, display name, avatar) of many users at once. */
  lookup(r: { userIds?: readonly bigint[]; usernames?: readonly string[] }): Promise<users.LookupUsersResponseT> {
    const req = new users.LookupUsersRequestT([...(r.userIds ?? [])], [...(r.usernames ?? [])]);
    return answer(this.c, Body.Users, new users.UsersT(users.UsersOp.LookupUsersRequest, req), users.LookupUsersResponseT);
  }
}

/** The follow graph. */
export class GraphApi {
  constructor(private readonly c: Requester) {}

  /** Follows (or asks to follow a private account: see the returned state). */
  follow(userId: bigint): Promise<graph.FollowResponseT> {
    const req = new graph.FollowRequestT(userId);
    return answer(this.c, Body.Graph, new graph.GraphT(graph.GraphOp.FollowRequest, req), graph.FollowResponseT);
  }

  unfollow(userId: bigint): Promise<void> {
    const req = new graph.UnfollowRequestT(userId);
    return ack(this.c, Body.Graph, new graph.GraphT(graph.GraphOp.UnfollowRequest, req));
  }

  /** Relationships with each of `userIds` (following, followed by, blocked, ...). */
  relationships(userIds: readonly bigint[]): Promise<graph.RelationshipsResponseT> {
    const req = new graph.RelationshipsRequestT([...userIds]);
    return answer(
      this.c,
      Body.Graph,
      new graph.GraphT(graph.GraphOp.RelationshipsRequest, req),
      graph.RelationshipsResponseT,
    );
  }
}

/** Posts. */
export class PostsApi {
  constructor(private readonly c: Requester) {}

  /** Publishes a post; a retry with the same `idempotencyKey` returns the first one. */
  async create(r: {
    text: string;
    audience?: common.Audience;
    mediaIds?: readonly bigint[];
    idempotencyKey?: string;
  }): Promise<posts.PostT> {
    const req = new posts.CreatePostRequestT(
      r.text,
      [...(r.mediaIds ?? [])],
      r.audience ?? common.Audience.Public,
      posts.ReplyPolicy.Everyone,
      0n,
      null,
      false,
      r.idempotencyKey ?? (globalThis.crypto?.randomUUID?.() ?? null),
    );
    const res = await answer(this.c, Body.Posts, new posts.PostsT(posts.PostsOp.CreatePostRequest, req), posts.PostResponseT);
    if (res.post === null) {
      throw new SelfieError(ErrorCode.UnexpectedMessage, 'no post in the answer');
    }
    return res.post;
  }

  get(postId: bigint): Promise<posts.PostResponseT> {
    const req = new posts.GetPostRequestT(postId);
    return answer(this.c, Body.Posts, new posts.PostsT(posts.PostsOp.GetPostRequest, req), posts.PostResponseT);
  }
}

/** Timelines. */
export class FeedApi {
  constructor(private readonly c: Requester) {}

  /** One page of a feed (home by default), newest first; pass the last page's cursor. */
  page(r: { kind?: feed.FeedKind; targetId?: bigint; cursor?: readonly number[] | null; limit?: number } = {}): Promise<feed.FeedPageT> {
    const req = new feed.FeedPageRequestT(
      r.kind ?? feed.FeedKind.Home,
      r.targetId ?? 0n,
      null,
      page(r.cursor ?? null, r.limit ?? 20),
    );
    return answer(this.c, Body.Feed, new feed.FeedT(feed.FeedOp.FeedPageRequest, req), feed.FeedPageT);
  }
}

/** In-app notifications. */
export class NotificationsApi {
  constructor(private readonly c: Requester) {}

  list(r: { unreadOnly?: boolean; cursor?: readonly number[] | null; limit?: number } = {}): Promise<notifications.NotificationsPageT> {
    const req = new notifications.NotificationsListRequestT(r.unreadOnly ?? false, page(r.cursor ?? null, r.limit ?? 20));
    return answer(
      this.c,
      Body.Notifications,
      new notifications.NotificationsT(notifications.NotificationsOp.NotificationsListRequest, req),
      notifications.NotificationsPageT,
    );
  }
}

/** Stories. */
export class StoriesApi {
  constructor(private readonly c: Requester) {}

  /** The tray: followed accounts with live stories, unseen first. */
  tray(): Promise<stories.StoryTrayT> {
    const req = new stories.StoryTrayRequestT(page(null, 50));
    return answer(this.c, Body.Stories, new stories.StoriesT(stories.StoriesOp.StoryTrayRequest, req), stories.StoryTrayT);
  }
}

/** Chat. */
export class ChatApi {
  constructor(private readonly c: Requester) {}

  /** The direct conversation with `userId` (created on first use). */
  direct(userId: bigint): Promise<chat.ConversationResponseT> {
    const req = new chat.CreateConversationRequestT(chat.ConversationKind.Direct, [userId]);
    return answer(
      this.c,
      Body.Chat,
      new chat.ChatT(chat.ChatOp.CreateConversationRequest, req),
      chat.ConversationResponseT,
    );
  }

  /** Sends a text; `clientMsgId` makes a retry exactly-once. */
  send(conversationId: bigint, clientMsgId: string, text: string): Promise<chat.SendMessageResponseT> {
    const req = new chat.SendMessageRequestT(conversationId, clientMsgId, chat.MessageKind.Text, text);
    return answer(this.c, Body.Chat, new chat.ChatT(chat.ChatOp.SendMessageRequest, req), chat.SendMessageResponseT);
  }

  /**
   * Catches up from a device's cursor (`ChatLog.cursor()`): every conversation, or only
   * `conversationId`. `ChatSession` runs this on every connection.
   */
  sync(sinceCursor: readonly number[], conversationId = 0n, limit = 500): Promise<chat.SyncResponseT> {
    const req = new chat.SyncRequestT([...sinceCursor], limit, conversationId);
    return answer(this.c, Body.Chat, new chat.ChatT(chat.ChatOp.SyncRequest, req), chat.SyncResponseT);
  }

  /** Marks `conversationId` read up to `upToSeq` (a read receipt to the members). */
  read(conversationId: bigint, upToSeq: bigint): Promise<void> {
    const req = new chat.ReadReceiptRequestT(conversationId, upToSeq);
    return ack(this.c, Body.Chat, new chat.ChatT(chat.ChatOp.ReadReceiptRequest, req));
  }

  /** Messages before `beforeSeq` (0: the newest). */
  history(conversationId: bigint, beforeSeq = 0n, limit = 50): Promise<chat.MessagesPageT> {
    const req = new chat.HistoryRequestT(conversationId, beforeSeq, limit);
    return answer(this.c, Body.Chat, new chat.ChatT(chat.ChatOp.HistoryRequest, req), chat.MessagesPageT);
  }
}

/** What `MediaApi.upload` may be told. */
export interface UploadOptions {
  readonly mimeType?: string;
  readonly filename?: string;
  readonly altText?: string;
  /** Chunks in flight at once (default 4), each on its own stream. */
  readonly parallel?: number;
  /** Called as chunks are stored: the server's durable offset, and the total. */
  readonly onProgress?: (offset: bigint, total: bigint) => void;
  /** Called once the upload exists: keep `uploadId` to `uploadResume` after a failure
   * (a lost connection, a reload). */
  readonly onInit?: (status: media.UploadStatusT) => void;
}

/** Chunks in flight at most, whatever `parallel` asks. */
const MAX_PARALLEL = 16;
/** The chunk sizes a server may set (its `media.chunk_bytes` bounds). */
const MIN_CHUNK = 64 * 1024;
const MAX_CHUNK = 16 << 20;
/** The largest download kept in memory unless `download` is told more. */
export const MAX_DOWNLOAD_BYTES = 256 << 20;

/** A download: the header (type, size, range) and the bytes. */
export interface Download {
  readonly header: media.DownloadHeaderT;
  readonly bytes: Uint8Array;
}

async function sha256(bytes: Uint8Array): Promise<number[]> {
  return [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))];
}

function mediaOp<T>(env: EnvelopeT, want: Ctor<T>): T {
  const b = env.body;
  if (!(b instanceof media.MediaT) || !(b.op instanceof want)) {
    throw new SelfieError(ErrorCode.UnexpectedMessage, `expected ${want.name}`);
  }
  return b.op;
}

/**
 * Media: resumable chunked uploads (each chunk on its own stream with its SHA-256, a
 * few in parallel; `uploadResume` goes on from the server's durable offset after a
 * lost connection or a reload), objects, signed HTTPS URLs for `<img>`, and ranged
 * downloads over the session.
 */
export class MediaApi {
  constructor(private readonly c: Requester) {}

  private call<T>(opType: media.MediaOp, op: media.MediaT['op'], want: Ctor<T>): Promise<T> {
    return answer(this.c, Body.Media, new media.MediaT(opType, op), want);
  }

  /** Uploads `bytes` as a new object: init, chunks, complete. The object is then
   * `Processing` (renditions being made), then `Ready` (see `waitReady`). */
  async upload(kind: common.MediaKind, bytes: Uint8Array, options: UploadOptions = {}): Promise<media.MediaInfoT> {
    const req = new media.UploadInitRequestT(
      kind,
      options.mimeType ?? null,
      BigInt(bytes.length),
      await sha256(bytes),
      options.filename ?? null,
      options.altText ?? null,
    );
    const status = await this.call(media.MediaOp.UploadInitRequest, req, media.UploadStatusT);
    options.onInit?.(status);
    return this.sendFrom(status, bytes, options);
  }

  /** Goes on with upload `uploadId` of `bytes` from what the server already holds. */
  async uploadResume(uploadId: bigint, bytes: Uint8Array, options: UploadOptions = {}): Promise<media.MediaInfoT> {
    const status = await this.call(
      media.MediaOp.UploadResumeRequest,
      new media.UploadResumeRequestT(uploadId),
      media.UploadStatusT,
    );
    return this.sendFrom(status, bytes, options);
  }

  /** Sends one chunk (`UploadChunkHeader` then its bytes) on its own stream. */
  async sendChunk(uploadId: bigint, offset: bigint, bytes: Uint8Array): Promise<media.UploadStatusT> {
    const header = new media.UploadChunkHeaderT(uploadId, offset, bytes.length, await sha256(bytes));
    const env = await this.c.rawRequest(
      Body.Media,
      new media.MediaT(media.MediaOp.UploadChunkHeader, header),
      bytes,
      null,
    );
    return mediaOp(env, media.UploadStatusT);
  }

  private async sendFrom(status: media.UploadStatusT, bytes: Uint8Array, options: UploadOptions): Promise<media.MediaInfoT> {
    const total = BigInt(bytes.length);
    if (status.sizeBytes !== total) {
      throw new SelfieError(ErrorCode.InvalidArgument, 'the upload does not match its bytes');
    }
    // Chunks of at least the server's smallest size (a small object: one chunk).
    const small = status.chunkSize < MIN_CHUNK && BigInt(status.chunkSize) < total;
    if (status.chunkSize === 0 || small || status.chunkSize > MAX_CHUNK || status.offset > total) {
      throw new SelfieError(ErrorCode.UnexpectedMessage, 'the server asked for chunks out of bounds');
    }
    const chunk = BigInt(status.chunkSize);
    const offsets: bigint[] = [];
    for (let o = (status.offset / chunk) * chunk; o < total; o += chunk) {
      offsets.push(o);
    }
    // A few chunks in flight: each worker takes the next offset; the first failure
    // stops the others (what is stored stays: `uploadResume` goes on from there).
    const parallel = Math.min(MAX_PARALLEL, Math.max(1, Math.floor(options.parallel ?? 4) || 1));
    let failed = false;
    const workers = Array.from({ length: parallel }, async () => {
      for (let o = offsets.shift(); o !== undefined && !failed; o = offsets.shift()) {
        const end = o + chunk < total ? o + chunk : total;
        try {
          const s = await this.sendChunk(status.uploadId, o, bytes.subarray(Number(o), Number(end)));
          options.onProgress?.(s.offset, total);
        } catch (e) {
          failed = true;
          throw e;
        }
      }
    });
    await Promise.all(workers);
    // Several uploads finishing at once may be told `Overloaded`: back off and retry
    // for up to half a minute.
    const digest = await sha256(bytes);
    const deadline = Date.now() + 30_000;
    for (let wait = 50; ; wait = Math.min(wait * 2, 2000)) {
      try {
        const r = await this.call(
          media.MediaOp.UploadCompleteRequest,
          new media.UploadCompleteRequestT(status.uploadId, digest),
          media.MediaInfoResponseT,
        );
        if (r.media === null) {
          throw new SelfieError(ErrorCode.UnexpectedMessage, 'no object in the answer');
        }
        return r.media;
      } catch (e) {
        if (!(e instanceof SelfieError) || e.code !== ErrorCode.Overloaded || Date.now() + wait > deadline) {
          throw e;
        }
        await new Promise((r) => setTimeout(r, Math.max(wait, e.retryAfterMs)));
      }
    }
  }

  /** An object, as this user may see it. */
  async get(mediaId: bigint): Promise<media.MediaInfoT> {
    const r = await this.call(media.MediaOp.GetMediaRequest, new media.GetMediaRequestT(mediaId), media.MediaInfoResponseT);
    if (r.media === null) {
      throw new SelfieError(ErrorCode.UnexpectedMessage, 'no object in the answer');
    }
    return r.media;
  }

  /** Polls until the object is `Ready` (renditions made), `Failed` or `Rejected`. */
  async waitReady(mediaId: bigint, timeoutMs = 60_000): Promise<media.MediaInfoT> {
    const until = Date.now() + timeoutMs;
    for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
      const m = await this.get(mediaId);
      if (m.state !== media.MediaState.Uploading && m.state !== media.MediaState.Processing) {
        return m;
      }
      if (Date.now() + wait > until) {
        throw new SelfieError(ErrorCode.Timeout, 'the object is still being processed');
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /** A signed, expiring HTTPS URL to a rendition, for `<img src>` (`large`, `small`...). */
  url(mediaId: bigint, rendition: string): Promise<media.MediaUrlResponseT> {
    return this.call(media.MediaOp.MediaUrlRequest, new media.MediaUrlRequestT(mediaId, rendition), media.MediaUrlResponseT);
  }

  /**
   * Downloads bytes `start..end` (`end` 0n: to the end) of `rendition` (`''`: the
   * original, for its owner) over the session, into memory: at most `maxBytes` (an
   * answer announcing more, or sending more than it announced, is refused).
   */
  async download(mediaId: bigint, rendition = '', start = 0n, end = 0n, maxBytes = MAX_DOWNLOAD_BYTES): Promise<Download> {
    let header: media.DownloadHeaderT | null = null;
    let bytes = new Uint8Array(0);
    let size = 0;
    const env = await this.c.rawRequest(
      Body.Media,
      new media.MediaT(media.MediaOp.DownloadRequest, new media.DownloadRequestT(mediaId, rendition, start, end)),
      null,
      {
        header: (env) => {
          const h = mediaOp(env, media.DownloadHeaderT);
          const asked = end === 0n ? null : end - start;
          if (h.mediaId !== mediaId || h.rangeStart !== start || h.length > BigInt(maxBytes) || (asked !== null && h.length > asked)) {
            throw new SelfieError(ErrorCode.UnexpectedMessage, 'the download is not the one asked for');
          }
          header = h;
          bytes = new Uint8Array(Number(h.length));
        },
        bytes: (b) => {
          if (size + b.length > bytes.length) {
            throw new SelfieError(ErrorCode.UnexpectedMessage, 'more bytes than the download announced');
          }
          bytes.set(b, size);
          size += b.length;
        },
      },
    );
    const h = header ?? mediaOp(env, media.DownloadHeaderT);
    if (size !== bytes.length) {
      throw new SelfieError(ErrorCode.Unavailable, `the download ended at ${size} of ${h.length} bytes`);
    }
    return { header: h, bytes };
  }

  /** Deletes an object (its uses end with it). */
  delete(mediaId: bigint): Promise<void> {
    return ack(this.c, Body.Media, new media.MediaT(media.MediaOp.DeleteMediaRequest, new media.DeleteMediaRequestT(mediaId)));
  }
}

/** Every service's typed requests over one session (a `Client`, or a
 * `ReconnectingClient` whose requests follow its reconnects). */
export class Selfie<C extends Requester = Client> {
  readonly auth: AuthApi;
  readonly users: UsersApi;
  readonly graph: GraphApi;
  readonly posts: PostsApi;
  readonly feed: FeedApi;
  readonly notifications: NotificationsApi;
  readonly stories: StoriesApi;
  readonly chat: ChatApi;
  readonly media: MediaApi;
  /** Every operation of every service the edge serves, typed by its answer. */
  readonly ops: Ops;

  constructor(readonly client: C) {
    this.ops = allOps(caller(client));
    this.auth = new AuthApi(client);
    this.users = new UsersApi(client);
    this.graph = new GraphApi(client);
    this.posts = new PostsApi(client);
    this.feed = new FeedApi(client);
    this.notifications = new NotificationsApi(client);
    this.stories = new StoriesApi(client);
    this.chat = new ChatApi(client);
    this.media = new MediaApi(client);
  }

  /** Live events of a topic. */
  subscribe(kind: control.SubscriptionKind, targetId = 0n) {
    return this.client.subscribe(kind, targetId);
  }
}
