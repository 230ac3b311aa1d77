// The Prometheus text format as scrapers parse it: escaped label values, cumulative buckets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Histogram, PrometheusPage } from '../../src/util/prometheus.ts';

test('label values escape backslash, quote and newline; HELP and TYPE are written once per family', () => {
  const page = new PrometheusPage();
  page.family('m_total', 'counter', 'A counter.').sample('m_total', 3, { pool: 'a"b\\c\nd' });
  page.family('m_total', 'counter', 'ignored').sample('m_total', 4, { pool: 'x' });
  assert.equal(page.toString(), '# HELP m_total A counter.\n# TYPE m_total counter\nm_total{pool="a\\"b\\\\c\\nd"} 3\nm_total{pool="x"} 4\n');
});

test('a histogram writes cumulative buckets, +Inf equal to the count, and the sum', () => {
  const histogram = new Histogram([0.001, 0.01]);
  for (const seconds of [0.0005, 0.001, 0.005, 0.5]) histogram.observe(seconds);
  const text = new PrometheusPage().histogram('lat_seconds', histogram, { c: 'read' }).toString();
  assert.equal(
    text,
    [
      'lat_seconds_bucket{c="read",le="0.001"} 2',
      'lat_seconds_bucket{c="read",le="0.01"} 3',
      'lat_seconds_bucket{c="read",le="+Inf"} 4',
      'lat_seconds_sum{c="read"} 0.5065',
      'lat_seconds_count{c="read"} 4',
      '',
    ].join('\n'),
  );
});
