#!/usr/bin/env bash
# `make demo`: a 3-node lab cluster with `shoal lab up`, the Swarm verbs on
# it, two tasks on different nodes that find each other by gossip and talk
# over the overlay, then `shoal lab down`. Everything stays inside the lab's
# own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"
NAME="demo$$"
trap 'shoal lab down "$NAME" >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
node() { local n=$1; shift; step shoal lab exec --name "$NAME" "$n" -- "$@"; }

step shoal lab up --nodes 3 --name "$NAME"
step shoal lab ls
node node1 shoal node ls
node node1 shoal node update --label-add zone=east node2
node node1 shoal node inspect --pretty node2
node node1 shoal swarm join-token worker

# One task on node1, one on node3, on one overlay network.
WEB1="shoal-lab-$NAME-web1"
WEB2="shoal-lab-$NAME-web2"
node node1 shoal debug endpoint add --sandbox "$WEB1" --vni 4096 --subnet 10.0.1.0/24 --ip 10.0.1.2
node node3 shoal debug endpoint add --sandbox "$WEB2" --vni 4096 --subnet 10.0.1.0/24 --ip 10.0.1.3
# Gossip spreads the two endpoints to every node within a second or two.
for _ in $(seq 100); do
  rows=$(shoal lab exec --name "$NAME" node2 -- shoal debug tables | grep -c '"key"' || true)
  [ "$rows" -eq 2 ] && break
  sleep 0.1
done
node node2 shoal debug members
node node2 shoal debug tables
step nsenter --net="/run/netns/$WEB1" ping -c 3 -i 0.2 10.0.1.3
nsenter --net="/run/netns/$WEB2" iperf3 -s -1 -B 10.0.1.3 >/dev/null 2>&1 &
sleep 0.5
step nsenter --net="/run/netns/$WEB1" iperf3 -c 10.0.1.3 -t 3
step shoal lab down "$NAME"
trap - EXIT
left=$(ip netns list | grep -c "shoal-lab-$NAME-" || true)
echo "namespaces left: $left"
[ "$left" -eq 0 ]
