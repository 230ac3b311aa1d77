// npm run bench [-- NAME...] [--rounds N] [--seconds S] [--mappings N] [--write-doc]
// Runs the named benchmarks (all when none is named). Peer rows compare thinbd with qemu-nbd
// (qcow2) and nbdkit (raw file) side by side in one run; see docs/benchmarks.md.
import { flushBenchmark } from './flush.ts';
import { snapshotBenchmark } from './snapshot.ts';
import { snapshotPeersBenchmark } from './snapshot-peers.ts';
import { toolsBenchmark } from './tools.ts';
import { archiveBenchmark } from './archive.ts';
import { tlsBenchmark } from './tls.ts';
import { remapBenchmark } from './remap.ts';
import { imageBenchmark } from './image.ts';
import { SERVER_NAMES, machineDescription, peerBenchmark, workloads, writeBenchmarkSection, type ServerName } from './peers.ts';

const args = process.argv.slice(2);
function flagValue(name: string, fallback: number): number {
  const index = args.indexOf(name);
  if (index < 0) return fallback;
  const value = Number(args[index + 1]);
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`bench: ${name} takes a positive number`);
    process.exit(2);
  }
  args.splice(index, 2);
  return value;
}
/** --block-size: thinbd's data block size for the peer rows, in bytes or with a k/m suffix (64k, 1m). */
function blockSizeFlag(): number | undefined {
  const index = args.indexOf('--block-size');
  if (index < 0) return undefined;
  const match = /^(\d+)([km]?)$/i.exec(args[index + 1] ?? '');
  if (!match) {
    console.error('bench: --block-size takes a size such as 65536, 128k or 1m');
    process.exit(2);
  }
  args.splice(index, 2);
  return Number(match[1]) * (match[2]?.toLowerCase() === 'k' ? 1024 : match[2]?.toLowerCase() === 'm' ? 1024 ** 2 : 1);
}
const thinbdBlockSizeBytes = blockSizeFlag();
/** --servers thinbd,qemu-nbd: run only these servers in the peer rows (node-floor only when named). */
function serversFlag(): ServerName[] | undefined {
  const index = args.indexOf('--servers');
  if (index < 0) return undefined;
  const servers = (args[index + 1] ?? '').split(',');
  if (servers.some((server) => !(SERVER_NAMES as readonly string[]).includes(server))) {
    console.error(`bench: --servers takes a comma-separated list of ${SERVER_NAMES.join(', ')}`);
    process.exit(2);
  }
  args.splice(index, 2);
  return servers as ServerName[];
}
const servers = serversFlag();
const rounds = flagValue('--rounds', 3);
// --mappings N (the tools benchmark reads it from process.argv): taken out of the names here.
flagValue('--mappings', 1);
const runtimeSeconds = flagValue('--seconds', 10);
const writeDoc = args.includes('--write-doc');
/** --corpus DIR and --work DIR (bench/image.ts reads them itself): not benchmark names. */
for (const option of ['--corpus', '--work']) {
  const index = args.indexOf(option);
  if (index >= 0) args.splice(index, 2);
}
const names = args.filter((arg) => !arg.startsWith('-'));
const flags = args.filter((arg) => arg.startsWith('-'));

const peerKeys = workloads(1).map((workload) => workload.key);
const standalone: Record<string, (flags: string[]) => Promise<void>> = {
  snapshot: snapshotBenchmark,
  'snapshot-peers': snapshotPeersBenchmark,
  tools: toolsBenchmark,
  flush: flushBenchmark,
  archive: archiveBenchmark,
  // --rounds is taken out of the flags above: the remap benchmark gets it when given (its default depends on --quick).
  remap: (flags) => remapBenchmark(flags, process.argv.includes('--rounds') ? rounds : undefined),
  tls: (flags) => tlsBenchmark(flags, { rounds, runtimeSeconds, writeDoc }),
  image: imageBenchmark,
};
const known = ['peers', ...peerKeys, ...Object.keys(standalone)];
for (const name of names) {
  if (!known.includes(name)) {
    console.error(`bench: no benchmark named '${name}' (have: ${known.join(', ')})`);
    process.exit(2);
  }
}

const chosenPeers = names.length === 0 || names.includes('peers') ? peerKeys : names.filter((name) => peerKeys.includes(name));
if (chosenPeers.length > 0) {
  const table = await peerBenchmark({ rounds, runtimeSeconds, sizeBytes: 1024 ** 3, only: chosenPeers, writeDoc, thinbdBlockSizeBytes, servers });
  const body = [
    `## Peers: thinbd vs qemu-nbd (qcow2) vs nbdkit file`,
    '',
    `Machine: ${machineDescription()}.`,
    `Command: \`npm run bench -- ${chosenPeers.length === peerKeys.length ? 'peers' : chosenPeers.join(' ')} --rounds ${rounds} --seconds ${runtimeSeconds}${thinbdBlockSizeBytes === undefined ? '' : ` --block-size ${thinbdBlockSizeBytes}`}${servers === undefined ? '' : ` --servers ${servers.join(',')}`}\`;`,
    `medians of ${rounds} rounds, servers alternating each round, 1 GiB export on a Unix socket, fio --ioengine=nbd.`,
    '',
    table,
  ].join('\n');
  console.log(body);
  if (writeDoc) writeBenchmarkSection('peers', body);
}
for (const name of Object.keys(standalone)) {
  if (names.length === 0 || names.includes(name)) await standalone[name]!(flags);
}
