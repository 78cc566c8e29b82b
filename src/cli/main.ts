/**
 * cli — the `dogfs` command: argument parsing and dispatch to the client library, the server processes
 * and the local-cluster supervisor. User errors print one line on stderr and exit non-zero.
 * May import: client, cluster, metadata, chunk, wire, common.
 */
process.stderr.write('dogfs: not implemented yet\n');
process.exitCode = 1;
