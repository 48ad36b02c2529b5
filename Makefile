# keyledger: `make run` starts the service, `make test` runs every test.
# Both install what they need on a fresh Debian machine.

GO        ?= go
DATA_DIR  ?= ./data
HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test bench build deps fuzz vet clickhouse-deps

build: deps
	$(GO) build -o bin/keyledger ./cmd/keyledger

deps:
	$(GO) mod download

# clickhouse-deps installs Debian's clickhouse-server when it is missing.
clickhouse-deps:
	@./scripts/ensure-clickhouse.sh

run: build clickhouse-deps
	./bin/keyledger serve --data-dir $(DATA_DIR) --http-addr $(HTTP_ADDR)

vet:
	gofmt -l . | tee /dev/stderr | (! read)
	$(GO) vet ./...

test: deps clickhouse-deps vet
	./scripts/with-clickhouse.sh $(GO) test -race -count=1 -timeout 12m ./...

bench: deps clickhouse-deps
	./scripts/with-clickhouse.sh $(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...

fuzz: deps
	$(GO) test -run '^$$' -fuzz FuzzParseToken -fuzztime 30s ./domain
