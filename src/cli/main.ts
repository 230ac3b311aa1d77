// The thinbd command line: a shell over the library. Each command parses its options and calls
// one library function; all output goes through one reporter, exit codes come from one table.
import { Command, CommanderError } from '@commander-js/extra-typings';
import { consoleReporter, describeFailure, exitCodes, type CommandResult, type Reporter } from './report.ts';
import { registerPoolCommands } from './commands/pool.ts';
import { registerVolumeCommands } from './commands/volumes.ts';
import { registerTransferCommands } from './commands/transfer.ts';
import { registerCheckCommand, registerScrubCommand } from './commands/check.ts';
import { registerServeCommands } from './commands/serve.ts';
import { registerToolCommands } from './commands/tools.ts';
import { registerArchiveCommands } from './commands/archive.ts';
import { registerImageCommands } from './commands/image.ts';

export const VERSION = '0.1.0';

/** The command line's commands; an action that answers with an exit code sets it in `result`. */
export function buildProgram(reporter: Reporter, result: CommandResult = { exitCode: exitCodes.ok }): Command {
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
  registerPoolCommands(program, reporter);
  registerVolumeCommands(program, reporter);
  registerTransferCommands(program, reporter);
  registerCheckCommand(program, reporter, result);
  registerScrubCommand(program, reporter, result);
  registerServeCommands(program, reporter);
  registerToolCommands(program, reporter);
  registerArchiveCommands(program, reporter);
  registerImageCommands(program, reporter);
  // Subcommands inherit exit handling so a usage error anywhere exits 2, not 1.
  const inherit = (command: Command): void => {
    for (const sub of command.commands as Command[]) {
      sub.exitOverride().configureOutput(program.configureOutput());
      inherit(sub);
    }
  };
  inherit(program);
  return program;
}

/**
 * A reader that closes standard output early (`thinbd dump | head`) ends the command quietly with
 * the shell's SIGPIPE code, as coreutils do; any other failure to write it is one line and exit 1.
 * Everything that streams to stdout is read-only, so stopping mid-stream leaves nothing half done.
 */
function endOnClosedStdout(reporter: Reporter): void {
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(exitCodes.brokenPipe);
    reporter.error(`Cannot write to standard output: ${error.message}`);
    process.exit(exitCodes.failure);
  });
}

/** Runs one command line; returns the exit code. */
export async function main(argv: string[], reporter: Reporter = consoleReporter()): Promise<number> {
  endOnClosedStdout(reporter);
  const result: CommandResult = { exitCode: exitCodes.ok };
  const program = buildProgram(reporter, result);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return result.exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      const helpOrVersion = ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(error.code);
      if (helpOrVersion) return exitCodes.ok;
      if (error.code === 'commander.executeSubCommandAsync') return exitCodes.failure;
      return exitCodes.usage;
    }
    if ((error as NodeJS.ErrnoException | null)?.code === 'EPIPE') return exitCodes.brokenPipe;
    const { exitCode, message } = describeFailure(error);
    reporter.error(message);
    return exitCode;
  }
}
