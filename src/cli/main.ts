// The thinbd command line: a shell over the library. Each command parses its options and calls
// one library function; all output goes through one reporter, exit codes come from one table.
import { Command, CommanderError } from '@commander-js/extra-typings';
import { consoleReporter, describeFailure, exitCodes, type CommandResult, type Reporter } from './report.ts';

export const VERSION = '0.1.0';

type RegisterCommands = (program: Command, reporter: Reporter, result: CommandResult) => void;

/**
 * The command groups in the order `thinbd --help` lists them, each with the top-level commands it
 * registers. A command line loads only its own group: loading every command's modules was most of
 * a short command's time (about 0.25 s of `thinbd archive pack` on a quiet machine). Help, an
 * unknown command or none loads them all.
 */
export const COMMAND_GROUPS: ReadonlyArray<{ commands: readonly string[]; load: () => Promise<RegisterCommands> }> = [
  { commands: ['pool'], load: async () => (await import('./commands/pool.ts')).registerPoolCommands },
  { commands: ['create', 'snapshot', 'remove', 'resize', 'list'], load: async () => (await import('./commands/volumes.ts')).registerVolumeCommands },
  { commands: ['import', 'export'], load: async () => (await import('./commands/transfer.ts')).registerTransferCommands },
  { commands: ['check'], load: async () => (await import('./commands/check.ts')).registerCheckCommand },
  { commands: ['scrub'], load: async () => (await import('./commands/check.ts')).registerScrubCommand },
  { commands: ['serve', 'demo'], load: async () => (await import('./commands/serve.ts')).registerServeCommands },
  { commands: ['dump', 'restore', 'delta', 'repair', 'metadata'], load: async () => (await import('./commands/tools.ts')).registerToolCommands },
  { commands: ['archive'], load: async () => (await import('./commands/archive.ts')).registerArchiveCommands },
  { commands: ['image'], load: async () => (await import('./commands/image.ts')).registerImageCommands },
];

/**
 * The command line's commands: those of the group `argv` names, or all of them (no `argv`, or
 * one that names no command). An action that answers with an exit code sets it in `result`.
 */
export async function buildProgram(reporter: Reporter, result: CommandResult = { exitCode: exitCodes.ok }, argv?: readonly string[]): Promise<Command> {
  const program = new Command()
    .name('thinbd')
    .description('Thin-provisioned volumes and snapshots in a pool, served over NBD')
    .version(VERSION)
    .showSuggestionAfterError()
    .exitOverride()
    .configureOutput({
      writeOut: (text) => process.stdout.write(text),
      writeErr: (text) => process.stderr.write(text),
      outputError: (text, write) => write(`thinbd: ${text.replace(/^error: /, '')}`),
    });
  const named = argv?.find((word) => !word.startsWith('-'));
  const group = COMMAND_GROUPS.find((candidate) => named !== undefined && candidate.commands.includes(named));
  const registers = await Promise.all((group === undefined ? COMMAND_GROUPS : [group]).map((entry) => entry.load()));
  for (const register of registers) register(program, reporter, result);
  // Subcommands inherit exit handling so a usage error anywhere exits 2, not 1.
  const inherit = (command: Command): void => {
    for (const sub of command.commands as Command[]) {
      sub.exitOverride().configureOutput(program.configureOutput());
      checkRequiredOptionsLast(sub);
      inherit(sub);
    }
  };
  inherit(program);
  return program;
}

/**
 * Required options are checked after unknown options and missing arguments, not before them as
 * commander checks them: a mistyped `create v --sise 1G` is then named, with its suggestion
 * (`--size`), instead of reported as a missing `--size`.
 */
function checkRequiredOptionsLast(command: Command): void {
  const required = command.options.filter((option) => option.mandatory);
  for (const option of required) option.mandatory = false;
  if (required.length === 0) return;
  command.hook('preAction', (hooked) => {
    for (const option of required) {
      if (hooked.getOptionValue(option.attributeName()) !== undefined) continue;
      hooked.error(`error: required option '${option.flags}' not specified`, { code: 'commander.missingMandatoryOptionValue', exitCode: exitCodes.usage });
    }
  });
}

/**
 * `thinbd help WORDS…` as `thinbd WORDS… --help`: commander's help command reads only the first
 * word (`help pool create` showed pool's help) and answers a word that names no command with the
 * whole help and exit 0. A word that names no subcommand is left as the command line's last
 * word, so commander reports it as an unknown command with a suggestion (exit 2) and runs
 * nothing; words past a command that has no subcommands are dropped (`help remove vol0` shows
 * remove's help, it never removes).
 */
function helpAsOption(program: Command, words: readonly string[]): string[] {
  if (words.length === 0 || words.some((word) => word.startsWith('-'))) return ['help', ...words];
  let command = program;
  for (const [index, word] of words.entries()) {
    const subcommands = command.commands as Command[];
    if (subcommands.length === 0) return [...words.slice(0, index), '--help'];
    const sub = subcommands.find((candidate) => candidate.name() === word || candidate.aliases().includes(word));
    if (sub === undefined) return words.slice(0, index + 1);
    command = sub;
  }
  return [...words, '--help'];
}

/**
 * A reader that closes standard output early (`thinbd dump | head`) ends the command quietly with
 * the shell's SIGPIPE code, as coreutils do; any other failure to write it is one line and exit 1.
 * Everything that streams to stdout is read-only, so stopping mid-stream leaves nothing half done.
 *
 * The handler is attached when process.stdout is first made, not before: making it loads Node's
 * stream modules, ~1.5 ms of a short `thinbd dump` into a file, which writes the descriptor
 * itself (tools/dump/sink.ts). Node defines process.stdout as a getter that makes the stream on
 * first use; this one makes it through Node's, attaches the handler and puts Node's back.
 */
function endOnClosedStdout(reporter: Reporter): void {
  const attach = (stdout: NodeJS.WriteStream): void => {
    stdout.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EPIPE') process.exit(exitCodes.brokenPipe);
      reporter.error(`Cannot write to standard output: ${error.message}`);
      process.exit(exitCodes.failure);
    });
  };
  const nodes = Object.getOwnPropertyDescriptor(process, 'stdout');
  const make = nodes?.get;
  if (nodes === undefined || make === undefined || nodes.configurable !== true) {
    attach(process.stdout);
    return;
  }
  Object.defineProperty(process, 'stdout', {
    configurable: true,
    enumerable: nodes.enumerable ?? true,
    get(): NodeJS.WriteStream {
      Object.defineProperty(process, 'stdout', nodes);
      const stdout = make.call(process) as NodeJS.WriteStream;
      attach(stdout);
      return stdout;
    },
  });
}

/** Runs one command line; returns the exit code. */
export async function main(argv: string[], reporter: Reporter = consoleReporter()): Promise<number> {
  endOnClosedStdout(reporter);
  const result: CommandResult = { exitCode: exitCodes.ok };
  const program = await buildProgram(reporter, result, argv);
  try {
    await program.parseAsync(argv[0] === 'help' ? helpAsOption(program, argv.slice(1)) : argv, { from: 'user' });
    return result.exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // commander.help with a non-zero code is help shown instead of a command (none given): a usage error.
      if (error.code === 'commander.help') return error.exitCode === 0 ? exitCodes.ok : exitCodes.usage;
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return exitCodes.ok;
      if (error.code === 'commander.executeSubCommandAsync') return exitCodes.failure;
      return exitCodes.usage;
    }
    if ((error as NodeJS.ErrnoException | null)?.code === 'EPIPE') return exitCodes.brokenPipe;
    const { exitCode, message } = describeFailure(error);
    reporter.error(message);
    return exitCode;
  }
}
