# edgepin — `make run` starts the local stack, `make test` runs every check.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
NODE_DIR := integration/node

.PHONY: run test lint build release certs check deps deny-tool deb-tool deb node-deps chromium pebble dnsmasq prometheus proxies rules unit integration fuzz bench bench-deps bench-broadcast clean systemd-verify

## System packages: cmake (pingora builds zlib-ng with it) and redis-server (rooms,
## tests). Installed only when missing.
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## Headless Chromium for the stats dashboard test (Debian's package). Installed only
## when missing.
chromium:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  echo "installing: chromium"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; \
	fi

## pebble, a real ACME server, and its pebble-challtestsrv, for the certificate tests
## (Debian's package). Installed only when missing.
pebble:
	@if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then \
	  echo "installing: pebble"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq pebble; \
	fi

## HAProxy and nginx, the reference proxies of the differential test (and of the
## benchmarks), from Debian. Installed only when missing.
proxies:
	@missing=""; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## dnsmasq, the DNS server whose answers the discovery tests change (Debian's
## dnsmasq-base: the binary without a system service). Installed only when missing.
dnsmasq:
	@if ! command -v dnsmasq >/dev/null && [ ! -x /usr/sbin/dnsmasq ]; then \
	  echo "installing: dnsmasq-base"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dnsmasq-base; \
	fi

## Prometheus and promtool (Debian's package) for the rules' unit tests (`lint`) and the
## scrape test. Installed only when missing.
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing: prometheus"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus; \
	fi

## Node.js packages for the real socket.io / socket.io-client tests.
node-deps:
	@if [ -f $(NODE_DIR)/package-lock.json ] && [ ! -d $(NODE_DIR)/node_modules ]; then \
	  cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

build: deps
	$(CARGO) build --bins

release: deps
	$(CARGO) build --release --bins

## Development certificates (a local CA + localhost), made once.
certs: build
	@[ -f certs/edge.crt ] && [ -f certs/edge.key ] || ./target/debug/edgepin certs --out certs

check: certs
	./target/debug/edgepin check -c proxy.yaml

## cargo-deny for `lint` (deny.toml), built from crates.io when missing, once per
## machine. A debug build: about 1 min on 2 cores (a release build takes 5-8), and the
## check itself takes 2 s either way.
CARGO_DENY_VERSION ?= 0.20.2
deny-tool:
	@$(CARGO) deny --version >/dev/null 2>&1 || { \
	  echo "installing: cargo-deny $(CARGO_DENY_VERSION) (cargo install --debug, about a minute)"; \
	  $(CARGO) install --locked --debug cargo-deny@$(CARGO_DENY_VERSION); \
	}

## cargo-deb for `make deb` and the package test (integration/package.rs), built from
## crates.io when missing, once per machine: a debug build, about 45 s of CPU.
CARGO_DEB_VERSION ?= 3.8.0
deb-tool:
	@$(CARGO) deb --version >/dev/null 2>&1 || { \
	  echo "installing: cargo-deb $(CARGO_DEB_VERSION) (cargo install --debug, about a minute)"; \
	  $(CARGO) install --locked --debug cargo-deb@$(CARGO_DEB_VERSION); \
	}

## The Debian package, from a release build: target/debian/edgepin_<version>_amd64.deb
## (binary, systemd unit, /etc/edgepin/proxy.yaml, user _edgepin; README "Running in
## production"). The test packages the debug binary instead, without this build.
deb: deps deb-tool
	$(CARGO) deb --locked

lint: deps deny-tool prometheus
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) deny check --hide-inclusion-graph bans licenses sources
	@$(MAKE) --no-print-directory systemd-verify
	@$(MAKE) --no-print-directory rules

## The Prometheus rules: syntax and queries (`check`), then their unit tests: every
## alert firing and staying quiet where it should (packaging/prometheus/*.test.yml).
rules: prometheus
	promtool check rules packaging/prometheus/edgepin.rules.yml
	cd packaging/prometheus && promtool test rules edgepin.rules.test.yml

## `systemd-analyze verify` on packaging/edgepin.service, where the tool exists (it is
## not installed for this: systemd in a container is not worth it). It checks that the
## binary exists, so a copy of the unit points at the one just built. (The package test
## verifies the installed unit as it is.)
systemd-verify: build
	@if command -v systemd-analyze >/dev/null; then \
	  d=$$(mktemp -d) && sed "s#/usr/bin/edgepin#$(CURDIR)/target/debug/edgepin#g" packaging/edgepin.service > $$d/edgepin.service \
	    && systemd-analyze verify $$d/edgepin.service; rc=$$?; rm -rf $$d; exit $$rc; \
	else echo "systemd-analyze not found: packaging/edgepin.service not verified"; fi

unit: deps
	$(CARGO) test --lib --bins --examples

## End-to-end tests run one at a time: they start processes and measure behaviour.
integration: deps node-deps chromium pebble dnsmasq deb-tool prometheus proxies
	$(CARGO) test --test integration -- --test-threads=1

## Longer fuzzing than `make test` does: the crash fuzz and the differential test against
## HAProxy and nginx, FUZZ_SECS each (default 300), from FUZZ_SEED (default: the tests'
## fixed seeds; each run prints the seed it used).
FUZZ_SECS ?= 300
fuzz: deps proxies
	EDGEPIN_FUZZ_SECS=$(FUZZ_SECS) EDGEPIN_DIFF_SECS=$(FUZZ_SECS) \
	  $(if $(FUZZ_SEED),EDGEPIN_FUZZ_SEED=$(FUZZ_SEED) EDGEPIN_DIFF_SEED=$(FUZZ_SEED)) \
	  $(CARGO) test --test integration -- --test-threads=1 --nocapture fuzz:: differential::

test: lint check unit integration

## The whole stack: redis-server, one worker per server in proxy.yaml, the proxy.
## Ctrl-C stops it all; `kill -HUP` on edgepin does a rolling worker restart + reload.
run: release
	@[ -f certs/edge.crt ] && [ -f certs/edge.key ] || ./target/release/edgepin certs --out certs
	./target/release/edgepin up -c proxy.yaml

## Cross-worker broadcast: 1,000 Socket.IO clients in 100 rooms on 4 workers (edgepin,
## then the Node.js reference worker), emit-to-delivery p50/p99 and RSS per client; then
## edgepin on a Redis Cluster (3 masters) beside one Redis: 2,000 clients, 1,000 rooms,
## 8 workers; then memory alone: 1,000 and 10,000 idle clients (connected, in a room,
## silent) on one worker of each kind (a descriptor per client: the soft limit is raised
## to the hard one). About five minutes; writes target/bench/broadcast.json,
## broadcast-cluster.json and broadcast-idle.json.
bench-broadcast: release node-deps
	node $(NODE_DIR)/bench-broadcast.js --edgepin ./target/release/edgepin --out target/bench/broadcast.json
	node $(NODE_DIR)/bench-broadcast.js --edgepin ./target/release/edgepin --kinds edgepin --redis single,cluster \
	  --workers 8 --clients 2000 --rooms 1000 --out target/bench/broadcast-cluster.json
	ulimit -n "$$(ulimit -Hn)" && node $(NODE_DIR)/bench-broadcast.js --edgepin ./target/release/edgepin --idle \
	  --workers 1 --clients 1000,10000 --rooms 100 --out target/bench/broadcast-idle.json

## Side-by-side benchmarks (benches/README.md): edgepin vs HAProxy vs nginx, ~25 min (the `upgrade` scenario ~1 min of it per repetition);
## `make bench QUICK=1` for one short repetition (~5 min). Then the Socket.IO broadcast
## benchmark (about a minute either way).
bench: deps bench-deps node-deps
	$(CARGO) build --release --bins
	$(CARGO) build --profile bench-tools --examples
	QUICK=$(QUICK) ./benches/run.sh
	node $(NODE_DIR)/bench-broadcast.js --edgepin ./target/release/edgepin --out target/bench/broadcast.json

## The other proxies and the load generators, from Debian, when missing.
bench-deps: proxies
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

clean:
	$(CARGO) clean
