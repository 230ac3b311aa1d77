// Bundles the compiled command line (dist/cli/main.js and the modules it reaches) into one
// CommonJS file, dist/thinbd.cjs, which bin/thinbd loads when it is at least as new as the rest
// of dist/. Node loads one synchronous file faster than ~70 ES modules, each resolved, read and
// linked on its own (docs/benchmarks.md "Command start-up": a short command's CPU 0.7× of the
// module graph's). The modules stay in dist/ as they are: the library's exports and the worker
// threads' entry files use them.
//
// Each module's `import.meta.url` becomes the URL of its own file in dist/, so the paths built
// from it (worker entry files, createRequire) resolve as they do unbundled. npm packages stay
// outside the bundle (native add-ons, and what npm installs beside thinbd).
import { readFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');

const ownUrls = {
  name: 'own-import-meta-url',
  setup(context) {
    context.onLoad({ filter: /\.js$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      if (!source.includes('import.meta.url')) return { contents: source, loader: 'js' };
      const own = JSON.stringify(relative(dist, args.path).split('\\').join('/'));
      const imports = "import { pathToFileURL as thinbdFileUrl } from 'node:url'; import { join as thinbdJoin } from 'node:path';\n";
      const url = `thinbdFileUrl(thinbdJoin(__dirname, ${own})).href`;
      return { contents: imports + source.replaceAll('import.meta.url', `(${url})`), loader: 'js' };
    });
  },
};

await build({
  entryPoints: [join(dist, 'cli', 'main.js')],
  outfile: join(dist, 'thinbd.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
  plugins: [ownUrls],
});

/**
 * The archive's chunk worker (dist/archive/chunk-worker.js and what it imports) as one file,
 * dist/chunk-worker.cjs, which chunk-workers.ts starts when it is at least as new as the worker's
 * module: pack and unpack start one worker thread per core, each loading its modules on its own
 * (docs/benchmarks.md "Archive: the chunker's loop and the worker bundle").
 */
async function bundleChunkWorker() {
  await build({
    entryPoints: [join(dist, 'archive', 'chunk-worker.js')],
    outfile: join(dist, 'chunk-worker.cjs'),
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    packages: 'external',
    sourcemap: true,
    logLevel: 'warning',
    plugins: [ownUrls],
  });
}

await bundleChunkWorker();
