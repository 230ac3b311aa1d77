// Human sizes: what users type (`512`, `64k`, `10M`, `4G`, `1T`) and what tables print.
// Units are binary (k = 1024), as LVM and qemu-img read them.

const unitShifts: Record<string, number> = { '': 0, b: 0, k: 10, m: 20, g: 30, t: 40, p: 50 };

export class SizeSyntaxError extends Error {
  constructor(text: string, reason: string) {
    super(`Invalid size '${text}': ${reason} (examples: 512, 64k, 10M, 4G, 1T)`);
    this.name = 'SizeSyntaxError';
  }
}

/** Parses a size in bytes; throws SizeSyntaxError naming what is wrong. */
export function parseSize(text: string): number {
  const match = /^\s*(\d+)(?:\.(\d+))?\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!match) throw new SizeSyntaxError(text, 'not a number with an optional unit');
  const [, whole = '', fraction, unitText = ''] = match;
  let unit = unitText.toLowerCase();
  if (unit.endsWith('ib')) unit = unit.slice(0, -2);
  else if (unit.length === 2 && (unit.endsWith('b') || unit.endsWith('i'))) unit = unit.slice(0, -1); // 4GB, 4Gi (Kubernetes' spelling)
  const shift = unitShifts[unit];
  if (shift === undefined) throw new SizeSyntaxError(text, `unknown unit '${unitText}'`);
  const value = Number(`${whole}.${fraction ?? '0'}`) * 2 ** shift;
  if (!Number.isSafeInteger(value)) {
    throw new SizeSyntaxError(text, fraction ? 'not a whole number of bytes' : 'too large');
  }
  return value;
}

/** Formats bytes with the largest binary unit that keeps one decimal: 1536 -> "1.5K". */
export function formatSize(bytes: number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let value = bytes;
  let index = 0;
  while (value >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  if (index === 0) return `${bytes}B`;
  const text = value >= 100 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1);
  return `${text.replace(/\.0$/, '')}${units[index]}`;
}
