#!/usr/bin/env bash
# `make demo`: the seed tutorial (../shared/seed/) with `shoal` in place of
# `docker`, on a 3-node lab cluster and a client host beside it:
#   1. the seed's compose file as written (registry images, `build: .`),
#      deployed as far as Shoal can, and the message that says why not;
#   2. the seed's Flask + Redis hit counter (examples/stackdemo), deployed
#      as a stack; `curl` from the client to every node's :8000 counts up;
#   3. the tutorial's service verbs: `service create --name myapp
#      --replicas 5 -p 8080:80` with real nginx, ls/inspect/ps, scale,
#      update, rm; `node update --label-add` and `node inspect`;
#   4. `stack rm` and `lab down` (kept with KEEP=1).
# Everything stays inside the lab's own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"
NAME="demo$$"
STACKDEMO="$PWD/examples/stackdemo"
# nginx's files for myapp, outside /tmp (each task has a /tmp of its own).
WWW="/var/tmp/shoal-$NAME-www"
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then shoal lab down "$NAME" >/dev/null 2>&1 || true; fi
  rm -rf "$WWW"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
on() { local n=$1; shift; step shoal lab exec --name "$NAME" "$n" -- "$@"; }
quiet() { local n=$1; shift; shoal lab exec --name "$NAME" "$n" -- "$@"; }
underlay() { python3 -c 'import json,sys; print([n["underlay"] for n in json.load(open(sys.argv[1]))["nodes"] if n["name"] == sys.argv[2]][0])' "/run/shoal/labs/$NAME/lab.json" "$1"; }

step shoal lab up --nodes 3 --clients 1 --name "$NAME"
on node1 shoal node ls

# 1. The seed's file as it is: Shoal runs programs, not registry images.
printf '\n# The seed tutorial'"'"'s docker-compose.yml, unchanged:\n'
cat "$STACKDEMO/seed/docker-compose.yml"
on node1 shoal stack deploy -c "$STACKDEMO/seed/docker-compose.yml" seed || true
on node1 shoal stack rm seed

# 2. The same stack for Shoal: web is Debian's python3 running the seed's
# app.py, redis is Debian's redis-server with its data in a named volume.
printf '\n# examples/stackdemo/docker-compose.yml:\n'
cat "$STACKDEMO/docker-compose.yml"
on node1 shoal stack deploy -c "$STACKDEMO/docker-compose.yml" demo
on node1 shoal stack ls
on node1 shoal stack services demo
on node1 shoal stack ps demo

# The counter, through each node's published :8000, from outside the swarm.
for n in node1 node2 node3 node1; do
  on client1 curl -s --retry 10 --retry-connrefused --retry-delay 1 "http://$(underlay "$n"):8000/"
done

# 3. The tutorial's service verbs, with real nginx (the task's nginx runs
# in the foreground, its files in the task's own /tmp).
mkdir -p "$WWW"
cat > "$WWW/nginx.conf" <<EOF
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi; uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
    server { listen 80; location / { return 200 "nginx on \$hostname\n"; } }
}
EOF
on node1 shoal service create --name myapp --replicas 5 -p 8080:80 --stop-signal QUIT \
  nginx -e stderr -c "$WWW/nginx.conf" -g 'daemon off;'
on node1 shoal service ls
on node1 shoal service inspect --pretty myapp
on node1 shoal service ps myapp
# Every node answers on 8080; each new connection goes to the next task.
for n in node1 node2 node3; do
  on client1 curl -s --retry 10 --retry-connrefused --retry-delay 1 "http://$(underlay "$n"):8080/"
done
on client1 sh -c "for i in 1 2 3 4 5; do curl -s http://$(underlay node2):8080/; done"
on node1 shoal service scale myapp=2
on node1 shoal service update --env-add COLOUR=blue myapp
on node1 shoal service ps myapp
on node1 shoal service rm myapp

on node1 shoal node update --label-add zone=east node2
on node1 shoal node inspect --pretty node2

# 4. Removal: services, then the stack's network; the volume stays.
on node1 shoal stack rm demo
if [ "${KEEP:-0}" = 1 ]; then
  printf '\nKEEP=1: lab %s is still up. Try:  shoal lab exec --name %s node1 -- shoal stack ls\n' "$NAME" "$NAME"
  exit 0
fi
step shoal lab down "$NAME"
trap - EXIT
rm -rf "$WWW"
left=$(ip netns list | grep -c "shoal-lab-$NAME-" || true)
echo "namespaces left: $left"
[ "$left" -eq 0 ]
