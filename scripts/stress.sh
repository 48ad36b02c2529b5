#!/usr/bin/env bash
# stress.sh runs the tests that depend most on timing while the CPU is kept
# busy, several rounds in a row, to catch a timing assumption before CI
# does: the fault suite's short version (TestChaos*, the real binary with
# its managed ClickHouse, with the tests of a restart right after kill -9
# and of a stop by SIGTERM) and the event store contract suite (embedded,
# 3-node cluster, external URL). Each round runs both with the race
# detector and GOMAXPROCS=1 (the test binaries and the keyledger processes
# they start), beside CPU burners, one per core. It is meant to run under
# scripts/with-clickhouse.sh (make test-stress does).
#
#   KEYLEDGER_STRESS_ROUNDS   rounds to run (3)
#   KEYLEDGER_STRESS_BURNERS  busy loops beside the tests (the core count)
#   KEYLEDGER_STRESS_LOGS     directory for each run's output (a new one)
#
# It prints one line per run and a summary, and exits 1 if any run failed.
set -euo pipefail

GO="${GO:-go}"
ROUNDS="${KEYLEDGER_STRESS_ROUNDS:-3}"
BURNERS="${KEYLEDGER_STRESS_BURNERS:-$(nproc)}"
LOGS="${KEYLEDGER_STRESS_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/keyledger-stress.XXXXXX")}"
mkdir -p "$LOGS"

case "$ROUNDS" in '' | *[!0-9]*)
	echo "stress: KEYLEDGER_STRESS_ROUNDS must be a number, not '$ROUNDS'" >&2
	exit 2
	;;
esac

BURNER_PIDS=()
stop_burners() {
	local pid
	for pid in "${BURNER_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${BURNER_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	BURNER_PIDS=()
}
trap stop_burners EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The test binaries are built before the CPU is taken, so that the rounds
# time the tests, not the compiler.
echo "stress: building the test binaries"
"$GO" test -race -count=1 -run '^$' ./cmd/keyledger ./eventstore >/dev/null

for _ in $(seq 1 "$BURNERS"); do
	(while :; do :; done) &
	BURNER_PIDS+=($!)
done
echo "stress: $ROUNDS rounds beside $BURNERS CPU burners, GOMAXPROCS=1; logs in $LOGS"

runs=0
failed=0
failures=()
run() {
	local name="$1" round="$2"
	shift 2
	local log="$LOGS/round$round-$name.log" start rc
	start=$(date +%s)
	set +e
	GOMAXPROCS=1 "$@" >"$log" 2>&1
	rc=$?
	set -e
	runs=$((runs + 1))
	if [ "$rc" -eq 0 ]; then
		echo "stress: round $round/$ROUNDS $name ok ($(($(date +%s) - start))s)"
	else
		failed=$((failed + 1))
		failures+=("round $round $name: $log")
		echo "stress: round $round/$ROUNDS $name FAILED ($(($(date +%s) - start))s), see $log"
		grep -E -- '^(--- FAIL|FAIL|panic:)|_test\.go:[0-9]+:' "$log" | head -n 20 || true
	fi
}

for round in $(seq 1 "$ROUNDS"); do
	run chaos "$round" "$GO" test -race -count=1 -timeout 30m -run '^(TestChaos|TestServeReadyRightAfterKill9$|TestServeStopsCleanlyOnSIGTERM$)' ./cmd/keyledger
	run contract "$round" "$GO" test -race -count=1 -timeout 15m -run '^TestContract' ./eventstore
done

echo "stress: $runs runs in $ROUNDS rounds, $failed failed"
for f in "${failures[@]}"; do
	echo "stress:   $f"
done
[ "$failed" -eq 0 ]
