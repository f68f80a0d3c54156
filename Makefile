# Shoal's two set-up commands are `make demo` and `make test`; both install
# what they need on a fresh Debian machine first. Everything runs as root:
# the labs create network namespaces, veth pairs and TUN devices.

CARGO ?= cargo
FUZZ_SECONDS ?= 30
# Tools the tests, demo and benchmarks run, with the Debian package of each.
TOOLS := ip:iproute2 bridge:iproute2 nsenter:util-linux ping:iputils-ping \
         iperf3:iperf3 sockperf:sockperf ethtool:ethtool nft:nftables python3:python3 \
         dig:dnsutils dnsmasq:dnsmasq-base redis-server:redis-server redis-cli:redis-tools \
         curl:curl dnsperf:dnsperf wrk:wrk

.PHONY: deps demo test lint bench-overlay bench-gossip bench-services bench-discovery bench-forward bench fuzz clean

deps:
	@missing=""; for t in $(TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ "$$(id -u)" = 0 ] || { echo "make: the labs need root (network namespaces, TUN devices): run as root"; exit 1; }

demo: deps
	$(CARGO) build --release -p shoal
	./scripts/demo.sh

test: deps lint
	$(CARGO) build -p shoal
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench-overlay: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-overlay

bench-gossip: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-gossip

bench-services: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-services

bench-discovery: deps
	$(CARGO) build --release -p shoal -p benches --bins
	./target/release/bench-discovery

bench-forward:
	$(CARGO) bench -p benches --bench forward

bench: bench-forward bench-overlay bench-gossip bench-services bench-discovery

# Coverage-guided fuzzing of every parser for FUZZ_SECONDS each. cargo-fuzz
# needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	$(CARGO) clean
