// Ctrl-C, SIGTERM and SIGHUP (the terminal or ssh session gone) stop a long command cleanly: its
// AbortSignal is aborted with THIN_INTERRUPTED and the command undoes what it made (the volume it
// was building, the snapshot it read through). Each signal is caught once: a second one ends the
// process at once, as if nothing caught it.
import { ThinError } from '../errors.ts';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export interface Interruption {
  signal: AbortSignal;
  /** Stops catching the signals (call when the command's work is over). */
  release(): void;
}

/** Catches the signals until released; `describe` says what a signal interrupted. */
export function catchInterrupts(describe: (signal: NodeJS.Signals) => string): Interruption {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => controller.abort(new ThinError('THIN_INTERRUPTED', describe(signal)));
  for (const name of SIGNALS) process.once(name, onSignal);
  return {
    signal: controller.signal,
    release: () => {
      for (const name of SIGNALS) process.off(name, onSignal);
    },
  };
}
