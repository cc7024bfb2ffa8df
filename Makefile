# Troupe: the two commands a fresh machine needs are `make run` and `make test`.
CARGO ?= cargo
PYTHON ?= python3
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin

.PHONY: all build run install uninstall test test-deps smoke bench fuzz soak lint doc clean

all: build

build:
	$(CARGO) build --workspace --bins

## Build in release mode and run one node with every role, on the embedded default config.
run:
	$(CARGO) build --release --bin troupe
	./target/release/troupe run

## Build in release mode and install the `troupe` binary in $(DESTDIR)$(BINDIR).
install:
	$(CARGO) build --release --bin troupe
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 target/release/troupe $(DESTDIR)$(BINDIR)/troupe

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/troupe

## Python packages the tests use (pyzmq, prometheus_client, selenium), installed if missing.
test-deps:
	@$(PYTHON) -c 'import zmq, prometheus_client, selenium' 2>/dev/null || $(PYTHON) -m pip install --quiet -r tests/python/requirements.txt

## Every test CI runs: unit, integration (real troupe processes), Python interoperability.
## With every feature: the etcd backend too (needs protoc, and etcd-server for its tests).
test: test-deps
	$(CARGO) build --workspace --bins --all-features
	$(CARGO) test --workspace --all-features

## The README's first commands on the installed binary (release build; used by CI).
smoke:
	bash tests/smoke/readme.sh

## Benchmarks (long): see docs/PERFORMANCE.md.
bench: test-deps
	$(CARGO) build --release --workspace --bins --all-features
	$(CARGO) bench --workspace --all-features

## Fuzzing: the decoders of the three servers, fed generated input (property-based, stable
## Rust) for FUZZ_SECS seconds each. Their corpora also run in `make test`.
FUZZ_SECS ?= 60
FUZZ_CRATES ?= troupe-ipc troupe-beacon troupe-broker
fuzz:
	for crate in $(FUZZ_CRATES); do \
		TROUPE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --release -p $$crate --test fuzz || exit 1; \
	done

## Chaos soak: a real cluster (two beacons, a broker, two edges with supervised workers, ipc
## and broker clients) under SIGKILLs and malformed input for SOAK_SECS seconds, on the release
## build; prints a summary table (docs/RELIABILITY.md). SOAK_SEED replays a run. A 60 s one
## runs in `make test` (tests/soak.rs).
SOAK_SECS ?= 600
SOAK_SEED ?=
soak: test-deps
	$(CARGO) build --release --bins
	$(PYTHON) tests/soak/soak.py --troupe target/release/troupe --secs $(SOAK_SECS) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

doc:
	$(CARGO) doc --workspace --no-deps --all-features

clean:
	$(CARGO) clean
