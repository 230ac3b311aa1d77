// What TLS costs on the peer table's read and write rows (issue 18): the same thinbd pool served
// with `--tls off` and with `--tls require` (X.509), rounds alternating, fio --ioengine=nbd on
// TCP loopback. fio's nbd engine refuses libnbd's file parameters (tls-certificates=, tls-psk-file=),
// so it finds the client certificate where libnbd looks by default: $HOME/.pki/libnbd for a user
// other than root; fio runs as `nobody` (setpriv) with HOME pointing there. PSK uses the same
// ciphers after the handshake, so the X.509 figures stand for both.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { THINBD, machineDescription, writeBenchmarkSection } from './peers.ts';

const NOBODY = 65534;
const GiB = 1024 ** 3;

interface Row {
  name: string;
  fio: string[];
}

function rows(seconds: number): Row[] {
  const timed = [`--runtime=${seconds}`, '--time_based', '--ramp_time=1'];
  return [
    { name: 'randread 4k qd32', fio: ['--rw=randread', '--bs=4k', '--iodepth=32', ...timed] },
    { name: 'randwrite 4k qd32', fio: ['--rw=randwrite', '--bs=4k', '--iodepth=32', ...timed] },
    { name: 'seq read 1M', fio: ['--rw=read', '--bs=1M', '--iodepth=8', ...timed] },
    { name: 'seq write 1M', fio: ['--rw=write', '--bs=1M', '--iodepth=8', ...timed] },
  ];
}

function run(command: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...(env === undefined ? {} : { env }) });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  return result.stdout;
}

function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate in libnbd's layout (certtool). */
function makeCertificates(dir: string): { server: { cert: string; key: string }; clientDir: string } {
  mkdirSync(dir, { recursive: true });
  const tool = (args: string[]) => run('certtool', args);
  const write = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  tool(['--generate-privkey', '--key-type=ecdsa', '--outfile', join(dir, 'ca-key.pem')]);
  tool(['--generate-self-signed', '--load-privkey', join(dir, 'ca-key.pem'), '--template', write('ca.info', 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n'), '--outfile', join(dir, 'ca-cert.pem')]);
  const signed = (role: string, template: string) => {
    tool(['--generate-privkey', '--key-type=ecdsa', '--outfile', join(dir, `${role}-key.pem`)]);
    tool(['--generate-certificate', '--load-ca-certificate', join(dir, 'ca-cert.pem'), '--load-ca-privkey', join(dir, 'ca-key.pem'),
      '--load-privkey', join(dir, `${role}-key.pem`), '--template', write(`${role}.info`, template), '--outfile', join(dir, `${role}-cert.pem`)]);
  };
  signed('server', 'cn = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 2\n');
  signed('client', 'cn = bench\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 2\n');
  const clientDir = join(dir, 'home', '.pki', 'libnbd');
  mkdirSync(clientDir, { recursive: true });
  for (const name of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) cpSync(join(dir, name), join(clientDir, name));
  // Readable by the unprivileged fio, for this throwaway directory only.
  for (const path of [dir, join(dir, 'home'), join(dir, 'home', '.pki'), clientDir]) chmodSync(path, 0o755);
  for (const name of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) chmodSync(join(clientDir, name), 0o644);
  return { server: { cert: join(dir, 'server-cert.pem'), key: join(dir, 'server-key.pem') }, clientDir };
}

async function startServe(pool: string, extra: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [THINBD, 'serve', '--pool', pool, '--listen', '127.0.0.1:0', '--log-level', 'error', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (out += text));
  for (let attempt = 0; attempt < 600; attempt++) {
    const match = /127\.0\.0\.1:(\d+)\//.exec(out);
    if (match) return { child, port: Number(match[1]) };
    if (child.exitCode !== null) throw new Error(`thinbd serve exited ${child.exitCode}`);
    await sleep(50);
  }
  throw new Error('thinbd serve did not start in 30 s');
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export async function tlsBenchmark(flags: string[], options: { rounds: number; runtimeSeconds: number; writeDoc: boolean } = { rounds: 3, runtimeSeconds: 10, writeDoc: false }): Promise<void> {
  void flags;
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-bench-tls-'));
  // fio runs as nobody and must reach the client certificate below.
  chmodSync(dir, 0o755);
  try {
    const certs = makeCertificates(join(dir, 'certs'));
    const pool = join(dir, 'pool');
    run(process.execPath, [THINBD, 'pool', 'create', '--pool', pool, '--data-size', String(3 * GiB)]);
    run(process.execPath, [THINBD, 'create', '--pool', pool, 'vol0', '--size', String(GiB)]);
    const filler = await startServe(pool, []);
    run('fio', ['--name=fill', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${filler.port}/vol0`, '--rw=write', '--bs=1M', '--iodepth=8', '--output-format=terse']);
    await stop(filler.child);

    const modes = [
      { name: 'plain', args: [] as string[], scheme: 'nbd' },
      { name: 'TLS', args: ['--tls', 'require', '--tls-cert', certs.server.cert, '--tls-key', certs.server.key], scheme: 'nbds' },
    ];
    const results = new Map<string, { iops: number[]; cpuPerGiB: number[] }>();
    const fioEnv = { ...process.env, HOME: join(dir, 'certs', 'home') };
    for (let round = 0; round < options.rounds; round++) {
      // Alternate which mode goes first, so drift on a shared machine falls on both.
      const order = round % 2 === 0 ? modes : [...modes].reverse();
      for (const mode of order) {
        const server = await startServe(pool, mode.args);
        try {
          for (const row of rows(options.runtimeSeconds)) {
            const before = cpuSeconds(server.child.pid!);
            const output = run('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'fio', '--name=bench', '--ioengine=nbd',
              `--uri=${mode.scheme}://127.0.0.1:${server.port}/vol0`, '--output-format=json', ...row.fio], fioEnv);
            const cpu = cpuSeconds(server.child.pid!) - before;
            const job = (JSON.parse(output.slice(output.indexOf('{'))) as { jobs: Array<{ error: number; read: { iops: number; io_bytes: number }; write: { iops: number; io_bytes: number } }> }).jobs[0]!;
            if (job.error !== 0) throw new Error(`fio ${row.name} over ${mode.name} failed`);
            const key = `${row.name}|${mode.name}`;
            const entry = results.get(key) ?? { iops: [], cpuPerGiB: [] };
            entry.iops.push(job.read.iops + job.write.iops);
            entry.cpuPerGiB.push(cpu / ((job.read.io_bytes + job.write.io_bytes) / GiB));
            results.set(key, entry);
            console.error(`bench tls: round ${round + 1} ${mode.name} ${row.name}: ${Math.round(job.read.iops + job.write.iops)} IOPS`);
          }
        } finally {
          await stop(server.child);
        }
      }
    }
    const lines = [
      '## TLS cost on the peer rows: thinbd with and without TLS',
      '',
      `Machine: ${machineDescription()}; shared with other jobs while measured.`,
      `Command: \`npm run bench -- tls --rounds ${options.rounds} --seconds ${options.runtimeSeconds}\`;`,
      `medians of ${options.rounds} rounds, plain and TLS alternating, one 1 GiB volume (filled), TCP loopback,`,
      'fio --ioengine=nbd (libnbd, GnuTLS) with X.509 (`--tls require --tls-cert --tls-key`); server CPU from /proc.',
      '',
      '| workload | plain IOPS | TLS IOPS | TLS / plain (IOPS) | rounds plain | rounds TLS | CPU s/GiB plain / TLS |',
      '|---|---:|---:|---:|---|---|---:|',
    ];
    for (const row of rows(options.runtimeSeconds)) {
      const plain = results.get(`${row.name}|plain`)!;
      const secure = results.get(`${row.name}|TLS`)!;
      const ratio = median(secure.iops) / median(plain.iops);
      lines.push(
        `| ${row.name} | ${Math.round(median(plain.iops))} | ${Math.round(median(secure.iops))} | ${ratio.toFixed(2)}× | ${plain.iops.map(Math.round).join(', ')} | ${secure.iops.map(Math.round).join(', ')} | ${median(plain.cpuPerGiB).toFixed(2)} / ${median(secure.cpuPerGiB).toFixed(2)} |`,
      );
    }
    const body = lines.join('\n');
    console.log(body);
    if (options.writeDoc) writeBenchmarkSection('tls', body);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
