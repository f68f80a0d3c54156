#!/usr/bin/env bash
# `make demo`: a 3-node lab cluster with `shoal lab up`, the Swarm verbs on
# it, a 5-replica service of real HTTP servers placed across the nodes and
# published on 8080 (the routing mesh answers on every node), traffic
# between tasks on different nodes over the overlay, a scale, a
# rolling update and a removal, then `shoal lab down`. Everything stays
# inside the lab's own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"
NAME="demo$$"
trap 'shoal lab down "$NAME" >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
node() { local n=$1; shift; step shoal lab exec --name "$NAME" "$n" -- "$@"; }
quiet() { local n=$1; shift; shoal lab exec --name "$NAME" "$n" -- "$@"; }
# The id and node of the first running task of service $1 on node $2.
task_on() {
  quiet node1 shoal service ps --no-trunc --format json "$1" | python3 -c '
import json, sys
for line in sys.stdin:
    t = json.loads(line)
    if t["DesiredState"] == "Running" and t["CurrentState"].startswith("Running") and t["Node"] == sys.argv[1]:
        print(t["ID"]); break' "$2"
}
ip_of() { quiet node1 shoal task inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["NetworksAttachments"][0]["Addresses"][0].split("/")[0])'; }

step shoal lab up --nodes 3 --name "$NAME"
step shoal lab ls
node node1 shoal node ls
node node1 shoal node update --label-add zone=east node2
node node1 shoal node inspect --pretty node2

# An overlay network and a service of five real HTTP servers on it.
node node1 shoal network create -d overlay front
node node1 shoal service create --name web --replicas 5 --network front --update-monitor 1s \
  -p 8080:8000 python3 -m http.server 8000
node node1 shoal service ls
node node1 shoal service ps web

# The routing mesh: 8080 answers on every node, each time from one of web's
# tasks on any node (the listener opens once the node's directory has web).
for n in node1 node2 node3; do
  node "$n" curl -s -o /dev/null --retry 10 --retry-connrefused --retry-delay 1 \
    -w "$n:8080 -> HTTP %{http_code}\n" http://127.0.0.1:8080/
done
node node2 shoal debug mesh

# From a task on node1 to a task on node3, by overlay address.
FROM=$(task_on web node1)
TO=$(task_on web node3)
TO_IP=$(ip_of "$TO")
node node1 shoal task exec "$FROM" -- python3 -c \
  "import urllib.request as u; r = u.urlopen('http://$TO_IP:8000/', timeout=5); print(r.status, r.reason)"
node node1 shoal service logs --tail 1 web

# Throughput between tasks on two nodes: one iperf3 server per node.
node node1 shoal service create --name perf --mode global --network front iperf3 -s
PERF1=$(task_on perf node1)
PERF3_IP=$(ip_of "$(task_on perf node3)")
# The server may still be starting: retry a few times, half a second apart.
node node1 shoal task exec "$PERF1" -- sh -c \
  "for i in 1 2 3 4 5 6 7 8 9 10; do iperf3 -c $PERF3_IP -t 3 && exit 0; sleep 0.5; done; exit 1"

# Scale, roll, remove.
node node1 shoal service scale web=2
node node1 shoal service update --env-add COLOUR=blue web
node node1 shoal service ps web
node node1 shoal service rm web perf
node node1 shoal network rm front
step shoal lab down "$NAME"
trap - EXIT
left=$(ip netns list | grep -c "shoal-lab-$NAME-" || true)
echo "namespaces left: $left"
[ "$left" -eq 0 ]
