// The real thin-provisioning-tools as a test oracle. Missing tools fail the test that needs them
// (never skip): `npm test` installs them, and an interop claim nobody checked is no claim.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const THIN_TOOLS = ['thin_restore', 'thin_dump', 'thin_check', 'thin_delta', 'thin_ls', 'thin_metadata_size'] as const;

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Throws (failing the test) when a thin-provisioning-tools binary is missing or is not 0.9.0. */
export function requireThinTools(): void {
  for (const tool of THIN_TOOLS) {
    const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8', env: withSbin() });
    if (found.status !== 0) {
      throw new Error(`${tool} is not installed: run \`apt-get install -y thin-provisioning-tools\` (npm test does this)`);
    }
  }
  const version = runTool('thin_dump', ['-V']).stdout.trim();
  if (version !== '0.9.0') throw new Error(`these tests pin thin-provisioning-tools 0.9.0's exact output; found ${version}`);
}

function withSbin(): NodeJS.ProcessEnv {
  const path = process.env['PATH'] ?? '';
  return { ...process.env, PATH: `${path}:/usr/sbin:/sbin` };
}

export function runTool(tool: string, args: string[]): ToolResult {
  const result = spawnSync(tool, args, { encoding: 'utf8', env: withSbin(), maxBuffer: 512 * 1024 * 1024, timeout: 120_000 });
  if (result.error !== undefined) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Runs a tool and returns its stdout; throws with its stderr when it fails. */
export function toolOutput(tool: string, args: string[]): string {
  const result = runTool(tool, args);
  if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), 'thinbd-tools-'));

  path(name: string): string {
    return join(this.dir, name);
  }

  /** thin_restore needs an existing, large enough output file (thin-provisioning-tools 0.9.0). */
  zeroedFile(name: string, sizeBytes: number): string {
    const path = this.path(name);
    writeFileSync(path, '');
    truncateSync(path, sizeBytes);
    return path;
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** thin_restore XML into fresh zeroed metadata; returns the metadata path. */
export function thinRestore(scratch: Scratch, xml: string, name = 'meta.bin', sizeBytes = 8 * 1024 * 1024): string {
  const input = scratch.path(`${name}.xml`);
  writeFileSync(input, xml);
  const metadata = scratch.zeroedFile(name, sizeBytes);
  toolOutput('thin_restore', ['-i', input, '-o', metadata]);
  return metadata;
}
