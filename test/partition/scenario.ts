/**
 * test/partition/scenario — network partitions you can watch, against a real cluster (`dogfs up
 * --distinct-hosts`: 3 metadata servers, 5 chunk servers, rs-2-1), with real packets dropped between
 * members (test/partition/netns.ts). Run in a private network namespace (run.ts enters one).
 *
 * 1. The namespace group's leader is cut off from the other two metadata servers. The majority elects a
 *    new leader and puts go on; the old leader refuses a mutation within its deadline instead of hanging,
 *    and never answers a read with state older than what the majority has acknowledged. Healed, it follows
 *    again and serves that state.
 * 2. Every metadata server is cut off from every other: no majority anywhere. A mutation fails within its
 *    deadline with a clear error; healed, the cluster serves again.
 * 3. A chunk server is cut off from the metadata servers: it is declared dead (its heartbeats stop
 *    arriving) while puts go on without it, and alive again once healed.
 * At the end every acknowledged file is read back and compared byte for byte.
 */
import { randomBytes } from 'node:crypto';
import { DogfsClient } from '../../src/client/index.js';
import type { ClusterJson } from '../../src/cluster/up.js';
import { DogfsError, toDogfsError } from '../../src/wire/errors.js';
import { MetadataService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import { clusterDiagnosis, startCluster, waitFor } from '../helpers/index.js';
import { hostOf, Partitions } from './netns.js';

const NAMESPACE_GROUP = 1;
const CALL_TIMEOUT_MS = 20_000;
/** The deadline of calls that are expected to be refused: they must end by it (plus this slack). */
const REFUSAL_DEADLINE_MS = 4_000;
const REFUSAL_SLACK_MS = 2_000;
/**
 * The deadline of calls sent straight to a cut-off server: longer than a refusal may take, so a server
 * that hangs until the caller gives up shows as too slow, not as a refusal.
 */
const PATIENT_RPC_MS = 10_000;
/** Codes that say "cannot serve this now" (as opposed to an answer from stale state). */
const REFUSALS: ReadonlySet<string> = new Set([
  'NOT_LEADER',
  'NO_QUORUM',
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
]);

export interface PartitionOutcome {
  readonly ok: boolean;
  readonly problems: readonly string[];
  readonly putsAcknowledged: number;
  /** Milliseconds from a cut to the majority's new leader, and to the first put acknowledged after it. */
  readonly newLeaderMs: number;
  readonly firstPutMs: number;
  /** What the isolated old leader and the leaderless cluster answered, and in how long. */
  readonly isolatedLeaderRefusal: string;
  readonly noMajorityRefusal: string;
  readonly chunkDeclaredDeadMs: number;
  /** Milliseconds from each one-way cut of the leader to a put acknowledged by a new one. */
  readonly oneWayRecoveryMs: readonly number[];
}

export async function runPartitionScenario(log: (line: string) => void): Promise<PartitionOutcome> {
  const started = Date.now();
  const say = (line: string) => log(`t=${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s ${line}`);
  const problems: string[] = [];
  const acknowledged = new Map<string, Buffer>();
  const cuts = new Partitions();
  const cluster = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-2-1', '--distinct-hosts']);
  const channels = new Map<string, RpcChannel>();
  const channel = (address: string) => {
    let c = channels.get(address);
    if (c === undefined) {
      c = new RpcChannel(address);
      channels.set(address, c);
    }
    return c;
  };
  let client: DogfsClient | undefined;
  let finished = false;
  try {
    const json: ClusterJson = await cluster.ready();
    const metas = json.processes.filter((p) => p.role === 'meta');
    const chunks = json.processes.filter((p) => p.role === 'chunk');
    const dogfs = new DogfsClient({ meta: json.meta, timeoutMs: CALL_TIMEOUT_MS });
    client = dogfs;
    // A silent chunk server is declared dead after 3 s instead of 10.
    await dogfs.setSettings({ deadAfterMs: 3000 });
    say(`cluster up: ${metas.map((m) => `${m.id} ${m.addr}`).join(', ')}; ${chunks.length} chunk servers`);

    let fileNumber = 0;
    const put = async (what: string) => {
      const path = `/f${fileNumber++}-${what}`;
      const data = randomBytes(50_000 + Math.floor(Math.random() * 200_000));
      await dogfs.writeFile(path, data);
      acknowledged.set(path, data);
      return path;
    };
    for (let i = 0; i < 4; i++) await put('before');
    /** Who a metadata server says leads `group` (asked directly, no redirection). */
    const leaderSeenBy = async (address: string, group: number) =>
      (await channel(address).call(MetadataService, 'FindLeader', { group }, { timeoutMs: 1000 })).leaderAddr;

    // ---- 1. the namespace leader cut off from the other metadata servers ----
    const oldLeader = await leaderSeenBy(json.meta[0]!, NAMESPACE_GROUP);
    const others = json.meta.filter((a) => a !== oldLeader);
    const isolated = metas.find((m) => m.addr === oldLeader)!;
    cuts.cut([hostOf(oldLeader)], others.map(hostOf));
    const cutAt = Date.now();
    say(`CUT ${isolated.id} (${oldLeader}, leader of the namespace group) from the other metadata servers`);
    // The isolated old leader: a mutation sent at once (it still believes it leads) is refused by its
    // deadline, and reads go on being sent to it while the majority moves on: none may answer from state
    // older than a write the majority acknowledged before the read began.
    const refusal = async (what: string, call: () => Promise<unknown>): Promise<string> => {
      const begun = Date.now();
      try {
        await call();
        problems.push(`${what}: answered, though its server cannot reach a majority`);
        return 'answered';
      } catch (error) {
        const e = toDogfsError(error);
        const took = Date.now() - begun;
        const said = `${e.code} after ${took} ms: ${e.message.slice(0, 160)}`;
        if (!REFUSALS.has(e.code)) problems.push(`${what}: ${said} (a stale or wrong answer)`);
        if (took > REFUSAL_DEADLINE_MS + REFUSAL_SLACK_MS)
          problems.push(`${what}: took ${took} ms, past its ${REFUSAL_DEADLINE_MS} ms deadline`);
        say(`      ${what}: ${said}`);
        return said;
      }
    };
    const mutationRefused = refusal(`OpenSession on the isolated ${isolated.id}, sent at the cut`, () =>
      channel(oldLeader).call(MetadataService, 'OpenSession', {}, { timeoutMs: PATIENT_RPC_MS }),
    );
    let madeAt: number | undefined;
    const reads = { sent: 0, afterTheWrite: 0, stale: 0 };
    const readsOnTheIsolated = (async () => {
      // Until a second after the majority's write was acknowledged.
      while (madeAt === undefined || Date.now() < madeAt + 1000) {
        if (Date.now() > cutAt + 30_000) break;
        const sentAt = Date.now();
        reads.sent++;
        const after = madeAt !== undefined && sentAt > madeAt;
        if (after) reads.afterTheWrite++;
        try {
          await channel(oldLeader).call(
            MetadataService,
            'Stat',
            { path: '/made-during-cut' },
            { timeoutMs: REFUSAL_DEADLINE_MS },
          );
        } catch (error) {
          const code = toDogfsError(error).code;
          if (code === 'NOT_FOUND' && after) {
            reads.stale++;
            problems.push(
              `a read on the isolated ${isolated.id} missed a write acknowledged before it began`,
            );
          } else if (code !== 'NOT_FOUND' && !REFUSALS.has(code))
            problems.push(`a read on the isolated ${isolated.id} failed with ${code}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20)); // pacing, not a wait on anything
      }
    })();
    const newLeader = await waitFor(
      'the majority to elect a new namespace leader',
      async () => {
        const seen = await leaderSeenBy(others[0]!, NAMESPACE_GROUP);
        return seen !== '' && seen !== oldLeader && others.includes(seen) && seen;
      },
      20_000,
      50,
    );
    const newLeaderMs = Date.now() - cutAt;
    say(`      new namespace leader ${newLeader} after ${newLeaderMs} ms`);
    const during = await put('during-cut');
    const firstPutMs = Date.now() - cutAt;
    say(`      put ${during} acknowledged ${firstPutMs} ms after the cut`);
    await dogfs.mkdir('/made-during-cut');
    madeAt = Date.now();
    for (let i = 0; i < 3; i++) await put('during-cut');
    const isolatedLeaderRefusal = await mutationRefused;
    await readsOnTheIsolated;
    say(
      `      reads on the isolated ${isolated.id}: ${reads.sent} sent, ${reads.afterTheWrite} after the majority's write, ${reads.stale} stale`,
    );
    if (reads.afterTheWrite === 0) problems.push('no read reached the isolated leader after the write');
    cuts.heal();
    say('HEAL');
    await waitFor(
      `${isolated.id} to follow the new leader and serve what the majority did meanwhile`,
      async () => {
        const seen = await leaderSeenBy(oldLeader, NAMESPACE_GROUP);
        if (seen === '' || seen === oldLeader) return false;
        const stat = await channel(oldLeader).call(
          MetadataService,
          'Stat',
          { path: '/made-during-cut' },
          { timeoutMs: 2000 },
        );
        return stat.inode !== null && stat.inode !== undefined;
      },
      20_000,
      100,
    );
    say(
      `      ${isolated.id} follows ${await leaderSeenBy(oldLeader, NAMESPACE_GROUP)} and serves the new state`,
    );

    // ---- 1b. one-way cuts: a leader that hears but cannot speak, then one that speaks but cannot hear ----
    const oneWay: number[] = [];
    for (const [what, cutFor] of [
      [
        'cannot speak to',
        (leader: string, rest: string[]) => cuts.cutOneWay([hostOf(leader)], rest.map(hostOf)),
      ],
      [
        'cannot hear from',
        (leader: string, rest: string[]) => cuts.cutOneWay(rest.map(hostOf), [hostOf(leader)]),
      ],
    ] as const) {
      const leader = await leaderSeenBy(json.meta[0]!, NAMESPACE_GROUP);
      const rest = json.meta.filter((a) => a !== leader);
      const id = metas.find((m) => m.addr === leader)!.id;
      cutFor(leader, rest);
      const at = Date.now();
      say(`CUT one way: the namespace leader ${id} ${what} the other metadata servers`);
      await waitFor(
        'the others to elect a leader among themselves',
        async () => {
          const seen = await leaderSeenBy(rest[0]!, NAMESPACE_GROUP);
          return (
            seen !== '' && rest.includes(seen) && (await leaderSeenBy(rest[1]!, NAMESPACE_GROUP)) === seen
          );
        },
        20_000,
        50,
      );
      await put(`one-way-${oneWay.length}`);
      oneWay.push(Date.now() - at);
      say(`      a new leader among the others, and a put acknowledged, ${oneWay.at(-1)} ms after the cut`);
      cuts.heal();
      await waitFor(
        `${id} to follow again`,
        async () => {
          const seen = await leaderSeenBy(leader, NAMESPACE_GROUP);
          return seen !== '' && seen !== leader && seen === (await leaderSeenBy(rest[0]!, NAMESPACE_GROUP));
        },
        20_000,
        100,
      );
      say(`HEAL; ${id} follows again`);
    }

    // ---- 2. no majority anywhere ----
    cuts.cut([hostOf(json.meta[0]!)], [hostOf(json.meta[1]!), hostOf(json.meta[2]!)]);
    cuts.cut([hostOf(json.meta[1]!)], [hostOf(json.meta[2]!)]);
    say('CUT every metadata server from every other');
    const noMajorityRefusal = await refusal('mkdir with no majority anywhere', () =>
      dogfs.mkdir('/no-majority', { timeoutMs: REFUSAL_DEADLINE_MS }),
    );
    cuts.heal();
    say('HEAL');
    const healedAt = Date.now();
    await waitFor('a put after the heal', () => put('after-heal').then(() => true), 30_000, 100);
    say(`      serving again ${Date.now() - healedAt} ms after the heal`);
    try {
      await dogfs.stat('/no-majority');
      say(
        '      /no-majority exists: the refused mkdir was applied after all (allowed: its outcome was unknown)',
      );
    } catch (error) {
      if (!(error instanceof DogfsError) || error.code !== 'NOT_FOUND') throw error;
    }

    // ---- 3. a chunk server cut off from the metadata servers ----
    const lonely = chunks[chunks.length - 1]!;
    cuts.cut([hostOf(lonely.addr)], json.meta.map(hostOf));
    const chunkCutAt = Date.now();
    say(`CUT chunk server ${lonely.id} (${lonely.addr}) from the metadata servers`);
    await waitFor(
      `${lonely.id} to be declared dead`,
      async () => (await dogfs.report()).chunkServers.find((s) => s.id === lonely.id)?.state === 'dead',
      30_000,
      100,
    );
    const chunkDeclaredDeadMs = Date.now() - chunkCutAt;
    say(`      ${lonely.id} declared dead after ${chunkDeclaredDeadMs} ms`);
    for (let i = 0; i < 3; i++) await put('chunk-cut');
    say('      puts go on without it');
    cuts.heal();
    say('HEAL');
    await waitFor(
      `${lonely.id} to be alive again`,
      async () => (await dogfs.report()).chunkServers.find((s) => s.id === lonely.id)?.state === 'alive',
      30_000,
      100,
    );
    say(`      ${lonely.id} alive again`);

    // ---- every acknowledged file, byte for byte ----
    for (const [path, data] of acknowledged) {
      const got = await dogfs.readFile(path);
      if (!got.equals(data)) problems.push(`${path}: read back ${got.length} bytes that differ from the put`);
    }
    say(
      `checked ${acknowledged.size} acknowledged files: ${problems.length === 0 ? 'all intact' : 'PROBLEMS'}`,
    );
    finished = problems.length === 0;
    return {
      ok: problems.length === 0,
      problems,
      putsAcknowledged: acknowledged.size,
      newLeaderMs,
      firstPutMs,
      isolatedLeaderRefusal,
      noMajorityRefusal,
      chunkDeclaredDeadMs,
      oneWayRecoveryMs: oneWay,
    };
  } finally {
    cuts.heal();
    client?.close();
    for (const c of channels.values()) c.close();
    // The cluster's directory goes with it: on a failure, the members' last log lines are printed first.
    if (!finished) log(clusterDiagnosis(cluster.clusterDir, cluster.up.output));
    await cluster.stop();
  }
}
