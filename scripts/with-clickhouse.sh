#!/usr/bin/env bash
# with-clickhouse.sh CMD... runs CMD with a throwaway ClickHouse server.
#
# The server is a child of this script, with its data, temporary files, logs
# and configuration in a fresh temporary directory, listening on 127.0.0.1
# only, on native TCP and HTTP ports that were free when it started. CMD sees
#   KEYLEDGER_TEST_CLICKHOUSE=127.0.0.1:<native port>
#   KEYLEDGER_TEST_CLICKHOUSE_HTTP=127.0.0.1:<http port>
#   KEYLEDGER_CLICKHOUSE_SERVER=<path of clickhouse-server>
# The server is stopped and the directory removed however CMD ends, and the
# script exits with CMD's exit code.
#
# The configuration is the smallest that Debian's clickhouse-server 18.16
# starts with (it refuses to start without mark_cache_size) and that a
# current release accepts too. It runs as root without complaint.
set -euo pipefail

if [ "$#" -eq 0 ]; then
	echo "usage: $0 CMD [ARG...]" >&2
	exit 2
fi

BIN="${KEYLEDGER_CLICKHOUSE_SERVER:-}"
if [ -z "$BIN" ]; then
	BIN="$(command -v clickhouse-server || true)"
fi
if [ -z "$BIN" ] && [ -x /usr/sbin/clickhouse-server ]; then
	BIN=/usr/sbin/clickhouse-server
fi
if [ -z "$BIN" ]; then
	echo "with-clickhouse: clickhouse-server not found; install it with: apt-get install clickhouse-server (or run scripts/ensure-clickhouse.sh)" >&2
	exit 1
fi

DIR="$(mktemp -d "${TMPDIR:-/tmp}/keyledger-clickhouse.XXXXXX")"
SERVER_PID=""

stop_server() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		# ClickHouse waits for open connections before it exits; give it a
		# few seconds, then make sure it is gone.
		for _ in $(seq 1 100); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	SERVER_PID=""
}

cleanup() {
	stop_server
	rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# listening_ports prints the local ports in LISTEN state, one a line, read
# from /proc so that no extra tool (ss, netstat, python) is needed.
listening_ports() {
	local f hex
	for f in /proc/net/tcp /proc/net/tcp6; do
		[ -r "$f" ] || continue
		awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' "$f" |
			while read -r hex; do echo $((16#$hex)); done
	done
}

# pick_port prints a port in 20000-59999 that nothing listens on and that
# is not in the list given as arguments.
pick_port() {
	local used port
	used=" $(listening_ports | tr '\n' ' ') $* "
	while :; do
		port=$((20000 + RANDOM % 40000))
		case "$used" in *" $port "*) continue ;; esac
		echo "$port"
		return
	done
}

write_config() {
	local tcp="$1" http="$2"
	mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/log" "$DIR/user_files" "$DIR/format_schemas"
	cat >"$DIR/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$DIR/log/clickhouse-server.log</log>
        <errorlog>$DIR/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$tcp</tcp_port>
    <http_port>$http</http_port>
    <path>$DIR/data/</path>
    <tmp_path>$DIR/tmp/</tmp_path>
    <user_files_path>$DIR/user_files/</user_files_path>
    <format_schema_path>$DIR/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
EOF
	cat >"$DIR/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <!-- Idle connections notice a shutdown within a second, not ten. -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
EOF
}

# http_ping answers whether the server's HTTP interface says "Ok." on /ping,
# using bash's /dev/tcp so that curl need not be installed.
http_ping() {
	local port="$1" reply
	reply="$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		printf 'GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
		timeout 2 cat <&3
	)" 2>/dev/null || return 1
	case "$reply" in *"Ok."*) return 0 ;; esac
	return 1
}

start_server() {
	local attempt tcp http
	for attempt in 1 2 3 4 5; do
		tcp="$(pick_port)"
		http="$(pick_port "$tcp")"
		write_config "$tcp" "$http"
		"$BIN" --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 &
		SERVER_PID=$!
		for _ in $(seq 1 300); do
			if ! kill -0 "$SERVER_PID" 2>/dev/null; then
				break
			fi
			if http_ping "$http"; then
				TCP_PORT="$tcp"
				HTTP_PORT="$http"
				return 0
			fi
			sleep 0.1
		done
		# Either the server died (most likely a port taken between the
		# check and the bind) or it never answered: show why, try again.
		echo "with-clickhouse: server did not start (attempt $attempt):" >&2
		tail -n 5 "$DIR/log/clickhouse-server.err.log" "$DIR/log/stdout.log" >&2 2>/dev/null || true
		stop_server
		rm -rf "$DIR/data" "$DIR/tmp" "$DIR/log"
	done
	echo "with-clickhouse: giving up starting $BIN" >&2
	return 1
}

TCP_PORT=""
HTTP_PORT=""
start_server

export KEYLEDGER_TEST_CLICKHOUSE="127.0.0.1:$TCP_PORT"
export KEYLEDGER_TEST_CLICKHOUSE_HTTP="127.0.0.1:$HTTP_PORT"
export KEYLEDGER_CLICKHOUSE_SERVER="$BIN"

set +e
"$@"
rc=$?
set -e
exit "$rc"
