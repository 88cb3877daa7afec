/**
 * Framing: every frame is one size-prefixed FlatBuffer (`u32` little-endian length, then
 * an `Envelope` with file identifier `SLF1`), on streams exactly as on native QUIC.
 * Datagrams carry one unprefixed `Datagram` table (identifier `SLFD`).
 */
import * as flatbuffers from 'flatbuffers';
import { Body, Envelope, EnvelopeT } from './proto.js';
import { Datagram, DatagramT } from '../../../protocol/ts/generated/selfie/datagram.js';

/** File identifier of datagrams (`selfie_protocol::DATAGRAM_IDENTIFIER`). */
const DATAGRAM_IDENTIFIER = 'SLFD';

/** The protocol's default largest frame body (the server announces its own in `Welcome`). */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024;

/** A frame the peer sent that cannot be read: the connection is no longer usable. */
export class FrameError extends Error {
  override readonly name = 'FrameError';
}

/** Encodes `env` as one size-prefixed frame. */
export function encodeEnvelope(env: EnvelopeT): Uint8Array {
  const b = new flatbuffers.Builder(256);
  const root = env.pack(b);
  Envelope.finishSizePrefixedEnvelopeBuffer(b, root);
  return b.asUint8Array();
}

/** Encodes one datagram (no size prefix: a datagram is its own frame). */
export function encodeDatagram(d: DatagramT): Uint8Array {
  const b = new flatbuffers.Builder(64);
  const root = d.pack(b);
  b.finish(root, DATAGRAM_IDENTIFIER);
  return b.asUint8Array();
}

/** Reads a datagram; `null` for one that is not a `Datagram`. */
export function decodeDatagram(bytes: Uint8Array): DatagramT | null {
  const bb = new flatbuffers.ByteBuffer(bytes);
  if (bytes.length < 8 || !bb.__has_identifier(DATAGRAM_IDENTIFIER)) {
    return null;
  }
  try {
    return Datagram.getRootAsDatagram(bb).unpack();
  } catch {
    return null;
  }
}

/** Reads one frame body (without its prefix) into the object API. */
export function decodeEnvelope(body: Uint8Array): EnvelopeT {
  const bb = new flatbuffers.ByteBuffer(body);
  if (body.length < 8 || !Envelope.bufferHasIdentifier(bb)) {
    throw new FrameError('not an Envelope');
  }
  try {
    return Envelope.getRootAsEnvelope(bb).unpack();
  } catch (e) {
    throw new FrameError(`unreadable Envelope: ${String(e)}`);
  }
}

/**
 * Reassembles frames from the chunks of a stream, whatever their boundaries; refuses a
 * frame over `maxFrameBytes` before buffering it.
 */
export class FrameReader {
  private chunks: Uint8Array[] = [];
  private buffered = 0;

  constructor(private readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {}

  /** Adds bytes read from the stream. */
  push(chunk: Uint8Array): void {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
  }

  /** Bytes held that are not yet a whole frame. */
  get pending(): number {
    return this.buffered;
  }

  /** The next whole frame's envelope, or `null` until more bytes arrive. */
  next(): EnvelopeT | null {
    if (this.buffered < 4) {
      return null;
    }
    const head = this.peek(4);
    const len = new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true);
    if (len > this.maxFrameBytes) {
      throw new FrameError(`frame of ${len} bytes is over the limit of ${this.maxFrameBytes}`);
    }
    if (this.buffered < 4 + len) {
      return null;
    }
    const whole = this.take(4 + len);
    return decodeEnvelope(whole.subarray(4));
  }

  /** The bytes held after the last whole frame (raw bytes that follow a header frame),
   * handed over and forgotten. */
  takeRest(): Uint8Array[] {
    const rest = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private peek(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      return first.subarray(0, n);
    }
    return this.gather(n, false);
  }

  private take(n: number): Uint8Array {
    return this.gather(n, true);
  }

  private gather(n: number, consume: boolean): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    let i = 0;
    while (filled < n) {
      const c = this.chunks[i];
      if (c === undefined) {
        throw new FrameError('internal: short buffer');
      }
      const part = Math.min(c.length, n - filled);
      out.set(c.subarray(0, part), filled);
      filled += part;
      if (consume) {
        if (part === c.length) {
          this.chunks.shift();
        } else {
          this.chunks[0] = c.subarray(part);
        }
      } else {
        i += 1;
      }
    }
    if (consume) {
      this.buffered -= n;
    }
    return out;
  }
}

/** Reads every frame of a stream, in order, until it ends. */
export async function* readFrames(
  stream: ReadableStream<Uint8Array>,
  maxFrameBytes: number,
): AsyncGenerator<EnvelopeT, void, undefined> {
  const reader = stream.getReader();
  const frames = new FrameReader(maxFrameBytes);
  try {
    for (;;) {
      let env = frames.next();
      while (env !== null) {
        yield env;
        env = frames.next();
      }
      const { value, done } = await reader.read();
      if (done) {
        if (frames.pending > 0) {
          throw new FrameError('stream ended inside a frame');
        }
        return;
      }
      frames.push(value);
    }
  } finally {
    reader.releaseLock();
  }
}

/** An envelope around `body`. */
export function envelope(id: bigint, bodyType: Body, body: EnvelopeT['body']): EnvelopeT {
  return new EnvelopeT(id, bodyType, body);
}
