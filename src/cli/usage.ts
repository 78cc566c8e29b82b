/**
 * cli/usage — the file commands' usage text, apart from their code (cli/files.ts): `dogfs --help`, `up`
 * and the server processes print or parse usage without loading the client library.
 */
export const FILE_COMMANDS_USAGE = `Files (endpoints: --meta HOST:PORT,... | $DOGFS_META | $DOGFS_CLUSTER | ./cluster.json;
       $DOGFS_TIMEOUT_MS: deadline of each metadata call, default 10000):
  put LOCAL REMOTE [--ec rs-K-M] [-f]   store a file (LOCAL - reads stdin; -f replaces REMOTE)
  get REMOTE LOCAL                      fetch a file (LOCAL - writes stdout)
  cat REMOTE                            print a file
  ls [-R] [--json] [PATH]               list a directory
  mkdir [-p] PATH                       make a directory (-p: with parents, no error if it exists)
  touch [--ec rs-K-M] PATH              create an empty file (an existing one is left as it is)
  rm [-r] PATH                          remove a file or empty directory (-r: recursively)
  mv SRC DST                            rename or move
  stat [--json] PATH                    show a file's or directory's attributes
  admin report [--json]                 metadata groups, leaders, terms; chunk servers; damaged files
  admin settings [--json] [--stripe-size B] [--block-group-size B] [--dead-after MS] [--lease MS]
                 [--heartbeat MS] [--default-ec POLICY]   show or change cluster settings (for new files)
  admin repair [--json] [PATH]          rebuild missing shards of PATH (or of every damaged file)
  admin members [--json]                each metadata server's own view of its Raft groups (no quorum needed)
  admin drain [--cancel] ID             move every shard off chunk server ID (decommission), or stop
Exit status: 0 done, 1 failed, 2 usage error, 130/143 interrupted (SIGINT/SIGTERM), 129 hung up
(SIGHUP: the terminal closed; killed by it after cleaning up); a command whose
stdout is closed (| head) is killed by SIGPIPE (141 in a shell), as cat is.
`;
