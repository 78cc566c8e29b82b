#!/bin/bash
# Produces the README's "real session": starts a cluster in a temporary directory, runs the commands, prints them with their output.
set -u
D="$(cd "$(dirname "$0")/.." && pwd)/bin/dogfs.js"
WORK=$(mktemp -d); cd "$WORK"
dogfs() { node $D "$@"; }
node $D up --dir ./dogfs-data > up.log 2>&1 &
UP=$!
for i in $(seq 1 600); do [ -f dogfs-data/cluster.json ] && break; sleep 0.1; done
export DOGFS_CLUSTER=$PWD/dogfs-data/cluster.json
run() { echo "\$ $*"; eval "$@" 2>&1; }
pid_of() { node -e "const c=require('$PWD/dogfs-data/cluster.json');console.log(c.processes.find(p=>p.id===process.argv[1]).pid)" "$1"; }
holder() { node $D stat --json /pictures/photo.bin | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const j=JSON.parse(s);console.log(j.blockGroups[0].shards[$1].chunkServer)})"; }
head -c 3000000 /dev/urandom > photo.bin
{
run "dogfs mkdir -p /pictures"
run "dogfs put photo.bin /pictures/photo.bin --ec rs-4-2"
run "dogfs ls /pictures"
H0=$(holder 0); H1=$(holder 1); H2=$(holder 2); H3=$(holder 3)
echo "# kill -9 $H0"; kill -9 $(pid_of $H0)
run "dogfs get /pictures/photo.bin copy.bin && cmp photo.bin copy.bin && echo identical"
for i in $(seq 1 300); do node $D admin report --json | grep -q '"state": "dead"' && break; sleep 0.1; done
run "dogfs admin report"
for i in $(seq 1 1200); do node $D admin report --json > r.json; grep -q '"filesWithMissingShardsCount": 0' r.json && grep -q '"repairs": \[\]' r.json && break; sleep 0.1; done
echo "# a minute later, with no command"
run "dogfs admin report | tail -n 7"
echo "# kill -9 $H1 $H2"; kill -9 $(pid_of $H1) $(pid_of $H2)
run "dogfs get /pictures/photo.bin copy2.bin && cmp photo.bin copy2.bin && echo identical"
echo "# kill -9 $H3"; kill -9 $(pid_of $H3)
run "dogfs get /pictures/photo.bin copy3.bin; echo exit \$?"
echo "# kill -9 meta-1 meta-2"; kill -9 $(pid_of meta-1) $(pid_of meta-2)
run "dogfs ls /pictures; echo exit \$?"
run "dogfs admin members"
} | tee session.txt
kill -INT $UP; wait $UP
