// Starts and stops a local S3-compatible server for tests: s3rver in a child process on
// 127.0.0.1 (port 0, so runs never collide), objects kept in a temporary directory. Callers get
// the endpoint and the environment a child `thinbd` needs to reach it (endpoint, region and
// placeholder credentials: s3rver accepts any signature).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const SCRIPT = resolve(import.meta.dirname, 's3rver-process.cjs');
/** A server that has not said it is ready by then is broken (the test fails rather than hangs). */
const START_MS_MAX = 30_000;

export interface LocalS3Server {
  endpoint: string;
  port: number;
  /** The buckets created at start. */
  buckets: string[];
  /** Where s3rver keeps objects: `<directory>/<bucket>/<key>._S3rver_object` (for damage tests). */
  directory: string;
  /** Environment for a child process to reach the server through the standard AWS variables. */
  env: Record<string, string>;
  /** Stops the server (by its pid) and removes its directory. */
  stop(): Promise<void>;
}

export async function startS3Server(options: { buckets?: string[] } = {}): Promise<LocalS3Server> {
  const buckets = options.buckets ?? ['thinbd-test'];
  const directory = mkdtempSync(join(tmpdir(), 'thinbd-s3-'));
  const child = spawn(process.execPath, ['--openssl-legacy-provider', SCRIPT, directory, '0', ...buckets], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (data: Buffer) => {
    stderr += data.toString();
  });
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`s3rver did not start within ${START_MS_MAX} ms: ${stderr}`)), START_MS_MAX);
    const lines = createInterface({ input: child.stdout! });
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolvePort((JSON.parse(line) as { port: number }).port);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited with ${code} before it was ready: ${stderr}`));
    });
  }).catch(async (error: unknown) => {
    await stopChild(child);
    rmSync(directory, { recursive: true, force: true });
    throw error;
  });
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    port,
    buckets,
    directory,
    env: {
      AWS_ENDPOINT_URL: endpoint,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'S3RVER',
      AWS_SECRET_ACCESS_KEY: 'S3RVER',
    },
    stop: async () => {
      await stopChild(child);
      rmSync(directory, { recursive: true, force: true });
    },
  };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolveExit) => child.once('exit', () => resolveExit()));
  child.kill('SIGTERM');
  await exited;
}
