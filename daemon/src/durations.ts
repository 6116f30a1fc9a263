const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/

/** `250ms`, `3s`, `1.5m`, `2h`, or a bare number of milliseconds. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined
  const match = DURATION.exec(value.trim())
  if (!match) return undefined
  return Math.round(Number(match[1]) * UNIT_MS[match[2]!]!)
}
