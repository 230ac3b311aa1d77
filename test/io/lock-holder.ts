// A child process for test/io/lock.test.ts: takes the lock of the directory given as its argument,
// says "locked", and waits to be killed. Or, with --try, reports what a second locker sees.
import { lockDirectory } from '../../src/io/lock.ts';

const [directoryPath, mode] = process.argv.slice(2);
if (directoryPath === undefined) throw new Error('usage: lock-holder.ts DIR [--try]');
try {
  const lock = lockDirectory(directoryPath);
  if (mode === '--try') {
    process.stdout.write('locked\n');
    lock.release();
  } else {
    process.stdout.write('locked\n');
    setInterval(() => {}, 60_000);
  }
} catch (error) {
  process.stdout.write(`${(error as { code?: string }).code ?? 'error'}: ${(error as Error).message}\n`);
}
