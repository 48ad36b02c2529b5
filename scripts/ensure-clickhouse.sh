#!/usr/bin/env bash
# ensure-clickhouse.sh installs Debian's clickhouse-server and clickhouse-client
# when clickhouse-server is missing. It prints nothing when the server is
# already there, so `make test` stays quiet on a prepared machine.
#
# Debian puts the server in /usr/sbin, which is not on every user's PATH, so
# that directory is checked as well before anything is installed.
set -euo pipefail

if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; then
	exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		echo "ensure-clickhouse: clickhouse-server is missing and this user is not root (no sudo either)." >&2
		echo "ensure-clickhouse: install it as root with: apt-get install clickhouse-server clickhouse-client" >&2
		exit 1
	fi
fi

echo "ensure-clickhouse: installing Debian's clickhouse-server and clickhouse-client" >&2

# The package's post-install script starts a system-wide server on the
# default ports (and fails the install where no init system runs). keyledger
# never uses that server: it starts its own on free loopback ports. A
# policy-rc.d that denies every start (exit 101) keeps the install from
# starting it; an existing policy is left alone.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
	"${SUDO[@]}" chmod 0755 "$POLICY"
	ADDED_POLICY=1
fi
cleanup() {
	if [ "$ADDED_POLICY" = 1 ]; then
		"${SUDO[@]}" rm -f "$POLICY"
	fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	clickhouse-server clickhouse-client >/dev/null

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ]; then
	echo "ensure-clickhouse: apt-get finished but clickhouse-server is still missing" >&2
	exit 1
fi
echo "ensure-clickhouse: installed $(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null || echo clickhouse-server)" >&2
