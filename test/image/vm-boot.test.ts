// The use case images exist for, end to end through the front door with a real VM: a root file
// system tar made here (busybox and an init script) → `thinbd image import` → a writable
// `thinbd snapshot` per machine → `thinbd serve` → QEMU boots Debian's kernel and initramfs with
// `root=/dev/vda` from the snapshot over NBD (a virtio disk). The guest's init reads image data
// back, writes new files and changes an image file (copy-on-write of shared blocks), syncs,
// remounts its root read-only (a clean unmount, journal done), prints a marker on the serial
// console and powers off. Then, with the server stopped: the machine's disk is e2fsck clean and
// holds what the guest wrote (debugfs), and the image is byte for byte what it was before.
// No KVM is needed (QEMU's TCG); a guest that hangs fails the test with its console output.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { patternBytes, requireTools, stopProcess, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe } from '../daemon/serve-process.ts';
import { sh } from './helpers.ts';
import { tarArchive, sha256Hex, type TarSpec } from './tar-writer.ts';

requireTools('qemu-system-x86_64', 'e2fsck', 'debugfs');

const BUSYBOX = '/bin/busybox';
const BUSYBOX_APPLETS = ['sh', 'cat', 'echo', 'mount', 'sync', 'sha256sum', 'dd', 'poweroff'];
const DONE_MARKER = 'THINBD-GUEST-DONE';
/** A hang guard, not a speed claim: the boot to the marker took 24-39 s under TCG on 2 busy cores (about 15 s idle). */
const BOOT_HANG_MS = 300_000;

let work: { path: string; remove(): void } | undefined;
after(() => work?.remove());

/** Throws unless `file` is an ELF executable without an interpreter: the guest has no libc, so its busybox must be static. */
function requireStaticExecutable(file: string, packageName: string): void {
  const elf = fs.readFileSync(file);
  if (elf.subarray(0, 4).toString('latin1') !== '\x7fELF' || elf[4] !== 2) throw new Error(`${file} is not a 64-bit ELF executable`);
  const programHeadersOffset = Number(elf.readBigUInt64LE(0x20));
  const programHeaderSize = elf.readUInt16LE(0x36);
  const programHeaderCount = elf.readUInt16LE(0x38);
  const PT_INTERP = 3;
  for (let index = 0; index < programHeaderCount; index++) {
    if (elf.readUInt32LE(programHeadersOffset + index * programHeaderSize) === PT_INTERP) {
      throw new Error(`${file} is dynamically linked; the guest needs a static one: apt-get install ${packageName} (scripts/test.sh installs it)`);
    }
  }
}

/** Debian's kernel and its initramfs (linux-image-amd64; scripts/test.sh installs it), the newest if several. */
function debianKernel(): { kernel: string; initrd: string } {
  const versions = fs
    .readdirSync('/boot')
    .filter((name) => name.startsWith('vmlinuz-'))
    .map((name) => name.slice('vmlinuz-'.length))
    .filter((version) => fs.existsSync(`/boot/initrd.img-${version}`))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const version = versions.at(-1);
  if (version === undefined) throw new Error('no /boot/vmlinuz-* with its /boot/initrd.img-*: run scripts/test.sh (it installs linux-image-amd64) or apt-get install it');
  return { kernel: `/boot/vmlinuz-${version}`, initrd: `/boot/initrd.img-${version}` };
}

/**
 * The guest's /sbin/init. Debian's initramfs mounts root=/dev/vda read-write, moves /dev, /proc,
 * /sys and /run onto it and execs this. Any failing command ends init, the kernel panics and
 * (panic=-1, -no-reboot) QEMU exits without the marker.
 */
const INIT_SCRIPT = `#!/bin/sh
set -e
export PATH=/bin:/sbin
echo "THINBD-PAYLOAD $(sha256sum /usr/share/payload)"
echo "written by the guest" > /root/from-guest
dd if=/usr/share/payload of=/root/payload-copy bs=65536 2>/dev/null
echo "appended by the guest" >> /etc/motd
sync
mount -o remount,ro /
echo ${DONE_MARKER}
poweroff -f
`;

function rootFilesystemTar(payload: Buffer): Buffer {
  const specs: TarSpec[] = [];
  for (const directory of ['bin', 'sbin', 'dev', 'proc', 'sys', 'run', 'tmp', 'etc', 'root', 'usr', 'usr/share']) {
    specs.push({ path: `${directory}/`, type: 'dir', mode: directory === 'tmp' ? 0o1777 : directory === 'root' ? 0o700 : 0o755 });
  }
  specs.push({ path: 'bin/busybox', data: fs.readFileSync(BUSYBOX), mode: 0o755 });
  for (const applet of BUSYBOX_APPLETS) specs.push({ path: `bin/${applet}`, type: 'symlink', linkPath: 'busybox' });
  specs.push({ path: 'sbin/init', data: INIT_SCRIPT, mode: 0o755 });
  specs.push({ path: 'etc/motd', data: 'an image made by thinbd image import\n' });
  specs.push({ path: 'usr/share/payload', data: payload });
  return tarArchive(specs);
}

/** The first byte offset where two files differ, or undefined when they are equal. */
function firstDifference(fileA: string, fileB: string): number | undefined {
  const fdA = fs.openSync(fileA, 'r');
  const fdB = fs.openSync(fileB, 'r');
  try {
    const bufferA = Buffer.allocUnsafe(4 * 1024 * 1024);
    const bufferB = Buffer.allocUnsafe(bufferA.length);
    for (let offsetBytes = 0; ; offsetBytes += bufferA.length) {
      const readA = fs.readSync(fdA, bufferA, 0, bufferA.length, offsetBytes);
      const readB = fs.readSync(fdB, bufferB, 0, bufferB.length, offsetBytes);
      if (readA !== readB || !bufferA.subarray(0, readA).equals(bufferB.subarray(0, readB))) {
        for (let index = 0; index < Math.min(readA, readB); index++) if (bufferA[index] !== bufferB[index]) return offsetBytes + index;
        return offsetBytes + Math.min(readA, readB);
      }
      if (readA === 0) return undefined;
    }
  } finally {
    fs.closeSync(fdA);
    fs.closeSync(fdB);
  }
}

interface Boot {
  console: string;
  marker: boolean;
  exitCode: number | null;
  markerMs?: number;
}

/** Boots QEMU from `driveUri` and waits for the marker and QEMU's exit; a hang past BOOT_HANG_MS kills QEMU (by its PID). */
async function bootGuest(driveUri: string): Promise<Boot> {
  const { kernel, initrd } = debianKernel();
  const started = Date.now();
  const qemu = spawn(
    'qemu-system-x86_64',
    ['-nographic', '-no-reboot', '-m', '512', '-nic', 'none', '-kernel', kernel, '-initrd', initrd,
      '-append', 'root=/dev/vda rw console=ttyS0 panic=-1',
      '-drive', `file=${driveUri},if=virtio,format=raw`],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const boot: Boot = { console: '', marker: false, exitCode: null };
  const onOutput = (chunk: Buffer): void => {
    boot.console += chunk.toString('latin1');
    if (!boot.marker && boot.console.includes(`${DONE_MARKER}\r\n`)) {
      boot.marker = true;
      boot.markerMs = Date.now() - started;
    }
  };
  qemu.stdout.on('data', onOutput);
  qemu.stderr.on('data', onOutput);
  const exited = new Promise<number | null>((resolve) => qemu.once('close', (code) => resolve(code)));
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), BOOT_HANG_MS)));
  const outcome = await Promise.race([exited, hung]);
  clearTimeout(timer);
  if (outcome === 'hung') {
    await stopProcess(qemu);
    throw new Error(`the guest neither powered off nor panicked in ${BOOT_HANG_MS / 1000} s; console:\n${boot.console}`);
  }
  boot.exitCode = outcome;
  return boot;
}

test('a machine boots from its writable snapshot of an imported image over NBD, and its writes land on its disk only', async (t) => {
  const { kernel, initrd } = debianKernel();
  fs.accessSync(kernel, fs.constants.R_OK);
  fs.accessSync(initrd, fs.constants.R_OK);
  requireStaticExecutable(BUSYBOX, 'busybox-static');
  work = tempDir('image-vm-boot');
  const pool = path.join(work.path, 'pool');
  const payload = patternBytes(3 * 1024 * 1024 + 4321, 13);
  const archive = path.join(work.path, 'rootfs.tar');
  let serveExit: number | null = null;
  fs.writeFileSync(archive, rootFilesystemTar(payload));

  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '4G']).code, 0);
  // A small root disk (the default would be over 1 GiB) keeps the byte-for-byte comparison of the image short.
  const imported = thinbd(['image', 'import', '--pool', pool, 'rootfs', archive, '--size', '256M']);
  assert.equal(imported.code, 0, imported.stderr);
  const snapshot = thinbd(['snapshot', '--pool', pool, 'rootfs', 'machine-1']);
  assert.equal(snapshot.code, 0, snapshot.stderr);
  const imageBefore = path.join(work.path, 'rootfs-before.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'rootfs', imageBefore]).code, 0);

  const server = await startServe(pool);
  let boot: Boot;
  try {
    boot = await bootGuest(server.uri('machine-1'));
  } finally {
    serveExit = await server.stop();
  }
  assert.equal(serveExit, 0, `thinbd serve did not stop cleanly: ${server.output()}`);
  assert.ok(boot.marker, `the guest never printed ${DONE_MARKER} (QEMU exited ${boot.exitCode}); console:\n${boot.console}`);
  assert.equal(boot.exitCode, 0, `QEMU exited ${boot.exitCode}; console:\n${boot.console}`);
  t.diagnostic(`boot to the guest's marker: ${((boot.markerMs ?? 0) / 1000).toFixed(1)} s`);
  assert.doesNotMatch(boot.console, /I\/O error|EXT4-fs error|EXT4-fs warning|journal commit I\/O/, `the guest's kernel reported disk errors; console:\n${boot.console}`);
  // What the guest read from the image over NBD is the image's data.
  assert.match(boot.console, new RegExp(`THINBD-PAYLOAD ${sha256Hex(payload)}  /usr/share/payload`), `console:\n${boot.console}`);

  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, `thinbd check after the boot:\n${check.stdout}${check.stderr}`);
  const machine = path.join(work.path, 'machine-1.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'machine-1', machine]).code, 0);
  const fsck = sh('e2fsck', ['-fn', machine], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn of machine-1's disk:\n${fsck.stdout}${fsck.stderr}`);
  const debugfsCat = (file: string): Buffer => {
    const dumped = path.join(work!.path, `dumped-${path.basename(file)}`);
    const result = sh('debugfs', ['-R', `dump ${file} ${dumped}`, machine]);
    assert.doesNotMatch(result.stderr, /not found|error/i, `debugfs dump ${file}: ${result.stderr}`);
    return fs.readFileSync(dumped);
  };
  assert.equal(debugfsCat('/root/from-guest').toString(), 'written by the guest\n');
  assert.equal(sha256Hex(debugfsCat('/root/payload-copy')), sha256Hex(payload));
  assert.equal(debugfsCat('/etc/motd').toString(), 'an image made by thinbd image import\nappended by the guest\n');

  const imageAfter = path.join(work.path, 'rootfs-after.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'rootfs', imageAfter]).code, 0);
  const difference = firstDifference(imageAfter, imageBefore);
  assert.equal(difference, undefined, `the image volume changed while a machine booted from its snapshot, first at byte ${difference}`);
  const motd = sh('debugfs', ['-R', 'cat /etc/motd', imageAfter]).stdout;
  assert.equal(motd, 'an image made by thinbd image import\n');
});
