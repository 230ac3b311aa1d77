// What `thinbd serve` does with the pool's space events (src/pool/space-monitor.ts): every event
// is one log entry (`pool.data_low_water`, `pool.metadata_grown`, ...: a JSON line for log
// collectors, util/log.ts), and a low-water event runs the operator's `--on-low-water` command, as
// dm-thin's low-water event is what LVM's dmeventd turns into lvextend. The events are
// edge-triggered in the pool, so the command runs once per crossing of a mark, not per write.
//
// The command runs through /bin/sh -c with the pool's figures in its environment:
//   THINBD_POOL        the pool directory
//   THINBD_EVENT       data-low-water or metadata-low-water
//   THINBD_RESOURCE    data or metadata
//   THINBD_FREE_BYTES  what the pool can still give (free blocks, growth, within the host's room)
//   THINBD_USED_BYTES  what is in use
//   THINBD_SIZE_BYTES, THINBD_MAX_BYTES, THINBD_LOW_WATER_BYTES  the file's size, how far it may
//                      grow, the mark
// Its output goes to the server's stderr (stdout is the server's own); its exit is logged
// (`pool.hook_exited`, a warning unless it exits 0). The server does not wait for
// it (a hook that runs `thinbd pool resize` talks to this very server) and does not stop it.
import { spawn } from 'node:child_process';
import type { SpaceEvent } from '../pool/pool.ts';
import type { LogLevel, LogSink } from '../util/log.ts';

export interface SpaceEventOptions {
  poolDir: string;
  /** Shell command for low-water events. */
  onLowWater?: string;
  log: LogSink;
}

/** The listener to give Pool.onSpaceEvent. */
export function spaceEventHandler(options: SpaceEventOptions): (event: SpaceEvent) => void {
  return (event) => {
    const { kind, message, ...figures } = event;
    const warning = kind.endsWith('-low-water') || kind.endsWith('-full') || kind.endsWith('-grow-failed');
    options.log({ level: warning ? 'warn' : 'info', event: `pool.${kind.replaceAll('-', '_')}`, message, ...figures });
    if (options.onLowWater !== undefined && kind.endsWith('-low-water')) runHook(options.onLowWater, event, options);
  };
}

function runHook(command: string, event: SpaceEvent, options: SpaceEventOptions): void {
  const env = {
    ...process.env,
    THINBD_POOL: options.poolDir,
    THINBD_EVENT: event.kind,
    THINBD_RESOURCE: event.resource,
    THINBD_FREE_BYTES: String(event.freeBytes),
    THINBD_USED_BYTES: String(event.usedBytes),
    THINBD_SIZE_BYTES: String(event.sizeBytes),
    THINBD_MAX_BYTES: String(event.maxBytes),
    THINBD_LOW_WATER_BYTES: String(event.lowWaterBytes),
  };
  const child = spawn('/bin/sh', ['-c', command], { env, stdio: ['ignore', 2, 2] });
  const hookEntry = (entry: { level: LogLevel; message: string; [field: string]: unknown }): void =>
    options.log({ ...entry, event: 'pool.hook_exited', hook: command, spaceEvent: event.kind });
  child.on('error', (error) => hookEntry({ level: 'warn', message: `the --on-low-water command could not run: ${error.message}` }));
  child.on('exit', (code, signal) => {
    const how = signal === null ? `exited ${code}` : `was killed by ${signal}`;
    hookEntry({ level: code === 0 ? 'info' : 'warn', message: `the --on-low-water command (pid ${child.pid}) for ${event.kind} ${how}`, exitCode: code, signal });
  });
  child.unref();
}
