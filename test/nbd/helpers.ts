// Shared by the NBD tests: a server on an ephemeral port serving memory exports, and running the
// real Debian clients. A missing client fails the test loudly (scripts/test.sh installs them).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MapExportRegistry, type NbdExport } from '../../src/nbd/backend.ts';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.ts';

export interface RunningServer {
  server: NbdServer;
  registry: MapExportRegistry;
  port: number;
  uri(name: string): string;
  close(): Promise<void>;
}

export async function startServer(
  exports: NbdExport[],
  options: Omit<NbdServerOptions, 'registry'> & { defaultName?: string } = {},
): Promise<RunningServer> {
  const registry = new MapExportRegistry(exports, options.defaultName === undefined ? {} : { defaultName: options.defaultName });
  const server = new NbdServer({ ...options, registry });
  const bound = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in bound)) throw new Error('expected a TCP address');
  return {
    server,
    registry,
    port: bound.port,
    uri: (name) => `nbd://127.0.0.1:${bound.port}/${name}`,
    close: () => server.close({ timeoutMs: 5000 }),
  };
}

/** Throws unless every named command is on PATH: interop tests never skip. */
export function requireTools(...commands: string[]): void {
  const missing = commands.filter((command) => spawnSync('sh', ['-c', `command -v ${command}`]).status !== 0);
  if (missing.length > 0) {
    throw new Error(`missing tools ${missing.join(', ')}: run scripts/test.sh (it installs them) or apt-get install them`);
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Runs a command to completion; throws with its output when it fails or exceeds timeoutMs. */
export function run(command: string, args: string[], options: { timeoutMs?: number; allowFailure?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} timed out\n${stdout}\n${stderr}`));
    }, options.timeoutMs ?? 120_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0 && !options.allowFailure) {
        reject(new Error(`${command} ${args.join(' ')} exited with ${code}\nstdout: ${stdout}\nstderr: ${stderr}`));
      } else resolve({ stdout, stderr, code });
    });
  });
}

/** Starts a long-running command (nbdfuse) and returns it; stop it with stopProcess. */
export function startProcess(command: string, args: string[]): { child: ChildProcess; output: () => string } {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return { child, output: () => output };
}

/** Ends a process this test started, by its PID; waits for it to exit. */
export async function stopProcess(child: ChildProcess, timeoutMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
}

export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `thinbd-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Deterministic bytes for a test pattern. */
export function patternBytes(lengthBytes: number, seed: number): Buffer {
  const bytes = Buffer.allocUnsafe(lengthBytes);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < lengthBytes; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[i] = state & 0xff;
  }
  return bytes;
}

/** Polls condition every 100 ms until it holds; throws naming `what` after timeoutMs (a bound, not a speed claim). */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
