// The NBD server: listeners (TCP and/or Unix sockets), the connection limit, and the memory
// shared by all connections. Exports come from a registry that may change while serving.
//
// CAN_MULTI_CONN: the server replies to a write only after the export's promise resolved, and an
// export that sets canMultiConn promises that flush() covers every write completed before it,
// from any connection (src/nbd/backend.ts). So a FLUSH on one connection covers the writes
// replied to on all of them, as the spec requires before the flag may be advertised.

import { lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  NBD_CONNECTIONS_MAX,
  NBD_CONNECTION_BYTES_IN_FLIGHT_MAX,
  NBD_HANDSHAKE_MS_MAX,
  NBD_HANDSHAKE_OPTIONS_MAX,
  NBD_OPTION_DATA_BYTES_MAX,
  NBD_PAYLOAD_BYTES_MAX,
  NBD_REPLY_STALL_MS_MAX,
  NBD_REQUESTS_IN_FLIGHT_MAX,
  NBD_SERVER_BYTES_IN_FLIGHT_MAX,
  NBD_SOCKET_READ_BUFFER_BYTES,
} from '../constants.ts';
import { ThinError } from '../errors.ts';
import { errorCode, type NbdExportRegistry } from './backend.ts';
import { BufferPool, ByteBudget } from './buffers.ts';
import { NbdConnection, type NbdTrafficStats } from './connection.ts';
import type { NbdExportFilter } from './export-backend.ts';
import type { NbdTls } from './tls.ts';
import type { LogSink } from '../util/log.ts';

export interface NbdServerOptions {
  registry: NbdExportRegistry;
  connectionsMax?: number;
  handshakeTimeoutMs?: number;
  replyStallTimeoutMs?: number;
  requestsInFlightMax?: number;
  connectionBytesInFlightMax?: number;
  serverBytesInFlightMax?: number;
  handshakeOptionsMax?: number;
  optionDataBytesMax?: number;
  /** Events (connections refused or cut off, TLS, I/O errors); silent when absent. */
  log?: LogSink;
  /** Wrappers around every export a connection serves, outermost first (export-backend.ts): test filters. */
  filters?: readonly NbdExportFilter[];
  /** STARTTLS with these credentials (tls.ts); without it the server speaks only in the clear. */
  tls?: NbdTls;
}

/** Where to listen: TCP (port 0 picks a free one) or a Unix socket path. */
export type NbdListenAddress = { host: string; port: number } | { path: string };

export class NbdServer {
  readonly registry: NbdExportRegistry;
  readonly #connections = new Set<NbdConnection>();
  readonly #servers: net.Server[] = [];
  readonly #buffers = new BufferPool(2 * NBD_PAYLOAD_BYTES_MAX);
  /** What every accepted socket reads into; consumed synchronously (NbdConnection.receiveTransient). */
  readonly #readBuffer = Buffer.allocUnsafe(NBD_SOCKET_READ_BUFFER_BYTES);
  readonly #budget: ByteBudget;
  readonly #connectionsMax: number;
  readonly #options: Required<Omit<NbdServerOptions, 'log' | 'registry' | 'filters' | 'tls'>>;
  readonly #tls: NbdTls | undefined;
  readonly #filters: readonly NbdExportFilter[];
  readonly #log: LogSink | undefined;
  #closing = false;
  /** Totals since the server started, for metrics. */
  readonly stats: NbdTrafficStats & { connectionsAccepted: number; connectionsRefused: number } = {
    connectionsAccepted: 0,
    connectionsRefused: 0,
    bytesReceived: 0,
    bytesSent: 0,
    tlsHandshakes: 0,
    tlsFailures: 0,
  };

  constructor(options: NbdServerOptions) {
    this.registry = options.registry;
    this.#log = options.log;
    this.#filters = options.filters ?? [];
    this.#tls = options.tls;
    this.#connectionsMax = options.connectionsMax ?? NBD_CONNECTIONS_MAX;
    this.#options = {
      connectionsMax: this.#connectionsMax,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? NBD_HANDSHAKE_MS_MAX,
      replyStallTimeoutMs: options.replyStallTimeoutMs ?? NBD_REPLY_STALL_MS_MAX,
      requestsInFlightMax: options.requestsInFlightMax ?? NBD_REQUESTS_IN_FLIGHT_MAX,
      connectionBytesInFlightMax: options.connectionBytesInFlightMax ?? NBD_CONNECTION_BYTES_IN_FLIGHT_MAX,
      serverBytesInFlightMax: options.serverBytesInFlightMax ?? NBD_SERVER_BYTES_IN_FLIGHT_MAX,
      handshakeOptionsMax: options.handshakeOptionsMax ?? NBD_HANDSHAKE_OPTIONS_MAX,
      optionDataBytesMax: options.optionDataBytesMax ?? NBD_OPTION_DATA_BYTES_MAX,
    };
    this.#budget = new ByteBudget(this.#options.serverBytesInFlightMax);
  }

  /** Starts listening; resolves with the bound address (the port, when 0 was asked for). */
  async listen(address: NbdListenAddress): Promise<NbdListenAddress> {
    // allowHalfOpen: a client may close its sending side after NBD_CMD_DISC (libnbd does) and
    // still read the replies to the requests before it.
    const server = net.createServer({ noDelay: true, allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.#accept(socket));
    server.maxConnections = this.#connectionsMax;
    const start = () =>
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        const listening = () => {
          server.off('error', reject);
          resolve();
        };
        if ('path' in address) listenPrivately(server, address.path, listening);
        else server.listen(address.port, address.host, listening);
      });
    try {
      await start();
    } catch (error) {
      // A socket file left by a server that was killed: nobody answers on it, so take it over.
      // One that answers belongs to a live server and is left alone, and so is anything that is
      // not a socket (`--socket` given a file by mistake: removing it would lose the file).
      if (!('path' in address) || errorCode(error) !== 'EADDRINUSE') throw error;
      if (!lstatSync(address.path, { throwIfNoEntry: false })?.isSocket()) {
        throw new ThinError('THIN_EXISTS', `Cannot listen on ${address.path}: it exists and is not a socket (thinbd does not remove it)`, { cause: error });
      }
      if (await socketAnswers(address.path)) throw error;
      unlinkSync(address.path);
      await start();
    }
    server.on('error', (error) => this.#log?.({ level: 'error', event: 'nbd.listener_error', message: `listener error: ${error.message}` }));
    this.#servers.push(server);
    const bound = server.address();
    if (bound !== null && typeof bound === 'object') return { host: bound.address, port: bound.port };
    return { path: typeof bound === 'string' ? bound : (address as { path: string }).path };
  }

  /**
   * Takes an accepted socket over with one read buffer shared by all connections (Node's
   * `onread`): otherwise every read allocates a new 64 KiB buffer, and at streaming rates that
   * external memory made V8 run a full mark-compact every 64 MiB received, a large share of the
   * server's CPU on 1 MiB writes; the shared buffer cut it (docs/benchmarks.md, "Figures behind
   * code decisions"). Node offers `onread` only for sockets it
   * creates, so the accepted socket's handle is wrapped in a new Socket; the accepted one,
   * paused since accept, is destroyed when the new one closes, which keeps the listener's
   * connection count right. Without a handle (not a real socket) the stream reads as usual, and
   * so it does when TLS is configured: STARTTLS hands the socket's handle to the TLS layer, which
   * must be the only reader of it.
   */
  #accept(accepted: net.Socket): void {
    const handle = (accepted as unknown as { _handle?: { useUserBuffer?: unknown } })._handle;
    let socket = accepted;
    let transientReads = false;
    let connection: NbdConnection | undefined;
    if (this.#tls === undefined && handle !== undefined && typeof handle.useUserBuffer === 'function') {
      const readBuffer = this.#readBuffer;
      socket = new net.Socket({
        handle,
        allowHalfOpen: true,
        onread: {
          buffer: readBuffer,
          callback: (bytes: number) => connection?.receiveTransient(readBuffer.subarray(0, bytes)) ?? true,
        },
      } as net.SocketConstructorOpts);
      // The accepted socket never reads or writes again; an error it might still report is the
      // wrapper's to handle, not an uncaught exception.
      accepted.on('error', () => {});
      socket.once('close', () => accepted.destroy());
      transientReads = true;
    }
    // Nagle's algorithm would hold small replies back for the client's delayed ACK.
    socket.setNoDelay(true);
    const peer = accepted.remoteAddress === undefined ? undefined : `${accepted.remoteAddress}:${accepted.remotePort}`;
    connection = this.handle(socket, { transientReads, ...(peer === undefined ? {} : { peer }) });
    socket.resume();
  }

  /**
   * Serves one client over any duplex stream (a socket, or an in-memory pair in tests).
   * Returns undefined, and closes the stream, when the server is closing or full.
   */
  handle(stream: Duplex, options: { transientReads?: boolean; peer?: string } = {}): NbdConnection | undefined {
    if (this.#closing || this.#connections.size >= this.#connectionsMax) {
      this.stats.connectionsRefused++;
      this.#log?.({
        level: 'warn',
        event: 'nbd.connection_refused',
        message: this.#closing ? 'connection refused: server closing' : `connection refused: ${this.#connectionsMax} connections open`,
        ...(options.peer === undefined ? {} : { client: options.peer }),
      });
      stream.on('error', () => {});
      stream.destroy();
      return undefined;
    }
    this.stats.connectionsAccepted++;
    const connection = new NbdConnection(stream, {
      stats: this.stats,
      transientReads: options.transientReads === true,
      registry: this.registry,
      buffers: this.#buffers,
      serverBudget: this.#budget,
      handshakeTimeoutMs: this.#options.handshakeTimeoutMs,
      replyStallTimeoutMs: this.#options.replyStallTimeoutMs,
      requestsInFlightMax: this.#options.requestsInFlightMax,
      bytesInFlightMax: this.#options.connectionBytesInFlightMax,
      handshakeOptionsMax: this.#options.handshakeOptionsMax,
      optionDataBytesMax: this.#options.optionDataBytesMax,
      filters: this.#filters,
      ...(this.#tls === undefined ? {} : { tls: this.#tls }),
      ...(options.peer === undefined ? {} : { peer: options.peer }),
      ...(this.#log === undefined ? {} : { log: this.#log }),
    });
    this.#connections.add(connection);
    void connection.closed.then(() => this.#connections.delete(connection));
    return connection;
  }

  /** Requests received and not yet answered, all connections together. */
  get requestsInFlight(): number {
    let count = 0;
    for (const connection of this.#connections) count += connection.requestsInFlight;
    return count;
  }

  /** Open connections (in handshake or transmission). */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Connections in transmission on the export with this name. */
  connectionsTo(exportName: string): NbdConnection[] {
    return [...this.#connections].filter((connection) => connection.export?.name === exportName);
  }

  /**
   * Drains and closes every connection to one export (a volume removed with --force). As in
   * close(), connections still open after `timeoutMs` are destroyed: a client stopped in the
   * middle of a WRITE payload never lets its connection drain.
   */
  async disconnectExport(exportName: string, options: { timeoutMs?: number } = {}): Promise<void> {
    await this.#drain(this.connectionsTo(exportName), options.timeoutMs, 'export disconnect timed out');
  }

  /** Payload bytes currently held for requests, all connections together (for tests and metrics). */
  get bytesInFlight(): number {
    return this.#budget.usedBytes;
  }

  /**
   * Stops accepting, lets every connection finish its in-flight requests and send their
   * replies, then closes them. Connections still open after `timeoutMs` are destroyed.
   */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    this.#closing = true;
    const listenersClosed = this.#servers.map(
      (server) => new Promise<void>((resolve) => server.close(() => resolve())),
    );
    await this.#drain([...this.#connections], options.timeoutMs, 'server close timed out');
    await Promise.all(listenersClosed);
  }

  /**
   * Soft-closes connections, destroys those not finished after `timeoutMs`, and waits until all
   * have closed. A finished connection (every reply and the end of the stream written) is closed
   * without waiting for its peer: libnbd clients (nbdfuse, nbdcopy) keep an idle connection open
   * after the server's end until they next use it, and would hold a stop for the whole timeout.
   */
  async #drain(connections: NbdConnection[], timeoutMs = this.#options.replyStallTimeoutMs, reason: string): Promise<void> {
    const drained = Promise.all(
      connections.map(async (connection) => {
        await connection.close();
        connection.release();
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        for (const connection of connections) connection.destroy(reason);
        resolve();
      }, timeoutMs);
    });
    await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    await Promise.all(connections.map((connection) => connection.closed));
  }
}

/**
 * Listens on a Unix socket that only its owner (and root) can connect to, whatever the umask: a
 * connection can read and write every export, as the pool's 0600 files can (README, "Privacy"),
 * and connecting needs write permission on the socket. The umask is narrowed around the bind,
 * which Node makes synchronously within listen(), rather than a chmod after it, which would
 * leave the socket open to others in between.
 */
function listenPrivately(server: net.Server, path: string, listening: () => void): void {
  const previous = process.umask(0o177);
  try {
    server.listen(path, listening);
  } finally {
    process.umask(previous);
  }
}

/** Whether something accepts connections on a Unix socket path. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
