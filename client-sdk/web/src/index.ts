/**
 * `@selfie/web`: Selfie's browser SDK. Connect with `Client.connect` (WebTransport
 * first, a WebSocket fallback) or `ReconnectingClient.connect` (the same, reconnecting by
 * itself), wrap the session in `Selfie` for typed requests, iterate subscriptions with
 * `for await`, and follow chat with `ChatSession` (resumes from the device's cursor).
 */
export * as proto from './proto.js';
export {
  Client,
  ErrorCode,
  PROTOCOL_VERSION,
  SelfieError,
  Subscription,
  connectWithBackoff,
  isRetryable,
  type Backoff,
  type ConnectOptions,
  type RawSink,
} from './client.js';
export { FrameError, FrameReader, decodeDatagram, encodeDatagram, encodeEnvelope, readFrames } from './frame.js';
export { ChatLog, ChatSession, MAX_CURSOR, type Applied, type ChatSessionStats, type ChatUpdate } from './chat.js';
export { ReconnectingClient, isIdempotent, type ReconnectOptions, type Requester } from './reconnect.js';
export { type Ops } from './services.js';
export { AuthOps, ChatOps, FeedOps, GraphOps, MediaOps, NotificationsOps, PostsOps, StoriesOps, UsersOps, type Caller } from '../../../protocol/ts/generated/ops.js';
export { AuthApi, ChatApi, FeedApi, GraphApi, MAX_DOWNLOAD_BYTES, MediaApi, type Download, type UploadOptions, NotificationsApi, PostsApi, Selfie, StoriesApi, UsersApi } from './services.js';
export { certificateHash, hasWebTransport, openWebTransport, type CloseInfo, type DuplexStream, type Transport, type TransportKind } from './transport.js';
export { WebSocketStreamError, openWebSocket } from './websocket.js';
