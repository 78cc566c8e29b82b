/**
 * cluster/up — `dogfs up`: a whole cluster of real processes on loopback, in the foreground.
 *
 * DIR/members.json remembers each member's identity and port, so running `dogfs up` again on the same
 * DIR brings back the same cluster with its data (ports are reused where still free). Children are
 * spawned with an IPC channel: they report readiness over it, and exit by themselves when it closes —
 * which is what happens when this supervisor dies, even by SIGKILL. DIR/cluster.json (the contract of
 * DESIGN section 7) is written once every member answers Health, and removed on a clean stop.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert } from '../common/assert.js';
import { DirLockedError, isProcessAlive, lockDir, lockHolder } from '../common/dirlock.js';
import { DEFAULT_EC_POLICY, parseNewEcPolicy, totalShards } from '../common/ec-policy.js';
import type { LogLevel } from '../common/log.js';
import { freePort, portIsFree } from '../common/ports.js';
import type { ReadyMessage, Role } from '../daemon/daemon.js';
import { HealthService, MetadataService } from '../wire/gen/types.js';
import { RpcChannel, RpcChannelPool } from '../wire/rpc.js';
import { DashboardWatcher, dashboardPage } from './dashboard.js';

export interface UpOptions {
  dir: string;
  /** Undefined: the stored cluster's count, or the default for a new cluster. */
  meta?: number | undefined;
  chunk?: number | undefined;
  ec?: string | undefined;
  restart: boolean;
  logLevel: LogLevel;
  /**
   * Each member listens on, and speaks from, its own loopback address (127.0.1.N, N from 1 in member
   * order) instead of 127.0.0.1, so that the network between members can be cut by address (ip rules in
   * a network namespace; test/partition). Not stored: the next start decides again.
   */
  distinctHosts?: boolean | undefined;
  /** Human-readable progress lines (stdout by default). */
  print?: (line: string) => void;
  startTimeoutMs?: number;
}

/**
 * Node options for every member process, from DOGFS_MEMBER_NODE_ARGS (space-separated), e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile a running cluster: Node refuses --cpu-prof in
 * NODE_OPTIONS, and members write their profiles when dogfs up stops them cleanly.
 */
/**
 * The environment of a member: this process's, without the variables that name one server's own ports
 * (every member would take the same one and all but one fail to start). Tuning variables (capacity,
 * scrub rate, GC grace, orphan age) pass on to every member, as documented.
 */
function memberEnvironment(sourceAddress: string | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, DOGFS_SUPERVISED: '1' };
  for (const own of [
    'DOGFS_DATA_LISTEN',
    'DOGFS_METRICS_LISTEN',
    'DOGFS_LISTEN',
    'DOGFS_ID',
    'DOGFS_DIR',
    'DOGFS_SOURCE_ADDRESS',
  ])
    delete env[own];
  if (sourceAddress !== undefined) env['DOGFS_SOURCE_ADDRESS'] = sourceAddress;
  return env;
}

function memberNodeArgs(): string[] {
  return (process.env['DOGFS_MEMBER_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '');
}

export class UpError extends Error {
  override name = 'UpError';
}

interface MemberRecord {
  role: Role;
  id: string;
  port: number;
}

interface StoredCluster {
  version: 1;
  /** The default EC policy the cluster was created with (`--ec`). */
  ec: string;
  /**
   * The cluster's default-EC setting has been set to `ec` once. After that the setting is the cluster's
   * own (`dogfs admin settings --default-ec` changes it); absent in clusters whose metadata servers ran
   * with `--ec`, which overrode the setting for good.
   */
  ecSettled?: boolean;
  uiPort: number;
  members: MemberRecord[];
}

/** What cluster.json says: the contract of DESIGN section 7. */
export interface ClusterJson {
  meta: string[];
  processes: { role: Role; id: string; addr: string; pid: number; dir: string }[];
  ui: string;
  ec: string;
}

const HOST = '127.0.0.1';
const DEFAULT_META = 3;
const DEFAULT_CHUNK = 9;
const STOP_GRACE_MS = 8000;
/** Start-up attempts when a member finds the port chosen for it taken by then. */
const PORT_ATTEMPTS = 3;
const MAIN_MODULE = fileURLToPath(new URL('../cli/main.js', import.meta.url));

function writeFileAtomic(path: string, content: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  deadline: number,
  pollMs = 50,
): Promise<boolean> {
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await new Promise((r) => setTimeout(r, pollMs));
  }
  return condition();
}

/**
 * Tries `attempt` every `pollMs` until it resolves or `deadline` passes: undefined when it did, else
 * the last attempt's error message (what a person needs to see in the UpError).
 */
async function retryUntil(
  attempt: () => Promise<unknown>,
  deadline: number,
  pollMs = 100,
): Promise<string | undefined> {
  let lastError = '';
  const done = await waitUntil(
    async () => {
      try {
        await attempt();
        return true;
      } catch (error) {
        lastError = (error as Error).message;
        return false;
      }
    },
    deadline,
    pollMs,
  );
  return done ? undefined : lastError;
}

/** Group 0's commit index (or applied index) in a member's status. */
function groupZeroIndex(
  status: { groups: { group: number; commitIndex: number; appliedIndex: number }[] },
  which: 'commit' | 'applied' = 'commit',
): number {
  const view = status.groups.find((g) => g.group === 0);
  if (view === undefined) throw new Error('the member reports no view of the cluster group');
  return which === 'commit' ? view.commitIndex : view.appliedIndex;
}

function loadStored(dir: string): StoredCluster | undefined {
  let text: string;
  try {
    text = readFileSync(join(dir, 'members.json'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const stored = JSON.parse(text) as StoredCluster;
  if (stored.version !== 1 || !Array.isArray(stored.members)) {
    throw new UpError(`${join(dir, 'members.json')} is not a DogFS cluster description`);
  }
  return stored;
}

function planCluster(options: UpOptions, stored: StoredCluster | undefined): StoredCluster {
  if (stored !== undefined) {
    const metaCount = stored.members.filter((m) => m.role === 'meta').length;
    const chunkCount = stored.members.filter((m) => m.role === 'chunk').length;
    const conflicts: string[] = [];
    if (options.meta !== undefined && options.meta !== metaCount) conflicts.push(`--meta ${options.meta}`);
    if (options.chunk !== undefined && options.chunk !== chunkCount)
      conflicts.push(`--chunk ${options.chunk}`);
    if (options.ec !== undefined && options.ec !== stored.ec) conflicts.push(`--ec ${options.ec}`);
    if (conflicts.length > 0) {
      throw new UpError(
        `${options.dir} holds a cluster of ${metaCount} meta and ${chunkCount} chunk servers with ${stored.ec}; ` +
          `${conflicts.join(', ')} does not match (use another --dir for a different cluster)`,
      );
    }
    return stored;
  }
  const ec = options.ec ?? DEFAULT_EC_POLICY;
  const policy = parseNewEcPolicy(ec);
  const metaCount = options.meta ?? DEFAULT_META;
  const chunkCount = options.chunk ?? DEFAULT_CHUNK;
  if (chunkCount < Math.min(totalShards(policy), policy.dataShards + 1)) {
    throw new UpError(
      `${ec} needs at least ${Math.min(totalShards(policy), policy.dataShards + 1)} chunk servers to accept writes; --chunk is ${chunkCount}`,
    );
  }
  const members: MemberRecord[] = [];
  for (let i = 1; i <= metaCount; i++) members.push({ role: 'meta', id: `meta-${i}`, port: 0 });
  for (let i = 1; i <= chunkCount; i++) members.push({ role: 'chunk', id: `chunk-${i}`, port: 0 });
  return { version: 1, ec, ecSettled: false, uiPort: 0, members };
}

interface Running {
  record: MemberRecord;
  dir: string;
  child: ChildProcess | undefined;
  pid: number;
  addr: string;
  restarts: number;
}

export class LocalCluster {
  private readonly options: UpOptions;
  private readonly dir: string;
  private readonly print: (line: string) => void;
  private readonly running: Running[] = [];
  private stored: StoredCluster | undefined;
  private ui: HttpServer | undefined;
  /** The status page's sampler; its channels are closed with the page. */
  private dashboard: { watcher: DashboardWatcher; channels: RpcChannelPool } | undefined;
  private stopping = false;
  private releaseLock: (() => void) | undefined;

  constructor(options: UpOptions) {
    this.options = options;
    this.dir = resolve(options.dir);
    this.print = options.print ?? ((line) => process.stdout.write(`${line}\n`));
  }

  get clusterJsonPath(): string {
    return join(this.dir, 'cluster.json');
  }

  async start(): Promise<ClusterJson> {
    mkdirSync(this.dir, { recursive: true });
    try {
      this.releaseLock = lockDir(this.dir, 'up.lock').release;
    } catch (error) {
      if (error instanceof DirLockedError) {
        throw new UpError(`${this.dir} is already served by another dogfs up (pid ${error.holderPid})`);
      }
      throw error;
    }
    try {
      rmSync(this.clusterJsonPath, { force: true });
      const stored = planCluster(this.options, loadStored(this.dir));
      this.stored = stored;
      await this.waitForPreviousMembers(stored);
      await this.assignPorts(stored);
      this.saveMembers(stored);
      const deadline = Date.now() + (this.options.startTimeoutMs ?? 30_000);
      await this.spawnAll(stored, deadline);
      await this.waitForHealth(deadline);
      await this.waitForMetadataLeaders(deadline);
      await this.settleDefaultEc(stored, deadline);
      this.ui = await this.startUiOnFreePort(stored);
      const cluster = this.clusterJson();
      writeFileAtomic(this.clusterJsonPath, `${JSON.stringify(cluster, null, 2)}\n`);
      this.printSummary(cluster);
      return cluster;
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /**
   * Starts every member. Ports are chosen before the members bind them, so another process (an outgoing
   * connection's ephemeral port, another cluster) can take one in between: a member that finds its port
   * in use makes every member start again on fresh ports, a few times at most.
   */
  private async spawnAll(stored: StoredCluster, deadline: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await Promise.all(stored.members.map((record) => this.spawnMember(record, deadline)));
        return;
      } catch (error) {
        const portTaken = error instanceof UpError && error.message.includes('address already in use');
        if (!portTaken || attempt >= PORT_ATTEMPTS) throw error;
        this.print(`dogfs up: ${(error as Error).message}; starting again on other ports`);
        this.stopping = true;
        await this.stopMembers();
        this.stopping = false;
        for (const record of stored.members) record.port = 0;
        stored.uiPort = 0;
        await this.assignPorts(stored);
        this.saveMembers(stored);
      }
    }
  }

  /** A previous supervisor that was SIGKILLed leaves children that are still on their way out. */
  private async waitForPreviousMembers(stored: StoredCluster): Promise<void> {
    const deadline = Date.now() + 10_000;
    for (const record of stored.members) {
      const memberDir = join(this.dir, record.id);
      const free = await waitUntil(() => lockHolder(memberDir) === undefined, deadline);
      if (!free) {
        throw new UpError(
          `${memberDir} is still in use by pid ${lockHolder(memberDir)}; stop that process first`,
        );
      }
    }
  }

  private async assignPorts(stored: StoredCluster): Promise<void> {
    const taken = new Set<number>();
    const pick = async (remembered: number, host = HOST): Promise<number> => {
      if (remembered > 0 && !taken.has(remembered) && (await portIsFree(remembered, host))) {
        taken.add(remembered);
        return remembered;
      }
      for (let attempt = 0; attempt < 100; attempt++) {
        const port = await freePort(host);
        if (!taken.has(port)) {
          taken.add(port);
          return port;
        }
      }
      throw new UpError('could not find a free loopback port');
    };
    for (const record of stored.members) record.port = await pick(record.port, this.hostOf(record));
    stored.uiPort = await pick(stored.uiPort);
  }

  /** The loopback address a member listens on (and, with distinctHosts, speaks from). */
  private hostOf(record: MemberRecord): string {
    if (!this.options.distinctHosts) return HOST;
    const index = this.stored!.members.indexOf(record);
    assert(index >= 0 && index < 254, 'a member of the stored cluster, within one /24');
    return `127.0.1.${index + 1}`;
  }

  private addressOf(record: MemberRecord): string {
    return `${this.hostOf(record)}:${record.port}`;
  }

  private argsFor(record: MemberRecord, memberDir: string): string[] {
    const stored = this.stored!;
    const metaMembers = stored.members.filter((m) => m.role === 'meta');
    const common = ['--dir', memberDir, '--id', record.id, '--listen', this.addressOf(record)];
    common.push('--log-level', this.options.logLevel);
    if (record.role === 'meta') {
      const peers = metaMembers.map((m) => `${m.id}=${this.addressOf(m)}`).join(',');
      // No --ec: it would override the cluster's default-EC setting for good (settleDefaultEc sets it).
      return [...memberNodeArgs(), MAIN_MODULE, 'meta', ...common, '--peers', peers];
    }
    const meta = metaMembers.map((m) => this.addressOf(m)).join(',');
    return [
      ...memberNodeArgs(),
      MAIN_MODULE,
      'chunk',
      ...common,
      '--meta',
      meta,
      '--failure-domain',
      record.id,
    ];
  }

  private spawnMember(record: MemberRecord, deadline: number): Promise<void> {
    const memberDir = join(this.dir, record.id);
    mkdirSync(memberDir, { recursive: true });
    const logPath = join(memberDir, 'dogfs.log');
    const logFd = openSync(logPath, 'a');
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, this.argsFor(record, memberDir), {
        stdio: ['ignore', logFd, logFd, 'ipc'],
        env: memberEnvironment(this.options.distinctHosts ? this.hostOf(record) : undefined),
      });
    } finally {
      closeSync(logFd);
    }
    let entry = this.running.find((r) => r.record.id === record.id);
    if (entry === undefined) {
      entry = {
        record,
        dir: memberDir,
        child,
        pid: child.pid ?? -1,
        addr: this.addressOf(record),
        restarts: 0,
      };
      this.running.push(entry);
    } else {
      entry.child = child;
      entry.pid = child.pid ?? -1;
    }
    const running = entry;
    return new Promise((resolvePromise, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => fail(`${record.id} did not become ready in time (see ${logPath})`),
        Math.max(0, deadline - Date.now()),
      );
      const fail = (message: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new UpError(message));
      };
      child.on('message', (message: ReadyMessage) => {
        if (settled || message?.type !== 'ready') return;
        settled = true;
        clearTimeout(timer);
        running.addr = message.addr;
        resolvePromise();
      });
      child.once('exit', (code, signal) => {
        if (!settled) {
          fail(
            `${record.id} exited during start-up (${signal ?? `code ${code}`}): ${lastLogMessage(logPath)}`,
          );
          return;
        }
        // A child replaced since (a start-up retried on other ports) is not the member any more.
        if (running.child === child) this.onMemberExit(running, code, signal);
      });
      child.once('error', (error) => fail(`${record.id} could not be started: ${error.message}`));
    });
  }

  private onMemberExit(running: Running, code: number | null, signal: NodeJS.Signals | null): void {
    running.child = undefined;
    if (this.stopping) return;
    const how = signal ?? `code ${code}`;
    this.print(`dogfs up: ${running.record.id} (pid ${running.pid}) exited (${how})`);
    this.dashboard?.watcher.note('warn', `${running.record.id} (pid ${running.pid}) exited (${how})`);
    if (!this.options.restart) return;
    this.scheduleRestart(running);
  }

  /**
   * Starts a member again after a backoff (0.5 s doubling to 10 s). A restart that fails (a crash at
   * start, its port taken meanwhile, no readiness in time) is tried again the same way: one failure
   * ended restarting for good before, leaving the member down for the rest of the session.
   */
  private scheduleRestart(running: Running): void {
    running.restarts++;
    const delay = Math.min(10_000, 500 * 2 ** Math.min(running.restarts - 1, 5));
    setTimeout(() => {
      if (this.stopping) return;
      let starting: Promise<void>;
      try {
        starting = this.spawnMember(running.record, Date.now() + 30_000);
      } catch (error) {
        // Its directory or log could not be made, or the process not spawned: tried again like the rest.
        starting = Promise.reject(error instanceof Error ? error : new Error(String(error)));
      }
      starting.then(
        () => {
          this.print(`dogfs up: ${running.record.id} restarted (pid ${running.pid})`);
          this.dashboard?.watcher.note('info', `${running.record.id} restarted (pid ${running.pid})`);
          writeFileAtomic(this.clusterJsonPath, `${JSON.stringify(this.clusterJson(), null, 2)}\n`);
        },
        (error: Error) => {
          if (this.stopping) return;
          this.print(`dogfs up: ${running.record.id} failed to restart: ${error.message}; trying again`);
          // Not ready in time but still running: ended first (its exit then is no member's exit).
          const lingering = running.child;
          running.child = undefined;
          if (lingering !== undefined && lingering.exitCode === null && lingering.signalCode === null)
            lingering.kill('SIGKILL');
          this.scheduleRestart(running);
        },
      );
    }, delay);
  }

  private async waitForHealth(deadline: number): Promise<void> {
    await Promise.all(
      this.running.map(async (running) => {
        const channel = new RpcChannel(running.addr);
        try {
          const failed = await retryUntil(async () => {
            const health = await channel.call(HealthService, 'Check', {}, { timeoutMs: 1000 });
            if (health.id !== running.record.id)
              throw new Error(`it is ${health.id}, not ${running.record.id}`);
          }, deadline);
          if (failed !== undefined)
            throw new UpError(`${running.record.id} at ${running.addr} does not answer health: ${failed}`);
        } finally {
          channel.close();
        }
      }),
    );
  }

  /**
   * Makes `--ec` the cluster's default-EC setting, once (at creation, or the first start of a directory
   * whose metadata servers were given `--ec`, which overrode the setting: `admin settings --default-ec`
   * was shown and ignored). From then on the setting is the cluster's to change. Before cluster.json
   * exists, so no client has created a file under another default.
   */
  private async settleDefaultEc(stored: StoredCluster, deadline: number): Promise<void> {
    if (stored.ecSettled === true) return;
    let appliedBy = 0;
    const meta = this.running.find((r) => r.record.role === 'meta');
    if (meta === undefined) return;
    const channel = new RpcChannel(meta.addr);
    const leaderChannels = new RpcChannelPool(4);
    try {
      const failed = await retryUntil(async () => {
        const { leaderAddr } = await channel.call(
          MetadataService,
          'FindLeader',
          { group: 0 },
          { timeoutMs: 1000 },
        );
        const leader = leaderChannels.get(leaderAddr);
        await leader.call(
          MetadataService,
          'SetSettings',
          { settings: { defaultEc: stored.ec } },
          { timeoutMs: 2000 },
        );
        appliedBy = groupZeroIndex(
          await leader.call(MetadataService, 'MemberStatus', {}, { timeoutMs: 1000 }),
        );
      }, deadline);
      if (failed !== undefined)
        throw new UpError(`could not set the cluster's default EC policy to ${stored.ec}: ${failed}`);
      // A create reads the setting from its own server's copy of group 0: every member must have applied
      // it before cluster.json says the cluster can serve, or the first put could take the old default.
      const members = this.running.filter((r) => r.record.role === 'meta');
      const lagging = await retryUntil(async () => {
        for (const member of members) {
          const status = await leaderChannels
            .get(member.addr)
            .call(MetadataService, 'MemberStatus', {}, { timeoutMs: 1000 });
          const applied = groupZeroIndex(status, 'applied');
          if (applied < appliedBy)
            throw new Error(
              `${member.record.id} has applied ${applied} of ${appliedBy} cluster-group entries`,
            );
        }
      }, deadline);
      if (lagging !== undefined)
        throw new UpError(
          `the default EC policy ${stored.ec} did not reach every metadata server: ${lagging}`,
        );
    } finally {
      leaderChannels.close();
      channel.close();
    }
    stored.ecSettled = true;
    this.saveMembers(stored);
  }

  /**
   * "Can serve" means the metadata groups have leaders and every chunk server is registered, not just
   * that processes answer Health.
   */
  private async waitForMetadataLeaders(deadline: number): Promise<void> {
    const meta = this.running.find((r) => r.record.role === 'meta');
    if (meta === undefined) return;
    const channel = new RpcChannel(meta.addr);
    try {
      for (const group of [0, 1]) {
        const failed = await retryUntil(
          () => channel.call(MetadataService, 'FindLeader', { group }, { timeoutMs: 1000 }),
          deadline,
        );
        if (failed !== undefined)
          throw new UpError(`metadata group ${group} elected no leader in time: ${failed}`);
      }
      // Every chunk server registered and alive, so the first write is placed on all of them.
      const chunkIds = this.running.filter((r) => r.record.role === 'chunk').map((r) => r.record.id);
      let registered = 0;
      const leaderChannels = new RpcChannelPool(16);
      const allRegistered = await waitUntil(
        async () => {
          try {
            // The report is served by the cluster group's leader (its shard-health view is the complete one).
            const { leaderAddr } = await channel.call(
              MetadataService,
              'FindLeader',
              { group: 0 },
              { timeoutMs: 1000 },
            );
            const report = await leaderChannels
              .get(leaderAddr)
              .call(MetadataService, 'ClusterReport', {}, { timeoutMs: 1000 });
            const alive = new Set(report.chunkServers.filter((c) => c.state === 'alive').map((c) => c.id));
            registered = chunkIds.filter((id) => alive.has(id)).length;
            return registered === chunkIds.length;
          } catch {
            return false;
          }
        },
        deadline,
        100,
      );
      leaderChannels.close();
      if (!allRegistered) {
        throw new UpError(
          `only ${registered} of ${chunkIds.length} chunk servers registered with the metadata service in time`,
        );
      }
    } finally {
      channel.close();
    }
  }

  clusterJson(): ClusterJson {
    const stored = this.stored!;
    return {
      meta: this.running.filter((r) => r.record.role === 'meta').map((r) => r.addr),
      processes: this.running.map((r) => ({
        role: r.record.role,
        id: r.record.id,
        addr: r.addr,
        pid: r.pid,
        dir: r.dir,
      })),
      ui: `http://${HOST}:${stored.uiPort}/`,
      ec: stored.ec,
    };
  }

  /** members.json: the identities and ports a restart on the same directory takes up again. */
  private saveMembers(stored: StoredCluster): void {
    writeFileAtomic(join(this.dir, 'members.json'), `${JSON.stringify(stored, null, 2)}\n`);
  }

  /**
   * The status page on its chosen port, or, if another process took that port meanwhile (it was chosen
   * before the members started, seconds ago, and outgoing connections take ports from the same range),
   * on one the kernel picks: no member knows this port, and cluster.json, written after, names it.
   */
  private async startUiOnFreePort(stored: StoredCluster): Promise<HttpServer> {
    try {
      return await this.startUi(stored.uiPort);
    } catch (error) {
      if (!(error instanceof UpError && error.message.includes('address already in use'))) throw error;
      const server = await this.startUi(0);
      stored.uiPort = (server.address() as AddressInfo).port;
      this.saveMembers(stored);
      return server;
    }
  }

  private makeDashboard(): { watcher: DashboardWatcher; channels: RpcChannelPool } {
    const channels = new RpcChannelPool(64);
    const watcher = new DashboardWatcher(
      () =>
        this.running.map((r) => ({
          role: r.record.role,
          id: r.record.id,
          addr: r.addr,
          pid: r.pid,
          running: r.child !== undefined && r.child.exitCode === null && r.child.signalCode === null,
        })),
      this.stored?.ec ?? DEFAULT_EC_POLICY,
      channels,
    );
    return { watcher, channels };
  }

  private startUi(port: number): Promise<HttpServer> {
    // Made once: a first attempt on a port that was taken leaves nothing to close.
    this.dashboard ??= this.makeDashboard();
    const { watcher } = this.dashboard;
    const server = createHttpServer((request, response) => {
      const json = (body: unknown) => {
        response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        response.end(JSON.stringify(body));
      };
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        response.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' });
        response.end('only GET\n');
        return;
      }
      if (request.url === '/cluster.json') {
        json(this.clusterJson());
        return;
      }
      if (request.url === '/status.json') {
        watcher.status().then(json, (error: Error) => {
          response.writeHead(500, { 'content-type': 'text/plain' });
          response.end(`${error.message}\n`);
        });
        return;
      }
      if (request.url !== '/' && request.url !== '/index.html') {
        response.writeHead(404, { 'content-type': 'text/plain' });
        response.end('not found\n');
        return;
      }
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(dashboardPage());
    });
    return new Promise((resolvePromise, reject) => {
      server.once('error', (error) =>
        reject(new UpError(`cannot serve the status page on ${HOST}:${port}: ${error.message}`)),
      );
      server.listen(port, HOST, () => resolvePromise(server));
    });
  }

  private printSummary(cluster: ClusterJson): void {
    this.print(`dogfs up: cluster ready in ${this.dir} (${cluster.ec})`);
    for (const p of cluster.processes)
      this.print(`  ${p.role.padEnd(5)} ${p.id.padEnd(10)} ${p.addr.padEnd(21)} pid ${p.pid}`);
    this.print(`  status page  ${cluster.ui}`);
    this.print(`  cluster.json ${this.clusterJsonPath}`);
    this.print(`  export DOGFS_CLUSTER=${this.clusterJsonPath}`);
  }

  /**
   * SIGTERM to every running member, SIGKILL after the grace; resolves once each one's exit was seen.
   * The timers are unref'd: the children's own handles keep the process alive while they run.
   */
  private async stopMembers(): Promise<void> {
    const live = this.running.filter((r) => r.child !== undefined && r.child.exitCode === null);
    const exited = live.map(
      (r) =>
        new Promise<void>((resolve) => {
          const child = r.child!;
          if (child.exitCode !== null || child.signalCode !== null) resolve();
          else child.once('exit', () => resolve());
        }),
    );
    for (const r of live) r.child?.kill('SIGTERM');
    const all = Promise.all(exited);
    const graceful = await Promise.race([
      all.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), STOP_GRACE_MS).unref()),
    ]);
    if (!graceful) {
      for (const r of live) if (isProcessAlive(r.pid)) r.child?.kill('SIGKILL');
      await Promise.race([all, new Promise<void>((r) => setTimeout(r, 2000).unref())]);
    }
  }

  /** Stops every member (SIGTERM, then SIGKILL after a grace period) and releases DIR. Idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    rmSync(this.clusterJsonPath, { force: true });
    await this.stopMembers();
    this.ui?.closeAllConnections();
    await new Promise<void>((r) => (this.ui ? this.ui.close(() => r()) : r()));
    this.ui = undefined;
    this.dashboard?.channels.close();
    this.dashboard = undefined;
    this.releaseLock?.();
    this.releaseLock = undefined;
  }
}

function lastLogMessage(logPath: string): string {
  try {
    const lines = readFileSync(logPath, 'utf8').trim().split('\n');
    for (let i = lines.length - 1; i >= 0 && i >= lines.length - 20; i--) {
      const line = lines[i] ?? '';
      try {
        const record = JSON.parse(line) as { level?: string; msg?: string };
        if (record.level === 'error' && record.msg) return record.msg;
      } catch {
        if (line.trim() !== '') return line.trim();
      }
    }
    return 'no error was logged';
  } catch {
    return 'no log';
  }
}

/** Runs `dogfs up` in the foreground until SIGINT/SIGTERM. */
export async function runUp(options: UpOptions): Promise<void> {
  const cluster = new LocalCluster(options);
  let stopRequested = false;
  const requestStop = (signal: string) => {
    if (stopRequested) return;
    stopRequested = true;
    (options.print ?? console.log)(`dogfs up: ${signal}: stopping the cluster`);
    cluster.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => requestStop('SIGINT'));
  process.on('SIGTERM', () => requestStop('SIGTERM'));
  // `dogfs up | head -1`: once the reader is gone, a line printed later must not end the supervisor
  // (and with it the cluster) on an unhandled EPIPE.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
  try {
    await cluster.start();
  } catch (error) {
    // Stopped while starting: the stop ends the process; the start's failure is its consequence.
    if (stopRequested) await new Promise<never>(() => {});
    throw error;
  }
}
