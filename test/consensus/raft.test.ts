/**
 * Paper-claim tests: each rule of the Raft paper's Figure 2, the Figure 8 scenario, and the known traps
 * (stale read from a deposed leader, a vote for a shorter log, counting replicas of a previous-term entry,
 * a rejoining node disrupting the cluster without PreVote), plus the features beyond the paper: transfer,
 * membership, chunked snapshots, flow control and fast back-tracking. Scripted on the hand-driven Harness.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AppendResponse, Message, VoteResponse } from '../../src/consensus/index.js';
import { asIndex, asNodeId, asTerm, bootstrapSnapshot, NO_NODE } from '../../src/consensus/index.js';
import { FORWARDED_READ_TIMEOUT_ELECTIONS } from '../../src/consensus/raft.js';
import { bytes, commands, Harness } from './harness.js';

const votesOnly = (group: number[]) => (m: Message) =>
  (m.type === 'vote' || m.type === 'voteResp' || m.type === 'preVote' || m.type === 'preVoteResp') &&
  group.includes(m.from) &&
  group.includes(m.to);

function electWith(h: Harness, id: number, keep: (m: Message) => boolean): void {
  const n = h.node(id);
  for (let i = 0; i < 8 * n.cfg.electionTicks && n.raft.status().role !== 'leader'; i++) {
    n.raft.tick();
    h.deliver(keep);
  }
  assert.equal(n.raft.status().role, 'leader', `node ${id} should have won`);
}

/** An append acknowledgement carrying `term`: how a server hears of a newer term without a campaign. */
function ackAtTerm(from: number, to: number, term: number): AppendResponse {
  return {
    type: 'appendResp',
    from: asNodeId(from),
    to: asNodeId(to),
    term: asTerm(term),
    reject: false,
    index: asIndex(0),
    hintIndex: asIndex(0),
    hintTerm: asTerm(0),
  };
}

test('Figure 2, all servers: a message with a higher term makes any server a follower of that term', () => {
  const h = new Harness(3);
  h.elect(1);
  const t = h.raft(1).status().term;
  h.raft(1).step(ackAtTerm(2, 1, t + 5));
  assert.equal(h.raft(1).status().role, 'follower');
  assert.equal(h.raft(1).status().term, t + 5);
  assert.equal(h.raft(1).status().vote, NO_NODE);
});

test('Figure 2, followers: with no leader the election timeout (randomized in [T, 2T)) starts a campaign', () => {
  const h = new Harness(3, { preVote: false });
  const r = h.raft(1);
  let ticks = 0;
  while (r.status().role === 'follower') {
    r.tick();
    ticks++;
  }
  assert.equal(r.status().role, 'candidate');
  assert.ok(ticks >= 10 && ticks < 20, `campaigned after ${ticks} ticks`);
  assert.equal(r.status().term, 1);
  assert.equal(r.status().vote, 1, 'a candidate votes for itself');
});

test('Figure 2, leaders: commands are replicated, committed and applied in log order on every server', () => {
  const h = new Harness(3);
  h.elect(1);
  for (const c of ['a', 'b', 'c']) assert.ok(h.raft(1).propose(bytes(c)).ok);
  h.deliver();
  h.tickAll(2);
  h.deliver();
  for (const id of [1, 2, 3]) assert.deepEqual(commands(h.node(id)), ['a', 'b', 'c'], `node ${id}`);
  // A follower refuses proposals and names the leader.
  const r = h.raft(2).propose(bytes('x'));
  assert.deepEqual(r, { ok: false, code: 'not_leader', leader: 1 });
});

test('Figure 2, AppendEntries receiver: stale term, missing prevLog, conflicts truncated, commit bounded', () => {
  const h = new Harness(3);
  const f = h.raft(2);
  const base = { from: asNodeId(1), to: asNodeId(2) };
  const e = (index: number, term: number, s: string) =>
    ({ kind: 'normal', index: asIndex(index), term: asTerm(term), data: bytes(s) }) as const;
  const append = (
    term: number,
    prevIndex: number,
    prevTerm: number,
    entries: ReturnType<typeof e>[],
    commit: number,
  ) =>
    f.step({
      ...base,
      type: 'append',
      term: asTerm(term),
      prevIndex: asIndex(prevIndex),
      prevTerm: asTerm(prevTerm),
      entries,
      commit: asIndex(commit),
    });
  const lastResp = (): AppendResponse => {
    const rd = f.ready();
    f.advance(rd);
    const m = rd.messages.filter((x): x is AppendResponse => x.type === 'appendResp');
    return m[m.length - 1]!;
  };
  append(2, 0, 0, [e(1, 1, 'a'), e(2, 2, 'b'), e(3, 2, 'c')], 0);
  assert.equal(lastResp().index, 3);
  // 1. Reply false if term < currentTerm (the reply carries our newer term).
  append(1, 3, 2, [], 0);
  let r = lastResp();
  assert.equal(r.term, 2);
  // 2. Reply false if the log has no entry at prevLogIndex with prevLogTerm.
  append(2, 5, 2, [], 0);
  r = lastResp();
  assert.ok(r.reject);
  assert.equal(r.hintIndex, 3, 'hint points at our last index');
  // 3+4. A conflicting entry and all after it are deleted; new entries appended.
  append(3, 1, 1, [e(2, 3, 'B')], 0);
  r = lastResp();
  assert.ok(!r.reject);
  assert.equal(f.status().lastIndex, 2);
  assert.equal(f.logEntry(asIndex(2))?.term, 3);
  // A stale duplicate of an older append must not truncate what a later append added.
  append(3, 0, 0, [e(1, 1, 'a')], 0);
  assert.equal(f.status().lastIndex, 2);
  // 5. commitIndex = min(leaderCommit, index of last new entry).
  append(3, 1, 1, [], 9);
  lastResp();
  assert.equal(f.status().commit, 1);
});

test('Figure 2, RequestVote receiver: lower term refused, one vote per term, shorter logs refused (and the planted bug grants it)', () => {
  for (const bug of [false, true]) {
    const h = new Harness(3, { preVote: false, checkQuorum: false }, 1, { voteWithoutLogCheck: bug });
    h.elect(1);
    assert.ok(h.raft(1).propose(bytes('x')).ok);
    h.deliver();
    const voter = h.raft(2);
    const t = voter.status().term;
    const ask = (from: number, term: number, lastIndex: number, lastTerm: number): VoteResponse => {
      voter.step({
        type: 'vote',
        from: asNodeId(from),
        to: asNodeId(2),
        term: asTerm(term),
        lastIndex: asIndex(lastIndex),
        lastTerm: asTerm(lastTerm),
        transfer: false,
      });
      const rd = voter.ready();
      voter.advance(rd);
      return rd.messages.find((m): m is VoteResponse => m.type === 'voteResp')!;
    };
    assert.equal(ask(3, t - 1, 99, t).granted, false, 'lower term');
    // The candidate's log ends before ours: a shorter log.
    const shorter = ask(3, t + 1, 1, t);
    assert.equal(shorter.granted, bug, bug ? 'bug grants a vote to a shorter log' : 'shorter log refused');
    if (!bug) {
      assert.equal(ask(3, t + 2, 10, t).granted, true, 'an up-to-date log gets the vote');
      assert.equal(ask(1, t + 2, 10, t).granted, false, 'one vote per term');
      assert.equal(ask(3, t + 2, 10, t).granted, true, 'the same candidate may ask again');
    }
  }
});

test('persistence before response: a vote leaves in the same Ready as the hard state recording it', () => {
  const h = new Harness(3, { preVote: false });
  const voter = h.raft(2);
  voter.step({
    type: 'vote',
    from: asNodeId(1),
    to: asNodeId(2),
    term: asTerm(1),
    lastIndex: asIndex(0),
    lastTerm: asTerm(0),
    transfer: false,
  });
  const rd = voter.ready();
  assert.ok(rd.messages.some((m) => m.type === 'voteResp' && m.granted));
  assert.deepEqual(rd.hardState, { term: 1, vote: 1, commit: 0 });
  assert.ok(rd.mustSync);
  voter.advance(rd);
});

test('Figure 8: a previous-term entry is never committed by counting (and the planted bug loses it)', () => {
  for (const bug of [false, true]) {
    const h = new Harness(
      5,
      { preVote: false, checkQuorum: false, maxEntriesPerAppend: 1, maxInflightMsgs: 1 },
      3,
      {
        commitPreviousTermByCounting: bug,
      },
    );
    // (a) S1 leads term 1 and replicates X (index 2) to S2 only.
    h.elect(1);
    assert.ok(h.raft(1).propose(bytes('X')).ok);
    h.deliver((m) => m.type !== 'append' || m.to === 2);
    assert.equal(h.raft(2).logEntry(asIndex(2))?.term, 1);
    h.crash(1);
    // (b) S5 wins term 2 with votes from S3 and S4; its no-op (index 2) reaches nobody.
    electWith(h, 5, votesOnly([3, 4, 5]));
    assert.equal(h.raft(5).logEntry(asIndex(2))?.term, 2);
    h.crash(5);
    // (c) S1 returns and wins term 3 (S2, S3 vote); it replicates X to S3 one entry at a time, and S2
    //     (which has X) acknowledges it too, so S1 knows a majority stores X.
    h.restart(1);
    electWith(h, 1, votesOnly([1, 2, 3]));
    h.inFlight = [];
    h.raft(1).tick(); // heartbeat round; replies trigger probes
    for (let round = 0; round < 20 && (h.raft(1).peerProgress(asNodeId(3))?.match ?? 0) < 2; round++) {
      h.deliver((m) => (m.from === 1 && m.to !== 4) || ((m.from === 2 || m.from === 3) && m.to === 1), 1);
    }
    assert.equal(
      h.raft(1).peerProgress(asNodeId(3))?.match,
      2,
      'S3 now stores X: a majority (S1, S2, S3) has it',
    );
    h.flush();
    const committed = h.raft(1).status().commit;
    assert.equal(
      committed,
      bug ? 2 : 1,
      bug ? 'the bug commits X by counting' : 'X is not committed by counting',
    );
    const s1AppliedX = commands(h.node(1)).includes('X');
    // (d) S1 crashes; S5 wins term 4 (S2, S3, S4 vote: its last term 2 beats their 1) and overwrites index 2.
    h.crash(1);
    h.restart(5);
    electWith(h, 5, votesOnly([2, 3, 4, 5]));
    h.deliverWithin([2, 3, 4, 5]);
    h.tickAll(1);
    h.deliverWithin([2, 3, 4, 5]);
    assert.notEqual(h.raft(3).logEntry(asIndex(2))?.term, 1, 'X was overwritten on S3');
    assert.ok(!commands(h.node(3)).includes('X'));
    // With the bug S1 applied X at index 2 while the others apply S5's no-op there: State Machine Safety broken.
    assert.equal(s1AppliedX, bug);
  }
});

test('trap: a deposed leader never serves a stale ReadIndex read; a lease read would (its documented assumption)', () => {
  for (const readMode of ['safe', 'lease'] as const) {
    const h = new Harness(3, { readMode, checkQuorum: true });
    h.elect(1);
    h.tickAll(1);
    h.deliver();
    // S1 is cut off; S2 and S3 elect one of themselves, which commits a write.
    const newLeader = () => [2, 3].find((id) => h.raft(id).status().role === 'leader');
    for (let i = 0; i < 40 && newLeader() === undefined; i++) {
      h.raft(2).tick();
      h.raft(3).tick();
      h.deliverWithin([2, 3]);
    }
    const winner = newLeader();
    assert.ok(winner !== undefined);
    assert.ok(h.raft(winner).propose(bytes('new')).ok);
    h.deliverWithin([2, 3]);
    // S1 still believes it leads (it has not ticked long enough to notice); a read on it:
    assert.equal(h.raft(1).status().role, 'leader');
    assert.ok(h.raft(1).readIndex('r1').ok);
    h.deliverWithin([1]);
    const stale = h.node(1).readStates.find((r) => r.ctx === 'r1');
    if (readMode === 'safe') {
      assert.equal(stale, undefined, 'no read state without a quorum of heartbeat acks');
      // When it hears the newer term it steps down and the read fails explicitly.
      h.deliver();
      h.tickAll(1);
      h.deliver();
      assert.notEqual(h.raft(1).status().role, 'leader');
      assert.ok(h.node(1).failedReads.includes('r1'));
      assert.equal(h.node(1).readStates.length, 0);
    } else {
      assert.ok(stale !== undefined, 'lease mode answers at once, trusting bounded clock drift');
    }
  }
});

test('lease reads: served at once while a majority answered recently; once the lease lapses, a cut-off leader falls back to ReadIndex', () => {
  const h = new Harness(3, { readMode: 'lease', checkQuorum: true });
  h.elect(1);
  h.tickAll(1);
  h.deliver();
  assert.ok(h.raft(1).readIndex('fresh').ok);
  h.flush();
  assert.ok(
    h.node(1).readStates.some((r) => r.ctx === 'fresh'),
    'lease held: answered without a round trip',
  );
  // Cut off (its clock keeps running): after electionTicks - margin ticks without answers the lease is gone.
  for (let i = 0; i < 8; i++) {
    h.raft(1).tick();
    h.deliver(() => false);
  }
  assert.equal(h.raft(1).status().role, 'leader');
  assert.ok(h.raft(1).readIndex('late').ok);
  h.deliver(() => false);
  assert.ok(!h.node(1).readStates.some((r) => r.ctx === 'late'), 'expired lease: no answer without a quorum');
  // Once the others answer again, the read completes through the ReadIndex round.
  h.deliver();
  h.tick(1);
  h.deliver();
  assert.ok(h.node(1).readStates.some((r) => r.ctx === 'late'));
});

test('trap: a rejoining node disrupts the leader without PreVote, and does not with it', () => {
  for (const preVote of [false, true]) {
    const h = new Harness(3, { preVote, checkQuorum: false });
    h.elect(1);
    const term = h.raft(1).status().term;
    // S3 is isolated and times out repeatedly.
    for (let i = 0; i < 100; i++) {
      h.raft(3).tick();
      h.deliver(() => false);
    }
    assert.equal(
      h.raft(3).status().term > term,
      !preVote,
      'only without PreVote does the isolated node bump its term',
    );
    // It rejoins.
    h.raft(3).tick();
    h.deliver();
    h.tickAll(1);
    h.deliver();
    if (preVote) {
      assert.equal(h.raft(1).status().role, 'leader');
      assert.equal(h.raft(1).status().term, term, 'leader undisturbed');
    } else {
      assert.ok(h.raft(1).status().term > term, 'the leader was forced into a new term');
    }
  }
});

test('CheckQuorum: a leader that cannot reach a majority steps down', () => {
  const h = new Harness(3, { checkQuorum: true });
  h.elect(1);
  for (let i = 0; i < 25; i++) {
    h.raft(1).tick();
    h.deliver(() => false);
  }
  assert.equal(h.raft(1).status().role, 'follower');
});

test('leadership transfer: TimeoutNow hands leadership over; proposals are refused meanwhile', () => {
  const h = new Harness(3);
  h.elect(1);
  const term = h.raft(1).status().term;
  assert.ok(h.raft(1).transferLeader(asNodeId(2)).ok);
  assert.deepEqual(h.raft(1).propose(bytes('x')), { ok: false, code: 'transferring' });
  h.deliver();
  assert.equal(h.raft(2).status().role, 'leader');
  assert.equal(h.raft(2).status().term, term + 1);
  assert.equal(h.raft(1).status().role, 'follower');
});

test('membership: changes wait for a current-term commit and for the previous change; learners never count', () => {
  const h = new Harness(3);
  // Just elected, before its no-op commits: refused (the single-server safety fix).
  for (let i = 0; i < 30 && h.raft(1).status().role !== 'leader'; i++) {
    h.raft(1).tick();
    h.deliver((m) => m.type !== 'append' && m.type !== 'appendResp');
  }
  assert.equal(h.raft(1).status().role, 'leader');
  const early = h.raft(1).proposeConfChange({ type: 'addLearner', node: asNodeId(4) });
  assert.equal(early.ok ? 'ok' : early.code, 'not_ready');
  h.tick(1); // a heartbeat round re-probes the followers; the no-op commits
  h.deliver();
  h.add(asNodeId(4), bootstrapSnapshot([]));
  assert.ok(h.raft(1).proposeConfChange({ type: 'addLearner', node: asNodeId(4) }).ok);
  const second = h.raft(1).proposeConfChange({ type: 'promote', node: asNodeId(4) });
  assert.equal(second.ok ? 'ok' : second.code, 'config_pending');
  h.deliver();
  assert.deepEqual(h.raft(4).status().config.learners, [4]);
  // With S2 and S3 down, the learner's acknowledgement does not make a majority.
  h.crash(2);
  h.crash(3);
  const p = h.raft(1).propose(bytes('needs-voters'));
  assert.ok(p.ok);
  h.deliver();
  assert.ok(h.raft(1).status().commit < p.index);
  assert.equal(h.raft(4).status().lastIndex, p.index, 'the learner did receive it');
  assert.equal(h.raft(4).status().role, 'follower');
  // A learner never campaigns.
  for (let i = 0; i < 50; i++) h.raft(4).tick();
  assert.equal(h.raft(4).status().role, 'follower');
});

/** S3 is down while ten commands commit; leader S1 then compacts them into a 40-byte snapshot. */
function compactedWhileS3Down() {
  const h = new Harness(3, { maxSnapshotChunkBytes: 7 });
  h.elect(1);
  h.crash(3);
  for (let i = 0; i < 10; i++) h.raft(1).propose(bytes(`c${i}`));
  h.deliver();
  const leader = h.raft(1);
  const applied = leader.status().applied;
  const data = bytes('state-machine-image-of-40-bytes........!');
  leader.compact(applied, data);
  return { h, leader, applied, data };
}

test('snapshots: a lagging follower gets a compacted log as a snapshot in bounded chunks', () => {
  const { h, leader, applied, data } = compactedWhileS3Down();
  assert.equal(leader.status().firstIndex, applied + 1);
  h.restart(3);
  const chunks: number[] = [];
  // The leader notices within a few heartbeat rounds that its pipelined appends to S3 were lost.
  for (let i = 0; i < 6; i++) {
    h.tick(1);
    h.deliver((m) => {
      if (m.type === 'snapshotChunk') chunks.push(m.data.byteLength);
      return true;
    });
  }
  assert.ok(chunks.length >= Math.ceil(data.byteLength / 7), `sent in ${chunks.length} chunks`);
  assert.ok(chunks.every((n) => n <= 7));
  assert.deepEqual(h.node(3).snapshot.data, data);
  assert.equal(h.raft(3).status().snapshotIndex, applied);
  assert.ok(h.raft(1).propose(bytes('after')).ok);
  h.deliver();
  h.tickAll(1);
  h.deliver();
  assert.deepEqual(commands(h.node(3)), ['after']);
});

test('flow control: a silent follower is sent at most maxInflightMsgs appends', () => {
  const h = new Harness(3, { maxInflightMsgs: 2, maxEntriesPerAppend: 1 });
  h.elect(1);
  const sent: Message[] = [];
  for (let i = 0; i < 20; i++) {
    h.raft(1).propose(bytes(`p${i}`));
    h.deliver((m) => {
      if (m.type === 'append' && m.to === 3 && m.entries.length > 0) sent.push(m);
      return m.to !== 3 && m.from !== 3;
    });
  }
  assert.ok(sent.length <= 2, `sent ${sent.length} appends to a follower that never answered`);
  assert.ok(h.raft(1).status().commit >= 20, 'the others still make progress');
});

test('fast back-tracking: a follower with a long divergent term is repaired in a few round trips', () => {
  const h = new Harness(3, { checkQuorum: false, preVote: true, maxEntriesPerAppend: 1000 });
  h.elect(1);
  // S1, cut off, appends 50 entries nobody else gets.
  for (let i = 0; i < 50; i++) h.raft(1).propose(bytes(`lost${i}`));
  h.deliver(() => false);
  for (let i = 0; i < 40 && h.raft(2).status().role !== 'leader'; i++) {
    h.raft(2).tick();
    h.raft(3).tick();
    h.deliverWithin([2, 3]);
  }
  for (let i = 0; i < 50; i++) h.raft(2).propose(bytes(`kept${i}`));
  h.deliverWithin([2, 3]);
  let rejections = 0;
  h.tickAll(1);
  h.deliver((m) => {
    if (m.type === 'appendResp' && m.reject && m.from === 1) rejections++;
    return true;
  });
  h.tickAll(1);
  h.deliver();
  assert.ok(rejections <= 2, `${rejections} rejections`);
  assert.equal(h.raft(1).status().lastIndex, h.raft(2).status().lastIndex);
  assert.equal(h.raft(1).logEntry(asIndex(h.raft(1).status().lastIndex))?.term, h.raft(2).status().term);
});

test('ReadIndex on a follower: forwarded to the leader, answered on the follower with the leader commit index', () => {
  const h = new Harness(3);
  h.elect(1);
  assert.ok(h.raft(1).propose(bytes('w')).ok);
  h.deliver();
  const commit = h.raft(1).status().commit;
  assert.ok(h.raft(2).readIndex('f1').ok);
  h.deliver();
  const rs = h.node(2).readStates.find((r) => r.ctx === 'f1');
  assert.ok(rs !== undefined);
  assert.equal(rs.index, commit);
  // With no known leader the follower refuses at once.
  const lone = new Harness(3);
  assert.deepEqual(lone.raft(2).readIndex('x'), { ok: false, code: 'no_leader' });
});

test('limits: a proposal over maxBytesPerAppend is too_large; uncommitted bytes beyond the limit are overloaded', () => {
  const h = new Harness(3, { maxBytesPerAppend: 1000, maxUncommittedBytes: 2000 });
  h.elect(1);
  assert.deepEqual(h.raft(1).propose(new Uint8Array(1001)), { ok: false, code: 'too_large' });
  let accepted = 0;
  let refused = 0;
  for (let i = 0; i < 10; i++) {
    const r = h.raft(1).propose(new Uint8Array(900));
    if (r.ok) accepted++;
    else if (r.code === 'overloaded') refused++;
  }
  assert.ok(accepted >= 2 && accepted <= 3, `${accepted} accepted`);
  assert.equal(refused, 10 - accepted);
  h.deliver(); // commit drains the budget
  assert.ok(h.raft(1).propose(new Uint8Array(900)).ok);
});

test('membership: a leader that removes itself steps down once the removal commits; the rest elect a leader', () => {
  const h = new Harness(3);
  h.elect(1);
  h.tickAll(1);
  h.deliver();
  assert.ok(h.raft(1).proposeConfChange({ type: 'remove', node: asNodeId(1) }).ok);
  h.deliver();
  assert.notEqual(h.raft(1).status().role, 'leader');
  assert.deepEqual([...h.raft(2).status().config.voters].sort(), [2, 3]);
  h.crash(1);
  for (let i = 0; i < 60 && h.leaders().length === 0; i++) {
    h.tickAll(1);
    h.deliver();
  }
  const [leader] = h.leaders();
  assert.ok(leader !== undefined && leader.id !== 1);
  assert.ok(leader.raft.propose(bytes('after-removal')).ok);
  h.deliver();
  h.tickAll(1);
  h.deliver();
  assert.ok(commands(h.node(2)).includes('after-removal'));
});

test('leadership transfer to an unreachable node is abandoned after an election timeout', () => {
  const h = new Harness(3, { checkQuorum: false });
  h.elect(1);
  h.crash(3);
  assert.ok(h.raft(1).propose(bytes('x')).ok);
  h.deliver();
  assert.ok(h.raft(1).transferLeader(asNodeId(3)).ok);
  assert.deepEqual(h.raft(1).propose(bytes('y')), { ok: false, code: 'transferring' });
  for (let i = 0; i < 12; i++) {
    h.raft(1).tick();
    h.deliver();
  }
  assert.equal(h.raft(1).status().role, 'leader');
  assert.equal(h.raft(1).status().transferee, NO_NODE);
  assert.ok(h.raft(1).propose(bytes('z')).ok);
});

test('commit: acks that move the commit index send no empty append; the next entries and heartbeats carry it', () => {
  const h = new Harness(3);
  h.elect(1);
  h.deliver();
  // Two proposals sent in two appends, so every follower acknowledges twice.
  h.raft(1).propose(bytes('a'));
  h.flush();
  const p = h.raft(1).propose(bytes('b'));
  assert.ok(p.ok);
  h.flush();
  const appends = h.inFlight;
  h.inFlight = [];
  assert.equal(appends.filter((m) => m.type === 'append').length, 4);
  for (const m of appends) h.raft(m.to).step(m);
  for (const id of [2, 3]) {
    const rd = h.raft(id).ready();
    h.raft(id).advance(rd);
    h.inFlight.push(...rd.messages);
  }
  const acks = h.inFlight;
  h.inFlight = [];
  assert.equal(acks.filter((m) => m.type === 'appendResp').length, 4);
  // Every ack steps in before the leader's next Ready; the commit index moves (twice) meanwhile.
  for (const m of acks) h.raft(1).step(m);
  assert.equal(h.raft(1).status().commit, p.index);
  const rd = h.raft(1).ready();
  assert.deepEqual(
    [...rd.earlyMessages, ...rd.messages].filter((m) => m.type === 'append'),
    [],
    'followers that hold every entry get no append that would carry only the commit index',
  );
  h.raft(1).advance(rd);
  // The next proposal's appends carry the commit index...
  const q = h.raft(1).propose(bytes('c'));
  assert.ok(q.ok);
  const next = h.raft(1).ready();
  assert.deepEqual(
    [...next.earlyMessages, ...next.messages].map((m) => [m.to, m.type === 'append' ? m.commit : -1]),
    [
      [2, p.index],
      [3, p.index],
    ],
  );
  h.raft(1).advance(next);
  // ...and so does a heartbeat, bounded by what the follower holds.
  h.flush();
  h.inFlight = [];
  h.tick(1);
  const beats = h.inFlight.filter((m) => m.type === 'heartbeat');
  assert.ok(beats.length > 0, 'a heartbeat round');
  for (const m of beats) assert.ok(m.type === 'heartbeat' && m.commit >= p.index);
});

test('snapshot chunks: one transfer per sender, term and size; bytes of two leaders are never joined', () => {
  const h = new Harness(3);
  const follower = h.raft(3);
  const meta = {
    index: asIndex(10),
    term: asTerm(5),
    config: { voters: [1, 2, 3].map(asNodeId), learners: [] },
  };
  const chunk = (from: number, term: number, offset: number, text: string, totalBytes = 8) =>
    follower.step({
      type: 'snapshotChunk',
      from: asNodeId(from),
      to: asNodeId(3),
      term: asTerm(term),
      meta,
      totalBytes,
      offset,
      data: bytes(text),
    });
  // Leader 1 (term 5) sends the first half, then dies; leader 2 (term 6), whose snapshot has the same
  // index and term but not the same bytes, is told to go on from where the follower stands.
  chunk(1, 5, 0, 'AAAA');
  chunk(2, 6, 4, 'BBBB');
  h.flush();
  assert.equal(follower.status().snapshotIndex, 0, 'half of one leader and half of another: not installed');
  chunk(2, 6, 0, 'CCCC');
  chunk(2, 6, 4, 'DDDD');
  h.flush();
  assert.equal(follower.status().snapshotIndex, 10);
  assert.deepEqual(h.node(3).snapshot.data, bytes('CCCCDDDD'));

  // A sender that changes the size mid-transfer starts a new one (it overflowed the buffer: a throw
  // inside step).
  const h2 = new Harness(3);
  const other = h2.raft(3);
  const step = (offset: number, text: string, totalBytes: number) =>
    other.step({
      type: 'snapshotChunk',
      from: asNodeId(1),
      to: asNodeId(3),
      term: asTerm(5),
      meta,
      totalBytes,
      offset,
      data: bytes(text),
    });
  step(0, 'AAAA', 8);
  assert.doesNotThrow(() => step(4, 'B'.repeat(50), 100));
  h2.flush();
  assert.equal(other.status().snapshotIndex, 0);
});

test('ReadIndex forwarded by a follower: a leadership change fails it at once, with one outcome only', () => {
  const h = new Harness(3);
  h.elect(1);
  const term = h.raft(2).status().term;
  assert.ok(h.raft(2).readIndex('f1').ok);
  // The request is held on the way to S1; meanwhile S1 hands leadership to S3 (TimeoutNow), whose
  // election moves S2 to the next term. S2 does not tick: no timeout of its own plays a part.
  let held: Message | undefined;
  h.raft(1).transferLeader(asNodeId(3));
  h.deliver((m) => {
    if (m.type !== 'readIndex') return true;
    held = m;
    return false;
  });
  assert.equal(h.raft(3).status().role, 'leader');
  assert.ok(h.raft(2).status().term > term);
  assert.deepEqual(h.node(2).failedReads, ['f1'], 'failed when its leader was no longer S2 leader');
  // The request reaching S1 late is refused there; S2 has ended the read already and ignores that.
  assert.ok(held !== undefined);
  h.raft(1).step(held);
  h.deliver();
  assert.deepEqual(h.node(2).failedReads, ['f1']);
  assert.equal(h.node(2).readStates.length, 0);
});

test('ReadIndex: a leader stepping down rejects the reads followers forwarded to it, in the term it led', () => {
  const h = new Harness(3);
  h.elect(1);
  const term = h.raft(1).status().term;
  assert.ok(h.raft(2).readIndex('f2').ok);
  // S1 takes the request, but the heartbeat answers that would confirm it are lost: it stays pending.
  h.deliver((m) => m.type !== 'heartbeatResp');
  assert.equal(h.node(2).failedReads.length + h.node(2).readStates.length, 0);
  // S1 hears of a newer term (an election S2 has not heard of) and steps down.
  h.raft(1).step(ackAtTerm(3, 1, term + 1));
  assert.equal(h.raft(1).status().role, 'follower');
  const sent: Message[] = [];
  h.deliver((m) => {
    if (m.type === 'readIndexResp') sent.push(m);
    return m.type === 'readIndexResp';
  });
  assert.deepEqual(
    sent.map((m) => [m.to, m.term, m.type === 'readIndexResp' && m.reject]),
    [[2, term, true]],
  );
  // S2, still in S1's term and still following it, fails the read now instead of waiting it out.
  assert.equal(h.raft(2).status().term, term);
  assert.equal(h.raft(2).status().leader, 1);
  assert.deepEqual(h.node(2).failedReads, ['f2']);
});

test('ReadIndex forwarded by a follower: unanswered for its timeout it fails; a late answer is ignored; bounded', () => {
  const h = new Harness(3, { maxPendingReads: 2 });
  h.elect(1);
  const timeoutTicks = FORWARDED_READ_TIMEOUT_ELECTIONS * h.node(2).cfg.electionTicks;
  const lost: Message[] = [];
  assert.ok(h.raft(2).readIndex('lost-request').ok);
  h.deliver((m) => m.type !== 'readIndex');
  assert.ok(h.raft(2).readIndex('lost-answer').ok);
  h.deliver((m) => {
    if (m.type !== 'readIndexResp') return true;
    lost.push(m);
    return false;
  });
  assert.equal(lost.length, 1);
  assert.deepEqual(h.raft(2).readIndex('third'), { ok: false, code: 'overloaded' });
  // Heartbeats keep flowing, so S2 keeps its leader: only the reads' own time runs out.
  for (let i = 1; i < timeoutTicks; i++) {
    h.tickAll(1);
    h.deliver((m) => m.type !== 'readIndex');
  }
  assert.deepEqual(h.node(2).failedReads, []);
  h.tickAll(1);
  h.deliver((m) => m.type !== 'readIndex');
  assert.equal(h.raft(2).status().leader, 1);
  assert.deepEqual(h.node(2).failedReads, ['lost-request', 'lost-answer']);
  h.raft(2).step(lost[0]!);
  h.flush();
  assert.deepEqual(h.node(2).readStates, [], 'an answer after the failure is not a second outcome');
  assert.ok(h.raft(2).readIndex('again').ok, 'the ended reads no longer count towards the bound');
  h.deliver();
  assert.ok(h.node(2).readStates.some((r) => r.ctx === 'again'));
});

test('snapshot refused by a follower (maxSnapshotBytes): offered again only after a doubling backoff, reported, installed once allowed', () => {
  const { h, leader, data } = compactedWhileS3Down();
  const s3 = h.node(3);
  const allowed = s3.cfg;
  s3.cfg = { ...allowed, maxSnapshotBytes: 16 };
  h.restart(3);
  const { electionTicks } = h.node(1).cfg;
  const offers: number[] = [];
  const run = (from: number, ticks: number) => {
    for (let t = from; t < from + ticks; t++) {
      h.tick(1);
      h.deliver((m) => {
        if (m.type === 'snapshotChunk' && m.to === 3 && m.offset === 0) offers.push(t);
        return true;
      });
    }
  };
  run(0, 200);
  // Once per backoff, not once per round trip (before, every refusal was answered with chunk 0 at once).
  const seen = `${offers.length} offers, at ticks ${offers.slice(0, 12).join(',')}`;
  assert.ok(offers.length >= 4 && offers.length <= 6, seen);
  const gaps = offers.slice(1).map((t, i) => t - offers[i]!);
  assert.deepEqual(
    gaps,
    gaps.map((_, i) => electionTicks * 2 ** i),
    seen,
  );
  const pr = leader.peerProgress(asNodeId(3));
  assert.equal(pr?.snapshotRefusals, offers.length, 'the refusals are visible to the host');
  assert.equal(pr?.refusedSnapshotBytes, data.byteLength);
  assert.ok(leader.propose(bytes('majority')).ok);
  h.deliver();
  assert.deepEqual(commands(h.node(1)).slice(-1), ['majority'], 'the others are not held up');
  // Restarted with the limit raised, S3 takes the snapshot at the next offer and the count clears.
  s3.cfg = allowed;
  h.restart(3);
  const last = offers[offers.length - 1]!;
  run(200, last + electionTicks * 2 ** offers.length - 200 + 5);
  assert.deepEqual(s3.snapshot.data, data);
  assert.equal(leader.peerProgress(asNodeId(3))?.snapshotRefusals, 0);
});
