// Bundles the compiled command line (dist/cli/main.js and the modules it reaches) into one-file
// CommonJS bundles that bin/thinbd loads when they are at least as new as dist/cli/main.js. Node
// loads one synchronous file faster than ~70 ES modules, each resolved, read and linked on its own
// (docs/benchmarks.md "Command start-up": a short command's CPU 0.7× of the module graph's). The
// modules stay in dist/ as they are: the library's exports and the worker threads' entry files use
// them.
//
// - dist/thinbd.cjs: every command (help, no command, an unknown one).
// - dist/thinbd-<group>.cjs, one per command group (src/cli/commands/<group>.ts), with only that
//   group's commands: V8 parses the whole file it loads, and a group's half of the code parses in
//   about half the time. dist/thinbd-commands.json names the bundle of each top-level command.
//
// Each module's `import.meta.url` becomes the URL of its own file in dist/, so the paths built
// from it (worker entry files, createRequire) resolve as they do unbundled. npm packages stay
// outside the bundles (native add-ons, and what npm installs beside thinbd), except the command
// line parser, which every command loads first (see commanderInside).
import { createRequire } from 'node:module';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const entry = join(dist, 'cli', 'main.js');

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

/**
 * commander (and its typed wrapper) inside the bundle: loaded as a package it is seven files
 * resolved through two package.json export maps, and its child_process import (for git-style
 * executable subcommands, which thinbd does not use) loads child_process, net and dgram; together
 * a tenth of a short command's start (docs/benchmarks.md "Command start-up"). In the bundle
 * child_process is loaded when a subcommand is spawned; a commander whose source no longer has
 * that line is bundled as it is.
 */
const commanderInside = {
  name: 'commander-inside',
  setup(context) {
    context.onResolve({ filter: /^(@commander-js\/extra-typings|commander)$/ }, (args) => ({
      path: createRequire(join(args.resolveDir, 'resolve.js')).resolve(args.path),
    }));
    context.onLoad({ filter: /[\\/]commander[\\/]lib[\\/]command\.js$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const eager = "const childProcess = require('node:child_process');";
      const lazy = "const childProcess = { spawn: (...spawnArgs) => require('node:child_process').spawn(...spawnArgs) };";
      return { contents: source.replace(eager, lazy), loader: 'js' };
    });
  },
};

/**
 * One CommonJS bundle of the command line (or of `entryPoint`); `plugins` come before the
 * import.meta.url rewrite.
 */
async function bundle(outfile, plugins = [], entryPoint = entry) {
  await build({
    entryPoints: [entryPoint],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    packages: 'external',
    // import() of a package (the AWS SDK, loaded when a command meets an s3:// URL) becomes a
    // require: bin/thinbd compiles a bundle as a vm.Script to use V8's code cache, and a script
    // compiled from a cache has no loader for import() in Node 20.
    supported: { 'dynamic-import': false },
    // The maps point into dist/*.js, which ship beside the bundles with their own maps to src/:
    // without a copy of every source, the nine bundles' maps are 3.7 MB, not 14 MB.
    sourcemap: true,
    sourcesContent: false,
    logLevel: 'warning',
    plugins: [...plugins, commanderInside, ownUrls],
  });
  await asciiOnly(outfile);
}

/**
 * Rewrites the bundle's few non-ASCII characters as \uXXXX escapes, so the whole file is ASCII.
 * esbuild escapes them in code itself (its default charset, ASCII) but keeps comments as they
 * are, and one '×' in a comment makes Node read the file into a two-byte string, decoded on the
 * slow path: ~1 ms of reading dist/thinbd-tools.cjs at every `thinbd dump`, against ~0.2 ms for
 * the same bytes all ASCII (docs/benchmarks.md, "Command start-up"). An escape means the same
 * character in a string or a regular expression too, and changes nothing in a comment.
 */
async function asciiOnly(file) {
  const text = await readFile(file, 'utf8');
  const ascii = text.replace(/[^\x00-\x7f]/g, (unit) => `\\u${unit.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (ascii !== text) await writeFile(file, ascii);
}

await bundle(join(dist, 'thinbd.cjs'));
await bundleCommandGroups();
await bundleChunkWorker();
await bundleImageParseWorker();

/**
 * The archive's chunk worker (dist/archive/chunk-worker.js and what it imports) as one file,
 * dist/chunk-worker.cjs, which chunk-workers.ts starts when it is at least as new as the worker's
 * module: pack and unpack start one worker thread per core, each loading its modules on its own
 * (docs/benchmarks.md "Archive: the chunker's loop and the worker bundle").
 */
async function bundleChunkWorker() {
  await bundle(join(dist, 'chunk-worker.cjs'), [], join(dist, 'archive', 'chunk-worker.js'));
}

/**
 * The image import's parsing thread (dist/image/parse-worker.js and what it imports) as one file,
 * dist/image-parse-worker.cjs, which parse-thread.ts starts when it is at least as new as the
 * worker's module: the import waits for that thread's start (docs/benchmarks.md "Image import").
 */
async function bundleImageParseWorker() {
  await bundle(join(dist, 'image-parse-worker.cjs'), [], join(dist, 'image', 'parse-worker.js'));
}

/**
 * A bundle per command group, and dist/thinbd-commands.json mapping each top-level command to
 * its group's bundle. A group's bundle leaves the other groups' modules out: in their place a
 * module that throws, which nothing loads, since main.ts loads only the group its command line
 * names, and bin/thinbd picks this bundle only for that group's commands.
 */
async function bundleCommandGroups() {
  const { COMMAND_GROUPS, buildProgram } = await import(pathToFileURL(entry).href);
  const groupModule = (group) => {
    const found = [...group.load.toString().matchAll(/commands\/([\w-]+)\.js/g)].map((match) => match[1]);
    if (new Set(found).size !== 1) throw new Error(`command group ${group.commands.join(', ')}: loads ${found.length === 0 ? 'no module' : found.join(', ')} from dist/cli/commands/, expected one`);
    return found[0];
  };
  const bundles = {};
  for (const name of new Set(COMMAND_GROUPS.map(groupModule))) {
    const file = `thinbd-${name}.cjs`;
    const onlyThisGroup = {
      name: 'only-this-command-group',
      setup(context) {
        context.onResolve({ filter: /^\.\/commands\/[\w-]+\.js$/ }, (args) =>
          args.importer === entry && args.path !== `./commands/${name}.js` ? { path: args.path, namespace: 'other-command-group' } : undefined,
        );
        context.onLoad({ filter: /.*/, namespace: 'other-command-group' }, (args) => ({
          contents: `throw new Error(${JSON.stringify(`${args.path} is not in dist/${file}: bin/thinbd runs dist/thinbd.cjs for its commands`)});`,
          loader: 'js',
        }));
      },
    };
    await bundle(join(dist, file), [onlyThisGroup]);
    for (const group of COMMAND_GROUPS) if (groupModule(group) === name) for (const command of group.commands) bundles[command] = file;
  }
  // "command subcommand" too (`archive pack`): bin/thinbd keeps a code cache per command it runs.
  const { consoleReporter } = await import(pathToFileURL(join(dist, 'cli', 'report.js')).href);
  const program = await buildProgram(consoleReporter());
  for (const command of program.commands) {
    for (const sub of command.commands) bundles[`${command.name()} ${sub.name()}`] = bundles[command.name()];
  }
  await writeFile(join(dist, 'thinbd-commands.json'), `${JSON.stringify(bundles, null, 2)}\n`);
}
