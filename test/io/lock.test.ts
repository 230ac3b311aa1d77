import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { lockDirectory } from '../../src/io/lock.ts';
import { isThinError } from '../../src/errors.ts';

const holderScript = path.join(import.meta.dirname, 'lock-holder.ts');
let temporaryDirectory = '';
before(() => {
  temporaryDirectory = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-lock-'));
});
after(() => {
  fs.rmSync(temporaryDirectory, { recursive: true, force: true });
});

function poolDirectory(name: string): string {
  const directoryPath = path.join(temporaryDirectory, name);
  fs.mkdirSync(directoryPath);
  return directoryPath;
}

/** Starts a child that runs lock-holder.ts and resolves with its first line of output. */
async function startHolder(directoryPath: string, mode?: string): Promise<{ child: ChildProcess; line: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', holderScript, directoryPath, ...(mode ? [mode] : [])], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const newline = output.indexOf('\n');
      if (newline >= 0) resolve(output.slice(0, newline));
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve(output.trim() || `exited ${code}`));
  });
  return { child, line };
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

describe('pool directory lock', () => {
  test('a second lock in the same process is refused until the first is released', () => {
    const directoryPath = poolDirectory('same-process');
    const lock = lockDirectory(directoryPath);
    assert.equal(fs.readFileSync(lock.path, 'utf8'), `${process.pid}\n`);
    assert.throws(() => lockDirectory(directoryPath), (error) => {
      assert.ok(isThinError(error, 'THIN_BUSY'));
      assert.equal(error.message, `Pool ${directoryPath} is in use by another process (pid ${process.pid})`);
      return true;
    });
    lock.release();
    lock.release();
    const again = lockDirectory(directoryPath);
    again.release();
  });

  test('a lock file planted as a symbolic link or a directory is refused, and what it points at is left as it was', () => {
    const directoryPath = poolDirectory('planted');
    const victim = path.join(temporaryDirectory, 'victim');
    fs.writeFileSync(victim, 'precious\n');
    fs.symlinkSync(victim, path.join(directoryPath, 'lock'));
    assert.throws(() => lockDirectory(directoryPath), (error) => {
      assert.ok(isThinError(error, 'THIN_INVALID'));
      assert.equal(error.message, `Cannot lock pool ${directoryPath}: ${path.join(directoryPath, 'lock')} is a symbolic link (thinbd does not follow it; remove it)`);
      return true;
    });
    assert.equal(fs.readFileSync(victim, 'utf8'), 'precious\n');
    // A dangling link is not followed to create its target either.
    fs.rmSync(victim);
    assert.throws(() => lockDirectory(directoryPath), (error) => isThinError(error, 'THIN_INVALID'));
    assert.equal(fs.existsSync(victim), false);

    const fifoPool = poolDirectory('planted-fifo');
    const mkfifo = spawnSync('mkfifo', [path.join(fifoPool, 'lock')]);
    assert.equal(mkfifo.status, 0);
    assert.throws(() => lockDirectory(fifoPool), (error) => {
      assert.ok(isThinError(error, 'THIN_INVALID'));
      assert.match(error.message, /lock is not a regular file/);
      return true;
    });
  });

  test('a lock on a missing directory fails with THIN_NOT_FOUND', () => {
    assert.throws(() => lockDirectory(path.join(temporaryDirectory, 'nope')), (error) => isThinError(error, 'THIN_NOT_FOUND'));
  });

  test('a lock held by another process is refused, naming its pid', async () => {
    const directoryPath = poolDirectory('other-process');
    const { child, line } = await startHolder(directoryPath);
    try {
      assert.equal(line, 'locked');
      assert.throws(() => lockDirectory(directoryPath), (error) => {
        assert.ok(isThinError(error, 'THIN_BUSY'));
        assert.equal(error.message, `Pool ${directoryPath} is in use by another process (pid ${child.pid})`);
        return true;
      });
    } finally {
      await kill(child);
    }
  });

  test('another process is refused while this one holds the lock', async () => {
    const directoryPath = poolDirectory('held-here');
    const lock = lockDirectory(directoryPath);
    try {
      const { line } = await startHolder(directoryPath, '--try');
      assert.equal(line, `THIN_BUSY: Pool ${directoryPath} is in use by another process (pid ${process.pid})`);
    } finally {
      lock.release();
    }
  });

  test('the lock of a SIGKILLed holder is free afterwards', async () => {
    const directoryPath = poolDirectory('killed-holder');
    const { child, line } = await startHolder(directoryPath);
    assert.equal(line, 'locked');
    await kill(child);
    const lock = lockDirectory(directoryPath);
    assert.equal(fs.readFileSync(lock.path, 'utf8'), `${process.pid}\n`);
    lock.release();
  });
});
