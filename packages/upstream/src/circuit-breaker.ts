import type { Clock } from '@ferry/interfaces'
import { UpstreamUnavailableError } from '@ferry/oci'
import type { CircuitBreakerConfig } from './config.js'

export type BreakerState = 'closed' | 'open' | 'half-open'

/**
 * Skips an upstream that keeps failing. After `failureThreshold` consecutive failed operations
 * the breaker opens: operations fail fast with UpstreamUnavailableError, without a request, for
 * `openMs`. Then it is half-open: one operation is let through as a probe (the others still fail
 * fast); its success closes the breaker, its failure opens it for another `openMs`.
 *
 * What counts is decided by the caller: any sensible answer (including a 404 or a refusal of
 * credentials) is a success, since the upstream is up; connection failures, timeouts, 5xx, 429
 * and nonsense are failures; an operation the caller aborted counts for nothing.
 */
export class CircuitBreaker {
  private consecutiveFailures = 0
  /** Epoch milliseconds until which the breaker is open; undefined while closed. */
  private openUntil: number | undefined
  private probeInFlight = false

  constructor(
    private readonly upstream: string,
    private readonly config: CircuitBreakerConfig,
    private readonly clock: Clock,
    private readonly onStateChange: (state: BreakerState, consecutiveFailures: number) => void = () => {},
  ) {}

  get state(): BreakerState {
    if (this.openUntil === undefined) return 'closed'
    return this.clock.now() < this.openUntil ? 'open' : 'half-open'
  }

  /**
   * Admits an operation or throws UpstreamUnavailableError. Every admitted operation must end
   * with exactly one of `success`, `failure` or `neutral`, given the returned ticket.
   */
  admit(): BreakerTicket {
    if (this.openUntil === undefined) return { probe: false }
    const now = this.clock.now()
    if (now < this.openUntil || this.probeInFlight) {
      const retryAt = Math.max(this.openUntil, now)
      throw new UpstreamUnavailableError(
        `upstream ${this.upstream} is skipped after ${this.consecutiveFailures} consecutive failures (circuit breaker open)`,
        { detail: { upstream: this.upstream, breaker: 'open', retryAt: new Date(retryAt).toISOString() } },
      )
    }
    this.probeInFlight = true
    this.onStateChange('half-open', this.consecutiveFailures)
    return { probe: true }
  }

  success(ticket: BreakerTicket): void {
    if (ticket.probe) this.probeInFlight = false
    const wasOpen = this.openUntil !== undefined
    this.consecutiveFailures = 0
    this.openUntil = undefined
    if (wasOpen) this.onStateChange('closed', 0)
  }

  failure(ticket: BreakerTicket): void {
    if (ticket.probe) this.probeInFlight = false
    this.consecutiveFailures++
    if (this.consecutiveFailures >= this.config.failureThreshold && (ticket.probe || this.openUntil === undefined)) {
      this.openUntil = this.clock.now() + this.config.openMs
      this.onStateChange('open', this.consecutiveFailures)
    }
  }

  neutral(ticket: BreakerTicket): void {
    if (ticket.probe) this.probeInFlight = false
  }
}

export interface BreakerTicket {
  readonly probe: boolean
}
