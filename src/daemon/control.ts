// The control socket: how `thinbd` commands reach a pool that `thinbd serve` owns. One Unix socket
// in the pool directory; each request and each response is one line of JSON:
//   request  { "id": 7, "method": "createVolume", "params": { ... } }
//   response { "id": 7, "result": ... }  or  { "id": 7, "error": { "code": "THIN_EXISTS", "message": "..." } }
// Only the owner of the pool lock listens, so a socket file left by a killed server refuses
// connections (ECONNREFUSED) and the next server removes it.
//
// The socket can change every volume, so it is the owner's alone: created 0600, and a peer whose
// uid (SO_PEERCRED, told by the kernel) is neither the server's nor root is refused and logged,
// even if someone loosens the socket file's mode.
import type { Server, Socket } from 'node:net';
import { chmodSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { PoolService, ServiceSession } from './service.ts';
import { errorFromWire } from './service.ts';
import { ThinError } from '../errors.ts';
import { peerCredentials } from '../io/peer-credentials.ts';
import { PRIVATE_FILE_MODE } from '../io/private.ts';
import { CONTROL_REQUEST_BYTES_MAX, CONTROL_CONNECT_TIMEOUT_MS } from '../constants.ts';
import type { LogSink } from '../util/log.ts';

export const CONTROL_SOCKET_NAME = 'control.sock';

/**
 * node:net, loaded when a socket is made: every command that opens a pool loads this module to
 * look for a server, and most find none (docs/benchmarks.md "Command start-up").
 */
const net = (): typeof import('node:net') => process.getBuiltinModule('node:net');

export function controlSocketPath(poolDir: string): string {
  return join(poolDir, CONTROL_SOCKET_NAME);
}

const methods = ['createVolume', 'snapshot', 'setLabels', 'removeVolume', 'resizeVolume', 'listVolumes', 'status', 'check', 'pinGeneration', 'scrub', 'setSpace', 'resizePool'] as const;
type Method = (typeof methods)[number];

export class ControlServer {
  #server: Server;
  #sockets = new Set<Socket>();
  readonly socketPath: string;

  private constructor(server: Server, socketPath: string) {
    this.#server = server;
    this.socketPath = socketPath;
  }

  /** Listens on socketPath (removing a stale socket file: the caller holds the pool lock). */
  static async listen(socketPath: string, service: PoolService, log: LogSink = () => {}): Promise<ControlServer> {
    rmSync(socketPath, { force: true });
    const server = net().createServer();
    const control = new ControlServer(server, socketPath);
    server.on('connection', (socket) => {
      const refusal = refusePeer(socket);
      if (refusal !== undefined) {
        log({ level: 'warn', event: 'control.refused', message: `control socket: refused ${refusal}` });
        socket.destroy();
        return;
      }
      control.#serve(socket, service);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(socketPath, PRIVATE_FILE_MODE);
    return control;
  }

  #serve(socket: Socket, service: PoolService): void {
    this.#sockets.add(socket);
    // What the connection's requests hold (pins) ends with it, however it ends.
    const releases: Array<() => void> = [];
    const session: ServiceSession = { onClose: (release) => (socket.destroyed ? release() : releases.push(release)) };
    socket.on('close', () => {
      this.#sockets.delete(socket);
      for (const release of releases.splice(0)) release();
    });
    socket.on('error', () => socket.destroy());
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      buffered += text;
      if (buffered.length > CONTROL_REQUEST_BYTES_MAX) {
        socket.end(`${JSON.stringify({ id: null, error: { code: 'THIN_INVALID', message: 'control request too large' } })}\n`);
        return;
      }
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        void this.#answer(socket, line, service, session);
      }
    });
  }

  async #answer(socket: Socket, line: string, service: PoolService, session: ServiceSession): Promise<void> {
    let id: unknown = null;
    try {
      const request = JSON.parse(line) as { id?: unknown; method?: unknown; params?: unknown };
      id = request.id ?? null;
      if (typeof request.method !== 'string' || !(methods as readonly string[]).includes(request.method)) {
        throw new ThinError('THIN_INVALID', `Unknown control method ${JSON.stringify(request.method)}`);
      }
      const method = request.method as Method;
      const params = (request.params ?? {}) as never;
      const result = await (service[method] as (params: never, session: ServiceSession) => Promise<unknown>).call(service, params, session);
      socket.write(`${JSON.stringify({ id, result: result ?? null })}\n`);
    } catch (error) {
      const code = error instanceof ThinError ? error.code : 'THIN_IO';
      const message = error instanceof Error ? error.message : String(error);
      if (!socket.destroyed) socket.write(`${JSON.stringify({ id, error: { code, message } })}\n`);
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      for (const socket of this.#sockets) socket.destroy();
    });
    rmSync(this.socketPath, { force: true });
  }
}

/** Why a connection is refused (its peer is neither this process's user nor root), or undefined. */
function refusePeer(socket: Socket): string | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  const peer = fd === undefined || fd < 0 ? undefined : peerCredentials(fd);
  if (peer === undefined) return 'a connection whose peer credentials the kernel did not give';
  const owner = process.getuid?.() ?? 0;
  if (peer.uid === owner || peer.uid === 0) return undefined;
  return `a connection from uid ${peer.uid} (pid ${peer.pid}): only uid ${owner} and root may use it`;
}

/** A PoolService that forwards every call to a live server; undefined when none answers. */
export async function connectControl(socketPath: string): Promise<PoolService | undefined> {
  const socket = await new Promise<Socket | undefined>((resolve) => {
    const connection = net().createConnection(socketPath);
    const timer = setTimeout(() => {
      connection.destroy();
      resolve(undefined);
    }, CONTROL_CONNECT_TIMEOUT_MS);
    connection.once('connect', () => {
      clearTimeout(timer);
      resolve(connection);
    });
    connection.once('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
  if (!socket) return undefined;
  return new RemotePoolService(socket);
}

class RemotePoolService implements PoolService {
  #socket: Socket;
  #nextId = 1;
  #pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();

  constructor(socket: Socket) {
    this.#socket = socket;
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      buffered += text;
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        const response = JSON.parse(line) as { id: number; result?: unknown; error?: { code?: string; message?: string } };
        const waiter = this.#pending.get(response.id);
        if (!waiter) continue;
        this.#pending.delete(response.id);
        if (response.error) waiter.reject(errorFromWire(response.error));
        else waiter.resolve(response.result);
      }
    });
    const failAll = (): void => {
      for (const waiter of this.#pending.values()) {
        waiter.reject(new ThinError('THIN_IO', 'The thinbd server closed the control connection'));
      }
      this.#pending.clear();
    };
    socket.on('close', failAll);
    socket.on('error', failAll);
  }

  #call<T>(method: Method, params: unknown = {}): Promise<T> {
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.#socket.write(`${JSON.stringify({ id, method, params })}\n`);
    });
  }

  createVolume: PoolService['createVolume'] = (request) => this.#call('createVolume', request);
  snapshot: PoolService['snapshot'] = (request) => this.#call('snapshot', request);
  setLabels: PoolService['setLabels'] = (request) => this.#call('setLabels', request);
  removeVolume: PoolService['removeVolume'] = (request) => this.#call('removeVolume', request);
  resizeVolume: PoolService['resizeVolume'] = (request) => this.#call('resizeVolume', request);
  listVolumes: PoolService['listVolumes'] = () => this.#call('listVolumes');
  status: PoolService['status'] = () => this.#call('status');
  check: PoolService['check'] = () => this.#call('check');
  scrub: PoolService['scrub'] = (request) => this.#call('scrub', request ?? {});
  pinGeneration: PoolService['pinGeneration'] = () => this.#call('pinGeneration');
  setSpace: PoolService['setSpace'] = (request) => this.#call('setSpace', request);
  resizePool: PoolService['resizePool'] = (request) => this.#call('resizePool', request);

  async close(): Promise<void> {
    this.#socket.end();
  }
}
