// Progress bars for long work, drawn on stderr only when it is a terminal. The bar's package is
// loaded only when a bar is drawn: a command whose stderr is not a terminal (a script, a pipe)
// does not pay for loading it.
import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';
import { formatSize } from './sizes.ts';

export interface Progress {
  /** Work done so far, in the unit the total was given in. */
  update(done: number): void;
  /** A new total; the work done shown stays as it was. */
  setTotal(total: number): void;
  stop(): void;
}

const silent: Progress = { update: () => {}, setTotal: () => {}, stop: () => {} };

export function startProgress(label: string, total: number, options: { bytes?: boolean } = {}): Progress {
  if (!process.stderr.isTTY || total <= 0) return silent;
  const format = options.bytes ? (value: number) => formatSize(value) : (value: number) => String(value);
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% {doneText}/{totalText} eta {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { doneText: format(0), totalText: format(total) });
  return {
    update: (done) => bar.update(done, { doneText: format(done) }),
    setTotal: (newTotal) => {
      bar.setTotal(newTotal);
      bar.update({ totalText: format(newTotal) });
    },
    stop: () => bar.stop(),
  };
}

/**
 * A bar for work whose total is known only at the first report and may grow after (pack finds
 * more to read than it expected): it appears at the first report with a total above zero, and a
 * larger total later only lengthens it. Restarted instead, it went back to 0% near the end. A
 * smaller total is ignored: the bar never shrinks under what it showed.
 */
export function growingProgress(label: string, start: typeof startProgress = startProgress): { update: (done: number, total: number) => void; stop: () => void } {
  let progress: Progress | undefined;
  let shownTotal = 0;
  return {
    update: (done, total) => {
      if (progress === undefined) {
        if (total <= 0) return;
        progress = start(label, total, { bytes: true });
        shownTotal = total;
      } else if (total > shownTotal) {
        progress.setTotal(total);
        shownTotal = total;
      }
      progress.update(done);
    },
    stop: () => progress?.stop(),
  };
}
