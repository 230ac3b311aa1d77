// Runs the real `bin/thinbd` (the compiled CLI) as a user would.
import { spawnSync, spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

export const THINBD = resolve(import.meta.dirname, '..', '..', 'bin', 'thinbd');

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function thinbd(args: string[], options: { env?: Record<string, string>; input?: Uint8Array | string; cwd?: string } = {}): RunResult {
  const result = spawnSync(process.execPath, [THINBD, ...args], {
    env: { ...process.env, ...options.env },
    input: options.input,
    cwd: options.cwd,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    timeout: 120_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Runs thinbd and returns its standard output as bytes (for binary output such as export to -). */
export function thinbdBytes(args: string[]): Buffer {
  const result = spawnSync(process.execPath, [THINBD, ...args], { maxBuffer: 256 * 1024 * 1024, timeout: 120_000 });
  if (result.status !== 0) throw new Error(`thinbd ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

export function thinbdJson<T>(args: string[], options: { env?: Record<string, string> } = {}): T {
  const result = thinbd([...args, '--json'], options);
  if (result.code !== 0) throw new Error(`thinbd ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** Starts thinbd without waiting for it; its standard input is a pipe the caller writes. */
export function spawnThinbd(args: string[]): ChildProcess {
  return spawn(process.execPath, [THINBD, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Runs thinbd, requires exit 0, returns its standard output. */
export function thinbdOk(args: string[]): string {
  const result = thinbd(args);
  if (result.code !== 0) throw new Error(`thinbd ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}
