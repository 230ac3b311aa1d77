// The Prometheus text exposition format (version 0.0.4: `# HELP`, `# TYPE`, one sample per line,
// histograms as cumulative `_bucket{le=…}` plus `_sum` and `_count`, summaries as samples with a
// `quantile` label plus `_sum` and `_count`). Small enough to own: the
// server builds the whole page at scrape time from counters it keeps anyway, so no registry of
// live metric objects is needed.

export type Labels = Readonly<Record<string, string>>;

function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatLabels(labels: Labels | undefined): string {
  if (labels === undefined) return '';
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([key, value]) => `${key}="${escapeLabelValue(value)}"`).join(',')}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** One scrape's page: families in the order written, each with its HELP and TYPE once. */
export class PrometheusPage {
  readonly #lines: string[] = [];
  readonly #families = new Set<string>();

  /** Declares a family (once; later calls with the same name add nothing). */
  family(name: string, type: 'counter' | 'gauge' | 'histogram' | 'summary', help: string): this {
    if (this.#families.has(name)) return this;
    this.#families.add(name);
    this.#lines.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${name} ${type}`);
    return this;
  }

  sample(name: string, value: number, labels?: Labels): this {
    this.#lines.push(`${name}${formatLabels(labels)} ${formatValue(value)}`);
    return this;
  }

  histogram(name: string, histogram: Histogram, labels: Labels = {}): this {
    let cumulative = 0;
    for (let index = 0; index < histogram.boundsSeconds.length; index++) {
      cumulative += histogram.counts[index]!;
      this.sample(`${name}_bucket`, cumulative, { ...labels, le: String(histogram.boundsSeconds[index]) });
    }
    this.sample(`${name}_bucket`, histogram.count, { ...labels, le: '+Inf' });
    this.sample(`${name}_sum`, histogram.sumSeconds, labels);
    this.sample(`${name}_count`, histogram.count, labels);
    return this;
  }

  toString(): string {
    return `${this.#lines.join('\n')}\n`;
  }
}

/** Latency buckets in seconds, 50 µs to 10 s: a page-cache hit to a stalled disk. */
export const LATENCY_BOUNDS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
];

/** A fixed-bucket histogram: observe() is a short scan and two additions. */
export class Histogram {
  readonly boundsSeconds: readonly number[];
  /** Per bucket, not cumulative; the last slot counts what lies above every bound. */
  readonly counts: number[];
  count = 0;
  sumSeconds = 0;

  constructor(boundsSeconds: readonly number[] = LATENCY_BOUNDS_SECONDS) {
    this.boundsSeconds = boundsSeconds;
    this.counts = new Array<number>(boundsSeconds.length + 1).fill(0);
  }

  observe(seconds: number): void {
    let index = 0;
    while (index < this.boundsSeconds.length && seconds > this.boundsSeconds[index]!) index++;
    this.counts[index]!++;
    this.count++;
    this.sumSeconds += seconds;
  }
}
