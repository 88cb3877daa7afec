/**
 * The generated FlatBuffers code (`protocol/ts/generated`, object API), re-exported by
 * namespace: `proto.auth.LoginRequestT`, `proto.control.SubscriptionKind`, ...
 */
export * from '../../../protocol/ts/generated/selfie.js';
export { IDEMPOTENT } from '../../../protocol/ts/generated/idempotent.js';
