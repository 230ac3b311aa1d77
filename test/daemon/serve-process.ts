// Starts the real `thinbd serve` as a child process and reads where it listens.
import { spawn, type ChildProcess } from 'node:child_process';
import { THINBD } from '../cli/run-thinbd.ts';

export interface ServeProcess {
  child: ChildProcess;
  port: number;
  uri(name: string): string;
  output(): string;
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
    const timer = setTimeout(() => reject(new Error(`thinbd serve did not announce itself in 20 s: ${output}`)), 20_000);
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
