import { RangeNotSatisfiableError } from './errors.js'

/** A satisfiable byte range: `start` inclusive, `end` exclusive. */
export interface ResolvedRange {
  start: number
  end: number
}

const RANGE_HEADER = /^bytes=(\d*)-(\d*)$/

/**
 * Resolves an HTTP `Range` header against a content size (RFC 9110 §14.1.2): `bytes=N-`,
 * `bytes=N-M` and the suffix form `bytes=-N`. Returns undefined when the whole content is wanted.
 * Multiple ranges are not supported and are refused like an unsatisfiable range.
 */
export function resolveRange(header: string | undefined, size: number): ResolvedRange | undefined {
  if (header === undefined) return undefined
  const match = RANGE_HEADER.exec(header.trim())
  const unsatisfiable = () =>
    new RangeNotSatisfiableError(`range ${JSON.stringify(header.slice(0, 100))} cannot be satisfied for ${size} bytes`, {
      detail: { range: header.slice(0, 100), size },
    })
  if (!match) throw unsatisfiable()
  const [, first, last] = match as unknown as [string, string, string]
  if (first === '' && last === '') throw unsatisfiable()
  if (first === '') {
    const suffix = Number(last)
    if (!Number.isSafeInteger(suffix) || suffix === 0 || size === 0) throw unsatisfiable()
    return { start: Math.max(0, size - suffix), end: size }
  }
  const start = Number(first)
  if (!Number.isSafeInteger(start) || start >= size) throw unsatisfiable()
  if (last === '') return { start, end: size }
  const inclusiveEnd = Number(last)
  if (!Number.isSafeInteger(inclusiveEnd) || inclusiveEnd < start) throw unsatisfiable()
  return { start, end: Math.min(inclusiveEnd + 1, size) }
}
