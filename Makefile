# keyledger: `make run` starts the service, `make test` runs every test.
# Both install what they need on a fresh Debian machine.

GO        ?= go
DATA_DIR  ?= ./data
HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test chaos bench bench-verify build deps fuzz vet clickhouse-deps chromium-deps

build: deps
	$(GO) build -o bin/keyledger ./cmd/keyledger

deps:
	$(GO) mod download

# clickhouse-deps installs Debian's clickhouse-server when it is missing.
clickhouse-deps:
	@./scripts/ensure-clickhouse.sh

# chromium-deps installs Debian's chromium when it is missing: the web
# console's tests drive it headless.
chromium-deps:
	@./scripts/ensure-chromium.sh

run: build clickhouse-deps
	./bin/keyledger serve --data-dir $(DATA_DIR) --http-addr $(HTTP_ADDR)

vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: the files above are not formatted" >&2; exit 1; }
	$(GO) vet ./...

test: deps clickhouse-deps chromium-deps vet
	KEYLEDGER_TEST_CHROMIUM="$$(./scripts/ensure-chromium.sh --path)" \
		./scripts/with-clickhouse.sh $(GO) test -race -count=1 -timeout 12m ./...

# chaos runs the fault suite's long version (a few minutes): the real binary
# under a steady mixed load while keyledger, then its clickhouse-server, is
# killed with SIGKILL and ClickHouse is slowed behind a delaying proxy; after
# each fault nothing acknowledged may be lost or shown twice. `make test` runs
# the short version (TestChaos*, about 40 seconds).
chaos: deps clickhouse-deps
	./scripts/with-clickhouse.sh $(GO) test -count=1 -timeout 20m -run '^TestChaos' -v ./cmd/keyledger -args -chaos.long

bench: deps clickhouse-deps
	./scripts/with-clickhouse.sh $(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...

# bench-verify compares POST /v1/verify (durable and --async-usage, the whole
# node: ClickHouse sink, alerts, notary) with a bare net/http handler, one
# load generator, 32 connections, one run. KEYLEDGER_BENCH_CONNS changes the
# connection count; KEYLEDGER_BENCH_PROFILE=DIR writes CPU profiles.
bench-verify: deps clickhouse-deps
	$(GO) test -run '^$$' -bench '^BenchmarkVerifyServe$$' -benchtime 20000x -timeout 20m ./cmd/keyledger/

# fuzz runs each fuzz target of the parsers that face the outside for a while.
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshalEnvelope$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzUnpack$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseAllowedIPs$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseWriters$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseLogQuery$$' -fuzztime 30s ./api
	$(GO) test -run '^$$' -fuzz '^FuzzRowFromMessage$$' -fuzztime 30s ./projections/chlog
