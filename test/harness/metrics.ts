/**
 * Reads a Prometheus text exposition (format 0.0.4), as served by Ferry's /metrics and by the
 * registry's debug listener, into something tests can query by name and labels.
 *
 * Line grammar: `# HELP ...` / `# TYPE ...` comments, then samples
 *   metric_name{label="value",...} value [timestamp]
 * with `\\`, `\"` and `\n` escapes in label values and NaN/+Inf/-Inf as values.
 */

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export type LabelFilter = Record<string, string>;

export class MetricsSnapshot {
  constructor(readonly samples: readonly MetricSample[]) {}

  /** The sample whose labels are exactly `labels`, or undefined if there is none. */
  value(name: string, labels: LabelFilter = {}): number | undefined {
    const wanted = Object.entries(labels);
    return this.samples.find(
      (sample) =>
        sample.name === name &&
        Object.keys(sample.labels).length === wanted.length &&
        wanted.every(([key, value]) => sample.labels[key] === value),
    )?.value;
  }

  /** Sum over every sample of `name` whose labels include `labelFilter`; 0 if none match. */
  sum(name: string, labelFilter: LabelFilter = {}): number {
    return this.select(name, labelFilter).reduce((total, sample) => total + sample.value, 0);
  }

  /** Every sample of `name` whose labels include `labelFilter`. */
  select(name: string, labelFilter: LabelFilter = {}): MetricSample[] {
    const wanted = Object.entries(labelFilter);
    return this.samples.filter(
      (sample) => sample.name === name && wanted.every(([key, value]) => sample.labels[key] === value),
    );
  }

  /** Metric names present, for error messages. */
  names(): string[] {
    return [...new Set(this.samples.map((sample) => sample.name))].sort();
  }
}

const SAMPLE_START = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)/y;

function unescapeLabelValue(value: string): string {
  return value.replace(/\\(.)/g, (_, escaped: string) => (escaped === 'n' ? '\n' : escaped));
}

// Prometheus reads special values case-insensitively (Go's strconv.ParseFloat), and prom-client
// writes NaN as "Nan".
function parseValue(text: string): number {
  switch (text.toLowerCase()) {
    case '+inf':
    case 'inf':
      return Infinity;
    case '-inf':
      return -Infinity;
    case 'nan':
      return NaN;
    default: {
      const value = Number(text);
      if (Number.isNaN(value)) throw new Error(`not a sample value: ${text}`);
      return value;
    }
  }
}

export function parsePrometheusText(text: string): MetricsSnapshot {
  const samples: MetricSample[] = [];
  for (const [lineIndex, rawLine] of text.split('\n').entries()) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const fail = (why: string): never => {
      throw new Error(`metrics line ${lineIndex + 1}: ${why}: ${rawLine}`);
    };
    const nameMatch = SAMPLE_START.exec(line) ?? fail('no metric name');
    const name = nameMatch[1]!;
    let position = name.length;
    const labels: Record<string, string> = {};
    if (line[position] === '{') {
      position++;
      for (;;) {
        while (line[position] === ' ') position++;
        if (line[position] === '}') {
          position++;
          break;
        }
        LABEL.lastIndex = position;
        const label = LABEL.exec(line) ?? fail('bad label');
        labels[label[1]!] = unescapeLabelValue(label[2]!);
        position = LABEL.lastIndex;
        if (label[3] !== ',' && line[position] !== '}') fail('expected , or }');
      }
    }
    const [valueText] = line.slice(position).trim().split(/\s+/);
    samples.push({ name, labels, value: parseValue(valueText ?? fail('no value')) });
  }
  return new MetricsSnapshot(samples);
}

/** GETs a Prometheus endpoint and parses it. */
export async function scrapeMetrics(url: string): Promise<MetricsSnapshot> {
  const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  const body = await response.text();
  if (!response.ok) throw new Error(`GET ${url} answered ${response.status}: ${body.slice(0, 200)}`);
  return parsePrometheusText(body);
}
