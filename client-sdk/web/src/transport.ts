/**
 * Transports: what the session layer needs from the network, whichever carries it —
 * bidirectional request streams, the server's push streams, datagrams and a close.
 * WebTransport (HTTP/3 on the edge's QUIC port) is the one browsers use; the interface
 * is what a WebSocket fallback implements too.
 */

/** Which transport a client is on. */
export type TransportKind = 'webtransport' | 'websocket';

/** One bidirectional stream. */
export interface DuplexStream {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  /** Sends `bytes` and ends the sending side in one go, where the transport can (one
   * WebSocket message instead of two); otherwise use `writable`. */
  readonly sendLast?: (bytes: Uint8Array) => void;
}

/** How a transport ended. */
export interface CloseInfo {
  /** The application close code (the edge's `ErrorCode` number), 0 when clean. */
  readonly code: number;
  readonly reason: string;
}

/** A connection to the edge. */
export interface Transport {
  readonly kind: TransportKind;
  /** Opens a stream for one request (or the control stream, the first). */
  openStream(): Promise<DuplexStream>;
  /** The push streams the server opens, in order. */
  readonly pushStreams: ReadableStream<ReadableStream<Uint8Array>>;
  /** Sends a datagram (best effort: dropped when it does not fit or the path is busy). */
  sendDatagram(bytes: Uint8Array): Promise<void>;
  /** Datagrams from the server. */
  readonly datagrams: ReadableStream<Uint8Array>;
  /** Closes the connection. */
  close(code: number, reason: string): void;
  /** Resolves when the connection ends, however it ends. */
  readonly closed: Promise<CloseInfo>;
}

/** Hex SHA-256 of the edge's certificate as `serverCertificateHashes` wants it. */
export function certificateHash(hex: string): WebTransportHash {
  const clean = hex.replace(/[^0-9a-fA-F]/g, '');
  if (clean.length !== 64) {
    throw new Error('a certificate hash is 64 hex digits (SHA-256)');
  }
  const value = new Uint8Array(32);
  for (let i = 0; i < 32; i++) {
    value[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  }
  return { algorithm: 'sha-256', value };
}

/** Whether this runtime has WebTransport at all. */
export function hasWebTransport(): boolean {
  return typeof globalThis.WebTransport === 'function';
}

/**
 * Opens a WebTransport session to `url` (`https://host:port/`), pinning `hashes` when
 * given (development certificates: ECDSA, valid at most 14 days).
 */
export async function openWebTransport(
  url: string,
  hashes: readonly string[] = [],
  timeoutMs = 10_000,
): Promise<Transport> {
  const options: WebTransportOptions = {};
  if (hashes.length > 0) {
    options.serverCertificateHashes = hashes.map(certificateHash);
  }
  const wt = new WebTransport(url, options);
  // A session that never becomes ready (UDP blocked) must not hang the caller.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('WebTransport timed out')), timeoutMs);
  });
  try {
    await Promise.race([wt.ready, timeout]);
  } catch (e) {
    try {
      wt.close();
    } catch {
      // Already failed.
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const closed: Promise<CloseInfo> = wt.closed.then(
    (info) => ({ code: info.closeCode ?? 0, reason: info.reason ?? '' }),
    (e: unknown) => ({ code: errorCodeOf(e), reason: String(e) }),
  );
  const writer = wt.datagrams.writable.getWriter();
  return {
    kind: 'webtransport',
    async openStream() {
      const s = await wt.createBidirectionalStream();
      return { readable: s.readable, writable: s.writable };
    },
    pushStreams: wt.incomingUnidirectionalStreams,
    async sendDatagram(bytes) {
      await writer.ready;
      await writer.write(bytes);
    },
    datagrams: wt.datagrams.readable,
    close(code, reason) {
      try {
        wt.close({ closeCode: code, reason });
      } catch {
        // Already closed.
      }
    },
    closed,
  };
}

/** The application error code of a WebTransport error, 0 when it has none. */
function errorCodeOf(e: unknown): number {
  if (typeof e === 'object' && e !== null && 'streamErrorCode' in e) {
    const code = (e as { streamErrorCode: unknown }).streamErrorCode;
    return typeof code === 'number' ? code : 0;
  }
  return 0;
}
