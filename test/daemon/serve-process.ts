// Starts the real `thinbd serve` as a child process and reads where it listens.
import { spawn, type ChildProcess } from 'node:child_process';
import { THINBD } from '../cli/run-thinbd.ts';

export interface ServeProcess {
  child: ChildProcess;
  port: number;
  uri(name: string): string;
  output(): string;
  /** The first match of `pattern` in the output, waiting for it (output comes in chunks); fails if the server exits first. */
  waitForOutput(pattern: RegExp): Promise<RegExpExecArray>;
  /** SIGTERM, then waits for the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL, then waits for the process to be gone. */
  kill(): Promise<void>;
}

export async function startServe(poolDir: string, extraArgs: string[] = []): Promise<ServeProcess> {
  const child = spawn(process.execPath, [THINBD, 'serve', '--pool', poolDir, '--listen', '127.0.0.1:0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    // A hang guard, not a speed claim: a start at load 20 on 2 cores has taken several seconds.
    const timer = setTimeout(() => reject(new Error(`thinbd serve did not announce itself in 120 s: ${output}`)), 120_000);
    const poll = setInterval(() => {
      const match = /on nbds?:\/\/127\.0\.0\.1:(\d+)\//.exec(output);
      if (match) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve(Number(match[1]));
      } else if (child.exitCode !== null) {
        clearInterval(poll);
        clearTimeout(timer);
        reject(new Error(`thinbd serve exited ${child.exitCode}: ${output}`));
      }
    }, 20);
  });
  return {
    child,
    port,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    output: () => output,
    waitForOutput: async (pattern) => {
      for (const deadline = Date.now() + 120_000; Date.now() < deadline; ) {
        const match = pattern.exec(output);
        if (match !== null) return match;
        if (child.exitCode !== null) break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      throw new Error(`thinbd serve never wrote ${pattern} (${child.exitCode === null ? 'still running' : `exited ${child.exitCode}`}): ${output}`);
    },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
