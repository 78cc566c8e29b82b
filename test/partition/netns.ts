/**
 * test/partition/netns — real network partitions between the members of a local cluster.
 *
 * With `dogfs up --distinct-hosts` every member listens on, and connects from, its own loopback address
 * (127.0.1.N). This module runs a program in a network namespace of its own (`unshare --user
 * --map-root-user --net`: no privileges needed where user namespaces are allowed, and nothing outside
 * the namespace is touched), and there cuts the traffic between two sets of addresses with policy-routing
 * rules that blackhole packets from one address to another, both ways. The kernel then drops the packets
 * of established connections (they go silent, as across a broken switch) and refuses new ones at once;
 * healing deletes the rules and TCP delivers what it was retransmitting. Processes with no address of
 * their own (a test's client, on 127.0.0.1) reach every side.
 *
 * Needs `unshare` (util-linux) and `ip` (iproute2); `.ci/run` installs both.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { isIP } from 'node:net';
import { assert } from '../../src/common/assert.js';

const MARK = 'DOGFS_PRIVATE_NETNS';
/** Rules of cuts go before the kernel's 'local' table, which this namespace moves from 0 to LOCAL_PREF. */
const CUT_PREF = 100;
const LOCAL_PREF = 1000;
/** Addresses one cut may pair: a rule per ordered pair, so this bounds the rules at 2 x 32 x 32. */
const MAX_CUT_SIDE = 32;

/**
 * In the parent: runs this same program again inside a network namespace of its own and exits with its
 * status (this function then never returns). In that child: brings loopback up, makes room for the cut
 * rules, and returns.
 */
export function enterPrivateNetns(): void {
  if (process.env[MARK] !== '1') {
    const result = spawnSync(
      'unshare',
      [
        '--user',
        '--map-root-user',
        '--net',
        '--',
        process.execPath,
        ...process.execArgv,
        ...process.argv.slice(1),
      ],
      { stdio: 'inherit', env: { ...process.env, [MARK]: '1' } },
    );
    if (result.error !== undefined)
      throw new Error(
        `cannot run unshare (util-linux) for a private network namespace: ${result.error.message}`,
      );
    process.exit(result.status ?? 1);
  }
  ip(['link', 'set', 'lo', 'up']);
  ip(['-batch', '-'], [`rule add pref ${LOCAL_PREF} lookup local`, 'rule del pref 0'].join('\n'));
}

function ip(args: string[], input?: string): void {
  assert(process.env[MARK] === '1', 'ip rules only ever change in the private namespace');
  try {
    execFileSync('ip', args, { input, stdio: ['pipe', 'ignore', 'pipe'] });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim() ?? '';
    throw new Error(
      `ip ${args.join(' ')} failed (iproute2 installed?): ${stderr || (error as Error).message}`,
    );
  }
}

function isLoopback(address: string): boolean {
  return isIP(address) === 4 && address.startsWith('127.');
}

/** The host part of a member's `host:port`. */
export function hostOf(address: string): string {
  const host = address.slice(0, address.lastIndexOf(':'));
  assert(isLoopback(host), `a member on its own loopback address: ${address}`);
  return host;
}

/** The cuts in force; `heal` removes them all. */
export class Partitions {
  private readonly rules = new Set<string>();

  /** No packet passes between any address of `a` and any of `b`, either way, until `heal`. */
  cut(a: readonly string[], b: readonly string[]): void {
    this.drop(a, b, true);
  }

  /**
   * No packet passes from any address of `from` to any of `to` (TCP's acknowledgements included, so no
   * connection from either side carries anything), while packets the other way still arrive: a host that
   * hears but cannot speak, or speaks but cannot hear.
   */
  cutOneWay(from: readonly string[], to: readonly string[]): void {
    this.drop(from, to, false);
  }

  private drop(a: readonly string[], b: readonly string[], bothWays: boolean): void {
    assert(a.length <= MAX_CUT_SIDE && b.length <= MAX_CUT_SIDE, 'a cut names at most 32 addresses a side');
    const added: string[] = [];
    for (const x of a)
      for (const y of b) {
        assert(x !== y, `an address cannot be cut from itself: ${x}`);
        assert(isLoopback(x) && isLoopback(y), `loopback addresses only: ${x}, ${y}`);
        const pairs = bothWays
          ? [
              [x, y],
              [y, x],
            ]
          : [[x, y]];
        for (const [from, to] of pairs) {
          const rule = `from ${from} to ${to} blackhole`;
          if (!this.rules.has(rule) && !added.includes(rule)) added.push(rule);
        }
      }
    if (added.length === 0) return;
    // Recorded once in force: a failed add must not leave heal() deleting rules that never were.
    ip(['-batch', '-'], added.map((rule) => `rule add pref ${CUT_PREF} ${rule}`).join('\n'));
    for (const rule of added) this.rules.add(rule);
  }

  heal(): void {
    if (this.rules.size === 0) return;
    const removed = [...this.rules].map((rule) => `rule del pref ${CUT_PREF} ${rule}`);
    this.rules.clear();
    // -force: on past a rule already gone, so one never stops the others from being deleted.
    ip(['-force', '-batch', '-'], removed.join('\n'));
  }
}
