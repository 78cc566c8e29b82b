/**
 * consensus/progress — the leader's view of each follower: how far it is known to match (match), what to
 * send next (next), and which of three modes replication is in:
 *   probe     — one append at a time until the follower's position is found (after election or rejection);
 *   replicate — pipelined appends, optimistic `next`, bounded by an in-flight window (messages and bytes);
 *   snapshot  — the follower needs a snapshot; bounded chunks flow one at a time.
 * The in-flight window is the flow control the issue asks for: a slow follower can never make the leader
 * buffer more than maxInflightMsgs messages / maxInflightBytes bytes for it.
 */

import { assert } from '../common/assert.js';
import type { LogIndex } from './types.js';
import { asIndex } from './types.js';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** Sliding window of (last index, bytes) of appends sent but not yet acknowledged. */
export class Inflights {
  private items: { last: LogIndex; bytes: number }[] = [];
  private totalBytes = 0;
  constructor(
    readonly maxMsgs: number,
    readonly maxBytes: number,
  ) {
    assert(maxMsgs > 0 && maxBytes > 0, 'inflight limits must be positive');
  }
  add(last: LogIndex, bytes: number): void {
    assert(!this.full(), 'adding to a full inflight window');
    const prev = this.items[this.items.length - 1];
    assert(prev === undefined || last > prev.last, 'inflight indexes must increase');
    this.items.push({ last, bytes });
    this.totalBytes += bytes;
  }
  /** Frees every message whose last index is <= `index` (acknowledged by a cumulative ack). */
  freeTo(index: LogIndex): void {
    let n = 0;
    while (n < this.items.length && this.items[n]!.last <= index) {
      this.totalBytes -= this.items[n]!.bytes;
      n++;
    }
    if (n > 0) this.items.splice(0, n);
  }
  full(): boolean {
    return this.items.length >= this.maxMsgs || this.totalBytes >= this.maxBytes;
  }
  count(): number {
    return this.items.length;
  }
  bytes(): number {
    return this.totalBytes;
  }
  reset(): void {
    this.items = [];
    this.totalBytes = 0;
  }
}

export class Progress {
  match: LogIndex = asIndex(0);
  next: LogIndex;
  state: ProgressState = 'probe';
  /** In probe state: an append is outstanding; wait for its answer (or a heartbeat answer) before another. */
  probeSent = false;
  /** Heard from since the last CheckQuorum round. */
  recentActive = false;
  /** Made replication progress since the last heartbeat round (used to recover from dropped appends). */
  progressedSinceHeartbeat = false;
  /** Consecutive heartbeat rounds without progress. */
  stalledHeartbeats = 0;
  /** Snapshot state: index of the snapshot being sent, and the byte offset the follower wants next. */
  pendingSnapshot: LogIndex = asIndex(0);
  snapshotOffset = 0;
  /**
   * Snapshot state: how many times in a row the follower refused the snapshot outright (larger than its
   * maxSnapshotBytes), how large the refused one was, and the leader tick before which it is not offered
   * again. Hosts read these to say why a follower never catches up.
   */
  snapshotRefusals = 0;
  refusedSnapshotBytes = 0;
  snapshotRetryTick = 0;
  /** Highest ReadIndex round this follower has confirmed in the current term. */
  readSeqAcked = 0;
  readonly inflights: Inflights;

  constructor(next: LogIndex, maxInflightMsgs: number, maxInflightBytes: number) {
    this.next = next;
    this.inflights = new Inflights(maxInflightMsgs, maxInflightBytes);
  }

  becomeProbe(): void {
    this.snapshotRefusals = 0;
    if (this.state === 'snapshot') {
      this.next = asIndex(Math.max(this.match + 1, this.pendingSnapshot + 1));
    } else {
      this.next = asIndex(this.match + 1);
    }
    this.state = 'probe';
    this.probeSent = false;
    this.pendingSnapshot = asIndex(0);
    this.inflights.reset();
  }

  becomeReplicate(): void {
    this.snapshotRefusals = 0;
    this.state = 'replicate';
    this.next = asIndex(this.match + 1);
    this.probeSent = false;
    this.inflights.reset();
  }

  becomeSnapshot(snapshotIndex: LogIndex): void {
    this.state = 'snapshot';
    this.pendingSnapshot = snapshotIndex;
    this.snapshotOffset = 0;
    this.probeSent = false;
    this.inflights.reset();
  }

  /** Acknowledged through `index`. Returns false for a stale (already known) acknowledgement. */
  maybeUpdate(index: LogIndex): boolean {
    let updated = false;
    if (index > this.match) {
      this.match = index;
      updated = true;
      this.probeSent = false;
      this.progressedSinceHeartbeat = true;
    }
    if (this.next < index + 1) this.next = asIndex(index + 1);
    this.inflights.freeTo(index);
    return updated;
  }

  /**
   * The follower rejected an append whose prevIndex was `rejected`; `hint` is the best guess (from the
   * term-skipping hints) of the last index that may match. Returns false if the rejection is stale.
   */
  maybeDecrTo(rejected: LogIndex, hint: LogIndex): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = asIndex(this.match + 1);
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = asIndex(Math.max(Math.min(rejected, hint + 1), this.match + 1));
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }
}
