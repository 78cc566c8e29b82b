/**
 * cluster — `dogfs up`: starts and supervises a whole local cluster of real processes on loopback and
 * writes DIR/cluster.json (the contract of DESIGN section 7). Owns: members.json, the local status page.
 * May import: daemon (message types), wire, common. It never imports the servers themselves: members are
 * separate OS processes.
 */
export * from './up.js';
