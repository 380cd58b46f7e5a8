# strongroom: the two commands are `make run` and `make test`; both install what is missing.

CARGO ?= cargo

.PHONY: deps build run test fuzz soak lint fmt clean

deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked

## Build and start the vault on the embedded defaults: data in ./strongroom-data (0700), a
## generated keyring in ./strongroom-keys/keyring (0600) and the key store beside it (apart from
## the data: back them up separately), the policies in ./policies, and an admin token printed
## on the first start.
run: build
	$(CARGO) run --release --locked --bin strongroom -- serve

## The whole test suite: unit, property and integration tests against a real server and RocksDB,
## the vault's end-to-end tests again on a real PostgreSQL cluster (a primary and two
## synchronous standbys, started and stopped by scripts/test.sh), and the guard bench.
test: deps
	./scripts/python-env.sh >/dev/null
	CARGO="$(CARGO)" ./scripts/test.sh

## The long fuzz run: every decoder harness with 1,000,000 inputs, in release mode
## (`make test` runs the same harnesses with proptest's default case counts).
fuzz: deps
	./scripts/fuzz.sh

## The long crash soak: 1,000 kill -9 cycles of the real binary under writers, updates, shreds and
## policy changes (`make test` runs 3).
soak: deps
	./scripts/soak.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
