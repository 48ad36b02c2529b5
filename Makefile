# keyledger: `make run` starts the service, `make test` runs every test.
# Both install what they need on a fresh Debian machine.

GO        ?= go
DATA_DIR  ?= ./data
HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test test-stress chaos bench bench-verify bench-verify-ab bench-coldstart build deps fuzz vet clickhouse-deps chromium-deps

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

# test-stress runs the fault suite's short version (TestChaos*, with the
# restart right after kill -9 and the stop by SIGTERM) and the
# event store contract suite STRESS_ROUNDS times (3) with GOMAXPROCS=1 beside
# a CPU burner per core, to catch a test that assumes a timing before CI
# does; see scripts/stress.sh. It is heavy: about ten minutes a round on 2
# cores.
STRESS_ROUNDS ?= 3
test-stress: deps clickhouse-deps
	KEYLEDGER_STRESS_ROUNDS=$(STRESS_ROUNDS) GO=$(GO) ./scripts/with-clickhouse.sh ./scripts/stress.sh

# chaos runs the fault suite's long version (about ten minutes): the real
# binary under a steady mixed load while, one at a time, keyledger, then its
# clickhouse-server, is killed with SIGKILL; ClickHouse is slowed behind a
# delaying proxy; the stream leader of a 3-node JetStream cluster (R3
# streams) is shut down and restarted; an external nats-server goes away and
# comes back (writes and verifications answer 503 meanwhile); and a webhook
# receiver is down for two minutes (its alerts arrive once it is back).
# After each fault nothing acknowledged may be lost or shown twice. `make
# test` runs the short version (TestChaos*, about two minutes).
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

# bench-verify-ab runs the bare handler, this build and (with
# KEYLEDGER_BENCH_BASELINE) another one at once, the load going to each in
# turn in slices, so that the machine's drift is shared out.
bench-verify-ab: deps clickhouse-deps
	$(GO) test -run '^$$' -bench '^BenchmarkVerifyAB$$' -benchtime 60000x -timeout 30m ./cmd/keyledger/

# bench-coldstart times the real binary's start (exec to /readyz 200, then
# to caught up: audit sink lag 0, key state and last used current, the
# newest events under a signed checkpoint) on a ledger of 100k keys, 1M
# KEYS events and 10M USAGE events in packs of 500, written straight
# through the event store; it measures at a tenth of USAGE, grows it, and
# measures again, with the node's RSS, so a start that grows with USAGE
# shows. The full size needs about 17 GB under $$TMPDIR (or
# KEYLEDGER_BENCH_DIR) and about 20 minutes on 2 cores;
# KEYLEDGER_BENCH_KEYS, KEYLEDGER_BENCH_KEYS_EVENTS and KEYLEDGER_BENCH_USAGE
# change the sizes, KEYLEDGER_BENCH_PROFILE=DIR keeps CPU profiles and logs.
bench-coldstart: deps clickhouse-deps
	$(GO) test -run '^$$' -bench '^BenchmarkColdStart$$' -benchtime 1x -timeout 4h ./cmd/keyledger/

# fuzz runs each fuzz target of the parsers that face the outside for a while.
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshalEnvelope$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzUnpack$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzEnvelopeEncoding$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseAllowedIPs$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseWriters$$' -fuzztime 30s ./domain
	$(GO) test -run '^$$' -fuzz '^FuzzParseLogQuery$$' -fuzztime 30s ./api
	$(GO) test -run '^$$' -fuzz '^FuzzRowFromMessage$$' -fuzztime 30s ./projections/chlog
