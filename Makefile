# Shoal's two set-up commands are `make demo` and `make test`; both install
# what they need on a fresh Debian machine first. Everything runs as root:
# the labs create network namespaces, veth pairs and TUN devices.

CARGO ?= cargo
FUZZ_SECONDS ?= 30
# Each parser's libFuzzer run inside `make test` (8 targets: 2 minutes).
TEST_FUZZ_SECONDS ?= 15
# Tools the tests, demo and benchmarks run, with the Debian package of each.
TOOLS := ip:iproute2 bridge:iproute2 nsenter:util-linux ping:iputils-ping \
         iperf3:iperf3 sockperf:sockperf ethtool:ethtool nft:nftables python3:python3 \
         dig:dnsutils dnsmasq:dnsmasq-base redis-server:redis-server redis-cli:redis-tools \
         curl:curl dnsperf:dnsperf wrk:wrk nginx:nginx haproxy:haproxy g++:g++
# Python modules the stack demo's Flask app imports (Debian's python3, the
# one on the tasks' PATH), with their packages.
PYMODULES := flask:python3-flask redis:python3-redis

.PHONY: soak deps demo test lint bench-overlay bench-gossip bench-rows bench-services bench-discovery bench-mesh bench-forward bench fuzz clean

# nginx and haproxy ship system services: while they install, a policy-rc.d
# that refuses every start (made only if none exists, then removed) keeps
# Debian's scripts from starting them on the machine.
deps:
	@missing=""; for t in $(TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t##*:}"; done; \
	for m in $(PYMODULES); do \
	  /usr/bin/python3 -c "import $${m%%:*}" >/dev/null 2>&1 || missing="$$missing $${m##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=ours; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  status=$$?; [ "$$policy" = ours ] && rm -f /usr/sbin/policy-rc.d; [ $$status = 0 ] || exit $$status; \
	fi
	@[ "$$(id -u)" = 0 ] || { echo "make: the labs need root (network namespaces, TUN devices): run as root"; exit 1; }

demo: deps
	$(CARGO) build --release -p shoal
	./scripts/demo.sh

test: deps lint
	$(CARGO) build -p shoal
	$(CARGO) test --workspace --all-targets
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The chaos suite, outside CI: SOAK_ROUNDS runs, each scenario's load
# SOAK_EXTRA_SECONDS longer (a long steady state after every fault).
SOAK_ROUNDS ?= 5
SOAK_EXTRA_SECONDS ?= 60
soak: deps
	$(CARGO) build -p shoal
	for round in $$(seq $(SOAK_ROUNDS)); do echo "soak round $$round"; \
	  SHOAL_CHAOS_EXTRA_SECONDS=$(SOAK_EXTRA_SECONDS) $(CARGO) test -p netns-tests --test chaos -- --nocapture || exit 1; done

bench-overlay: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-overlay

bench-gossip: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-gossip

bench-rows: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-rows

bench-services: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-services

bench-discovery: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-discovery

bench-mesh: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-mesh

bench-forward:
	$(CARGO) bench -p benches --bench forward

bench: bench-forward bench-overlay bench-gossip bench-rows bench-services bench-discovery bench-mesh

# Coverage-guided fuzzing of every parser for FUZZ_SECONDS each. cargo-fuzz
# needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
	  mkdir -p corpus/$$target; seeds=""; [ -d seeds/$$target ] && seeds=seeds/$$target; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$target corpus/$$target $$seeds -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; done

clean:
	$(CARGO) clean
