// Whether a process of this host still runs, for the leftovers a killed command names by its pid
// (archive store locks and pack snapshots, restore's and repair's build directories).

/** Whether a process of this host with that pid runs (EPERM: it does, as another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
