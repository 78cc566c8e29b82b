/**
 * cluster/dashboard — what `dogfs up`'s status page (the `ui` of cluster.json) shows, live: every member
 * process (running or not), each metadata server's own view of its Raft groups (role, term, leader,
 * commit and applied index: answered without a quorum, so a cut-off or electing member shows as it is),
 * the cluster report of group 0's leader (chunk servers' state and usage, damaged files, repairs), one
 * line saying how the cluster is, and a log of what changed between samples (a member stopped, a new
 * leader, a chunk server declared dead, files damaged, then whole again).
 *
 * Sampling costs the cluster work (the report walks the namespace for damaged files), so it happens
 * only while someone looks: a request for /status.json samples when the last sample is older than a
 * second, and the page asks every second. Every call has a short deadline, so a cluster without a
 * quorum answers with what is known and why the rest is not, never a hanging page.
 */
import { toDogfsError } from '../wire/errors.js';
import { MetadataService } from '../wire/gen/types.js';
import { type ClusterReportJson, clusterReportJson } from '../wire/report-json.js';
import type { RpcChannelPool } from '../wire/rpc.js';

/** A member process as the supervisor knows it. */
export interface MemberSample {
  readonly role: 'meta' | 'chunk';
  readonly id: string;
  readonly addr: string;
  readonly pid: number;
  readonly running: boolean;
}

export interface GroupView {
  readonly group: number;
  readonly role: string;
  readonly term: number;
  /** The member id of the leader this member follows ('' = none known). */
  readonly leader: string;
  readonly commitIndex: number;
  readonly appliedIndex: number;
}

/** One metadata server's own view, or why it did not answer. */
export interface MetaView {
  readonly id: string;
  readonly groups: readonly GroupView[];
  readonly error: string;
}

export interface DashboardEvent {
  readonly atMs: number;
  readonly level: 'info' | 'warn';
  readonly text: string;
}

export interface DashboardStatus {
  readonly atMs: number;
  readonly ec: string;
  readonly health: { readonly level: 'ok' | 'degraded' | 'down'; readonly summary: string };
  readonly members: readonly MemberSample[];
  readonly metaViews: readonly MetaView[];
  /** Group 0 leader's report; null with `reportError` when it could not be had. */
  readonly report: ClusterReportJson | null;
  readonly reportError: string;
  readonly events: readonly DashboardEvent[];
}

/** Deadline of each metadata server's MemberStatus, and of the report. */
const VIEW_TIMEOUT_MS = 1000;
const REPORT_TIMEOUT_MS = 2000;
/** A sample younger than this is served as it is. */
const SAMPLE_MAX_AGE_MS = 900;
/** Events kept (oldest dropped first). */
export const MAX_EVENTS = 200;
/** Damaged files and repairs the page lists (the counts cover all of them). */
const MAX_LISTED_FILES = 50;

const GROUP_NAMES: Readonly<Record<number, string>> = { 0: 'cluster group', 1: 'namespace group' };
const groupName = (group: number): string => GROUP_NAMES[group] ?? `group ${group}`;

/**
 * The leader of each group by the members' own views: among members that say they lead it, the one of
 * the highest term (an old leader cut off may still say so at its older term).
 */
export function groupLeaders(views: readonly MetaView[]): Map<number, { id: string; term: number }> {
  const leaders = new Map<number, { id: string; term: number }>();
  for (const view of views)
    for (const g of view.groups) {
      if (g.role !== 'leader') continue;
      const known = leaders.get(g.group);
      if (known === undefined || g.term > known.term) leaders.set(g.group, { id: view.id, term: g.term });
    }
  return leaders;
}

function groupIds(views: readonly MetaView[]): number[] {
  return [...new Set(views.flatMap((v) => v.groups.map((g) => g.group)))].sort((a, b) => a - b);
}

/** One line for how the cluster is: down when the metadata service cannot serve, degraded when anything is missing. */
export function healthOf(
  members: readonly MemberSample[],
  views: readonly MetaView[],
  report: ClusterReportJson | null,
  reportError: string,
): DashboardStatus['health'] {
  const leaders = groupLeaders(views);
  const leaderless = groupIds(views).filter((g) => !leaders.has(g));
  if (views.every((v) => v.error !== '')) return { level: 'down', summary: 'no metadata server answers' };
  if (leaderless.length > 0 || report === null) {
    const why =
      leaderless.length > 0
        ? `no leader for the ${leaderless.map(groupName).join(' and the ')} (a majority of metadata servers must be up and connected)`
        : reportError;
    return { level: 'down', summary: `metadata service unavailable: ${why}` };
  }
  const problems: string[] = [];
  const stopped = members.filter((m) => !m.running).map((m) => m.id);
  if (stopped.length > 0) problems.push(`stopped: ${stopped.join(', ')}`);
  const dead = report.chunkServers.filter((c) => c.state !== 'alive').map((c) => c.id);
  if (dead.length > 0) problems.push(`chunk servers declared dead: ${dead.join(', ')}`);
  const damaged = report.filesWithMissingShardsCount;
  if (damaged > 0)
    problems.push(
      `${damaged} file${damaged === 1 ? '' : 's'} with missing shards${report.repairs.length > 0 ? `, ${report.repairs.length} being repaired` : ''}`,
    );
  const draining = report.chunkServers.filter((c) => c.draining).map((c) => c.id);
  if (draining.length > 0) problems.push(`draining: ${draining.join(', ')}`);
  if (problems.length > 0) return { level: 'degraded', summary: problems.join('; ') };
  return {
    level: 'ok',
    summary: `all ${members.length} members running, every group led, every file whole`,
  };
}

/** What changed from one sample to the next, as lines for the event log. */
export function changesBetween(
  before: DashboardStatus,
  after: Omit<DashboardStatus, 'events'>,
  /** The last report seen before `after` (a sample between them may have had none: an outage). */
  lastReport: ClusterReportJson | null = before.report,
): Omit<DashboardEvent, 'atMs'>[] {
  const out: Omit<DashboardEvent, 'atMs'>[] = [];
  const info = (text: string) => out.push({ level: 'info', text });
  const warn = (text: string) => out.push({ level: 'warn', text });
  // Member processes stopping and starting are noted by the supervisor as they happen (`note`).
  const viewBefore = new Map(before.metaViews.map((v) => [v.id, v]));
  for (const v of after.metaViews) {
    const was = viewBefore.get(v.id);
    if (was === undefined) continue;
    if (was.error === '' && v.error !== '') warn(`${v.id} does not answer: ${v.error}`);
    else if (was.error !== '' && v.error === '') info(`${v.id} answers again`);
  }
  const leadersBefore = groupLeaders(before.metaViews);
  const leadersAfter = groupLeaders(after.metaViews);
  for (const group of groupIds([...before.metaViews, ...after.metaViews])) {
    const was = leadersBefore.get(group);
    const now = leadersAfter.get(group);
    if (now === undefined && was !== undefined) warn(`${groupName(group)}: no leader (was ${was.id})`);
    else if (now !== undefined && (was === undefined || was.id !== now.id || was.term !== now.term))
      info(`${groupName(group)}: ${now.id} leads, term ${now.term}`);
  }
  if (before.report !== null && after.report === null)
    warn(`cluster report unavailable: ${after.reportError}`);
  // What changed in the report is told against the last one seen: across an outage (no quorum for a
  // while) a server declared dead meanwhile is still news.
  if (lastReport === null || after.report === null) return out;
  const serversBefore = new Map(lastReport.chunkServers.map((c) => [c.id, c]));
  for (const c of after.report.chunkServers) {
    const was = serversBefore.get(c.id);
    if (was === undefined) {
      info(`${c.id} registered (${c.addr})`);
      continue;
    }
    if (was.state !== c.state) (c.state === 'alive' ? info : warn)(`${c.id} declared ${c.state}`);
    if (was.draining !== c.draining) info(c.draining ? `${c.id} draining` : `${c.id} no longer draining`);
  }
  const damagedBefore = lastReport.filesWithMissingShardsCount;
  const damagedAfter = after.report.filesWithMissingShardsCount;
  if (damagedAfter !== damagedBefore) {
    if (damagedAfter === 0) info('every file whole again');
    else (damagedAfter > damagedBefore ? warn : info)(`${damagedAfter} file(s) with missing shards`);
  }
  const sheddingBefore = new Set(lastReport.rebalancing.map((r) => r.id));
  const sheddingAfter = new Set(after.report.rebalancing.map((r) => r.id));
  for (const r of after.report.rebalancing)
    if (!sheddingBefore.has(r.id))
      info(
        `${r.id} holds more than its share (${Math.round(r.usedFraction * 100)}% used, cluster ${Math.round(r.clusterFraction * 100)}%): moving shards off it`,
      );
  for (const id of sheddingBefore) if (!sheddingAfter.has(id)) info(`${id} back near the cluster's usage`);
  const repairsBefore = lastReport.repairs.length;
  const repairsAfter = after.report.repairs.length;
  if (repairsBefore === 0 && repairsAfter > 0) info(`automatic repair: ${repairsAfter} file(s) in progress`);
  else if (repairsBefore > 0 && repairsAfter === 0) info('automatic repair: nothing in progress');
  return out;
}

/** Samples the cluster on demand and keeps the event log. */
export class DashboardWatcher {
  private last: DashboardStatus | undefined;
  /** The latest sample's report that was not null. */
  private lastReport: ClusterReportJson | null = null;
  private sampling: Promise<DashboardStatus> | undefined;
  private readonly events: DashboardEvent[] = [];

  constructor(
    private readonly members: () => readonly MemberSample[],
    private readonly ec: string,
    private readonly channels: RpcChannelPool,
    private readonly now: () => number = Date.now,
  ) {}

  /** A sample at most a second old; concurrent requests share one. */
  status(): Promise<DashboardStatus> {
    if (this.last !== undefined && this.now() - this.last.atMs < SAMPLE_MAX_AGE_MS)
      return Promise.resolve(this.last);
    this.sampling ??= this.sample().finally(() => {
      this.sampling = undefined;
    });
    return this.sampling;
  }

  /** An event the supervisor itself saw (a member exited or restarted), logged as it happens. */
  note(level: DashboardEvent['level'], text: string): void {
    this.push({ atMs: this.now(), level, text });
  }

  private push(event: DashboardEvent): void {
    this.events.push(event);
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
  }

  private async sample(): Promise<DashboardStatus> {
    const members = this.members();
    const metas = members.filter((m) => m.role === 'meta');
    const idOfAddr = new Map(metas.map((m) => [m.addr, m.id]));
    const metaViews = await Promise.all(
      metas.map(async (m): Promise<MetaView> => {
        try {
          const answer = await this.channels
            .get(m.addr)
            .call(MetadataService, 'MemberStatus', {}, { timeoutMs: VIEW_TIMEOUT_MS });
          return {
            id: m.id,
            error: '',
            groups: answer.groups.map((g) => ({
              group: g.group,
              role: g.role,
              term: g.term,
              leader: idOfAddr.get(g.leaderAddr) ?? g.leaderAddr,
              commitIndex: g.commitIndex,
              appliedIndex: g.appliedIndex,
            })),
          };
        } catch (error) {
          return { id: m.id, error: toDogfsError(error).message, groups: [] };
        }
      }),
    );
    let report: ClusterReportJson | null = null;
    let reportError = '';
    const clusterLeader = groupLeaders(metaViews).get(0);
    const leaderAddr = metas.find((m) => m.id === clusterLeader?.id)?.addr;
    if (leaderAddr === undefined) {
      reportError = 'no metadata server leads the cluster group';
    } else {
      try {
        const answer = await this.channels
          .get(leaderAddr)
          .call(MetadataService, 'ClusterReport', {}, { timeoutMs: REPORT_TIMEOUT_MS });
        report = clusterReportJson(answer);
        report.filesWithMissingShards.splice(MAX_LISTED_FILES);
        report.repairs.splice(MAX_LISTED_FILES);
        report.unfinishedRepairs.splice(MAX_LISTED_FILES);
      } catch (error) {
        const failure = toDogfsError(error);
        reportError =
          failure.code === 'DEADLINE_EXCEEDED'
            ? `no answer within ${REPORT_TIMEOUT_MS} ms (${failure.message})`
            : `${failure.code}: ${failure.message}`;
      }
    }
    const partial = {
      atMs: this.now(),
      ec: this.ec,
      health: healthOf(members, metaViews, report, reportError),
      members,
      metaViews,
      report,
      reportError,
    };
    if (this.last !== undefined)
      for (const change of changesBetween(this.last, partial, this.lastReport))
        this.push({ atMs: partial.atMs, ...change });
    if (report !== null) this.lastReport = report;
    this.last = { ...partial, events: [...this.events] };
    return this.last;
  }
}

/**
 * The page: static HTML whose script asks for /status.json every second and builds the tables with
 * DOM calls (`textContent`, never markup from data: file paths and error messages are anyone's text).
 */
export function dashboardPage(): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>DogFS</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
th{font-weight:600;border-bottom:1px solid #ccc}
#health{padding:.5em .8em;border-radius:4px;font-weight:600}
.ok{background:#e3f6e3;color:#064}.degraded{background:#fff3d6;color:#7a4b00}.down{background:#fde2e2;color:#a00}
.bad{color:#c00;font-weight:600}.good{color:#080}.muted{color:#777}.warn{color:#a60}
.bar{display:inline-block;width:8em;height:.7em;background:#eee;vertical-align:middle}
.bar>span{display:block;height:100%;background:#69c}
#events td:first-child{white-space:nowrap;color:#777}
#metas td:first-child,#chunks td:first-child{white-space:nowrap}
</style></head><body>
<h1>DogFS local cluster</h1>
<div id="health">loading…</div>
<p id="meta" class="muted"></p>
<h2>Metadata servers</h2><table id="metas"></table>
<h2>Chunk servers</h2><table id="chunks"></table>
<h2>Files</h2><div id="files"></div>
<h2>Events</h2><table id="events"></table>
<p class="muted"><a href="/status.json">status.json</a> · <a href="/cluster.json">cluster.json</a></p>
<script>
"use strict";
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); if (cls) e.className = cls; return e; }
function row(table, cells, header) { const tr = el("tr"); for (const c of cells) { const td = c instanceof Node ? (() => { const t = el(header ? "th" : "td"); t.append(c); return t; })() : el(header ? "th" : "td", c); tr.append(td); } table.append(tr); }
function bytes(n) { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : n) + " " + u[i]; }
function ago(ms, now) { const s = Math.max(0, (now - ms) / 1000); return s < 1 ? "now" : s < 120 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago"; }
function time(ms) { return new Date(ms).toLocaleTimeString(); }
function render(s) {
  const health = document.getElementById("health");
  health.textContent = s.health.summary; health.className = s.health.level;
  document.getElementById("meta").textContent = "EC policy " + s.ec + " · updated " + time(s.atMs) + (s.report ? " · cluster " + s.report.clusterId : "");
  const running = new Map(s.members.map((m) => [m.id, m]));
  const metas = document.getElementById("metas"); metas.replaceChildren();
  const groups = [...new Set(s.metaViews.flatMap((v) => v.groups.map((g) => g.group)))].sort();
  row(metas, ["id", "process", ...groups.map((g) => g === 0 ? "cluster group" : g === 1 ? "namespace group" : "group " + g)], true);
  for (const v of s.metaViews) {
    const m = running.get(v.id);
    const cells = [v.id, el("span", m && m.running ? m.addr + " pid " + m.pid : "stopped", m && m.running ? "" : "bad")];
    for (const g of groups) {
      const view = v.groups.find((x) => x.group === g);
      if (!view) { const e = el("span", v.error ? "no answer" : "—", "bad"); e.title = v.error; cells.push(e); continue; }
      const text = view.role + " · term " + view.term + " · commit " + view.commitIndex + (view.appliedIndex !== view.commitIndex ? " (applied " + view.appliedIndex + ")" : "") + (view.role !== "leader" ? " · leader " + (view.leader || "none") : "");
      cells.push(el("span", text, view.role === "leader" ? "good" : view.leader ? "" : "warn"));
    }
    row(metas, cells);
  }
  const chunks = document.getElementById("chunks"); chunks.replaceChildren();
  row(chunks, ["id", "process", "state", "used / capacity", "shards", "last heartbeat", "domain"], true);
  const reported = new Map((s.report ? s.report.chunkServers : []).map((c) => [c.id, c]));
  const shedding = new Set((s.report ? s.report.rebalancing : []).map((r) => r.id));
  for (const m of s.members.filter((x) => x.role === "chunk")) {
    const c = reported.get(m.id);
    const bar = el("span"); if (c) { const b = el("span", undefined, "bar"); const fill = el("span"); fill.style.width = (c.capacityBytes ? Math.min(100, 100 * c.usedBytes / c.capacityBytes) : 0) + "%"; b.append(fill); bar.append(b, " " + bytes(c.usedBytes) + " / " + bytes(c.capacityBytes)); }
    row(chunks, [m.id, el("span", m.running ? "pid " + m.pid : "stopped", m.running ? "" : "bad"),
      c ? el("span", c.state + (c.draining ? " (draining)" : "") + (shedding.has(c.id) ? " (shedding: above its share)" : ""), c.state === "alive" ? (c.draining ? "warn" : "good") : "bad") : el("span", s.report ? "not registered" : "?", "muted"),
      bar, c ? c.shardCount : "", c && c.lastHeartbeatMs ? ago(c.lastHeartbeatMs, s.atMs) : "", c ? c.failureDomain || "—" : ""]);
  }
  const files = document.getElementById("files"); files.replaceChildren();
  if (!s.report) files.append(el("p", "unknown: " + s.reportError, "bad"));
  else {
    const r = s.report;
    files.append(el("p", r.filesWithMissingShardsCount === 0 ? "Every file has all its shards." : r.filesWithMissingShardsCount + " file(s) with missing shards", r.filesWithMissingShardsCount === 0 ? "good" : "bad"));
    const list = el("ul"); for (const f of r.filesWithMissingShards) list.append(el("li", f)); if (r.filesWithMissingShards.length) files.append(list);
    files.append(el("p", r.autoRepair ? "Automatic repair: files damaged for " + (r.autoRepairDelayMs / 1000) + " s are rebuilt by chunk servers; " + r.repairs.length + " in progress." : "Automatic repair: off (dogfs admin repair rebuilds damaged files)."));
    const repairs = el("ul"); for (const x of r.repairs) repairs.append(el("li", x.path + " on " + x.chunkServerId + ", " + ago(x.sinceMs, s.atMs).replace(" ago", ""))); for (const u of r.unfinishedRepairs) repairs.append(el("li", u.path + " (" + u.chunkServerId + "): " + u.reason, "warn")); if (repairs.childElementCount) files.append(repairs);
  }
  const events = document.getElementById("events"); events.replaceChildren();
  if (s.events.length === 0) row(events, [el("span", "nothing yet: events are recorded while this page is open (and member exits always)", "muted")]);
  for (const e of [...s.events].reverse()) row(events, [time(e.atMs), el("span", e.text, e.level === "warn" ? "warn" : "")]);
}
async function tick() {
  try { const r = await fetch("/status.json", { cache: "no-store" }); if (!r.ok) throw new Error("HTTP " + r.status); render(await r.json()); }
  catch (e) { const h = document.getElementById("health"); h.textContent = "dogfs up does not answer: " + e.message; h.className = "down"; }
  setTimeout(tick, 1000);
}
tick();
</script></body></html>
`;
}
