// Serves sparse memory exports over NBD, for trying clients by hand before the daemon exists:
//   node --import tsx test/nbd/serve-memory.ts [--listen HOST:PORT] [--socket PATH] [NAME=SIZE ...]
// SIZE takes k, M, G suffixes (powers of 1024). Default: one 1 GiB export "mem" on 127.0.0.1:10809,
// also the default export "". Prints one line per listener ("listening on ...") and serves until
// SIGINT/SIGTERM, which drains in-flight requests and exits.
import { MapExportRegistry } from '../../src/nbd/backend.ts';
import { NbdServer, type NbdListenAddress } from '../../src/nbd/server.ts';
import { MemoryExport } from './memory-export.ts';

function parseSize(text: string): number {
  const match = /^(\d+)([kKmMgG]?)$/.exec(text);
  if (match === null) throw new Error(`Cannot read size ${JSON.stringify(text)}: expected digits and an optional k, M or G.`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(match[2] ?? '').toLowerCase()] ?? 1;
  return Number(match[1]) * unit;
}

const listens: NbdListenAddress[] = [];
const exports: MemoryExport[] = [];
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const arg = args[i]!;
  if (arg === '--listen') {
    const value = args[++i] ?? '';
    const colon = value.lastIndexOf(':');
    listens.push({ host: value.slice(0, colon), port: Number(value.slice(colon + 1)) });
  } else if (arg === '--socket') {
    listens.push({ path: args[++i] ?? '' });
  } else if (arg.includes('=')) {
    const [name, size] = arg.split('=') as [string, string];
    exports.push(new MemoryExport({ name, sizeBytes: parseSize(size) }));
  } else {
    console.error(`serve-memory: unknown argument ${arg}`);
    process.exit(2);
  }
}
if (listens.length === 0) listens.push({ host: '127.0.0.1', port: 10809 });
if (exports.length === 0) exports.push(new MemoryExport({ name: 'mem', sizeBytes: 1024 ** 3 }));

const registry = new MapExportRegistry(exports, { defaultName: exports[0]!.name });
const server = new NbdServer({ registry, log: (entry) => console.error(`serve-memory: ${entry.message}`) });
for (const listen of listens) {
  const bound = await server.listen(listen);
  console.log(`listening on ${'path' in bound ? bound.path : `${bound.host}:${bound.port}`}`);
}
const stop = () => {
  void server.close({ timeoutMs: 5000 }).then(() => process.exit(0));
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
