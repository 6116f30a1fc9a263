import type { Clock } from '@ferry/interfaces'

/** Peers that were slow, failed or served corrupt content, skipped until their penalty ends. */
export class PenaltyBox {
  private readonly until = new Map<string, number>()
  private readonly clock: Clock
  private readonly penaltyMs: number

  constructor(clock: Clock, penaltyMs: number) {
    this.clock = clock
    this.penaltyMs = penaltyMs
  }

  penalise(peerId: string): void {
    this.until.set(peerId, this.clock.now() + this.penaltyMs)
  }

  isPenalised(peerId: string): boolean {
    const until = this.until.get(peerId)
    if (until === undefined) return false
    if (until > this.clock.now()) return true
    this.until.delete(peerId)
    return false
  }

  list(): string[] {
    return [...this.until.keys()].filter((peerId) => this.isPenalised(peerId))
  }
}
