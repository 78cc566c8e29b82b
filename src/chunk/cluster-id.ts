/**
 * chunk/cluster-id — which cluster a chunk server's directory belongs to: DIR/cluster-id, written once,
 * from the answer to the server's first registration, and named in every registration after. A cluster
 * whose id differs refuses the server (its shards are another cluster's, which this cluster's garbage
 * collection and orphan sweep must never touch), and a DeleteShard naming another cluster is refused.
 * HDFS keeps a clusterID in each storage directory for the same reason.
 * May import: common, daemon (its start error), wire (errors).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isClusterId, MAX_CLUSTER_ID_CHARS } from '../common/cluster-id.js';
import { writeFileDurably } from '../common/durable-file.js';
import { DaemonStartError } from '../daemon/daemon.js';
import { DogfsError } from '../wire/errors.js';

const FILE_NAME = 'cluster-id';

export class ClusterMembership {
  private constructor(
    private readonly dir: string,
    private current: string,
  ) {}

  /** Reads DIR/cluster-id ('' when absent). Throws on an unreadable or malformed file. */
  static async open(dir: string): Promise<ClusterMembership> {
    const path = join(dir, FILE_NAME);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new ClusterMembership(dir, '');
      throw new DaemonStartError(`${path} is unreadable: ${(error as Error).message}`);
    }
    const id = text.trim();
    if (!isClusterId(id)) throw new DaemonStartError(`${path} does not hold a cluster id`);
    return new ClusterMembership(dir, id);
  }

  /** The cluster this directory belongs to; '' before its first registration. */
  get clusterId(): string {
    return this.current;
  }

  /**
   * Records the cluster a registration answered with (durably: written, fsynced, renamed into place).
   * Another cluster than the one recorded is FAILED_PRECONDITION, and changes nothing.
   */
  async adopt(clusterId: string): Promise<void> {
    if (clusterId === this.current) return;
    if (this.current !== '')
      throw new DogfsError(
        'FAILED_PRECONDITION',
        `this chunk server belongs to cluster ${this.current}, not ${clusterId.slice(0, MAX_CLUSTER_ID_CHARS)}`,
      );
    if (!isClusterId(clusterId))
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `cluster id '${clusterId.slice(0, MAX_CLUSTER_ID_CHARS)}' is malformed`,
      );
    await writeFileDurably(join(this.dir, FILE_NAME), `${clusterId}\n`);
    this.current = clusterId;
  }
}
