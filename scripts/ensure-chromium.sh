#!/usr/bin/env bash
# ensure-chromium.sh installs Debian's chromium when it is missing, for the
# console's browser tests (api/console). It prints nothing when a browser is
# already there, so `make test` stays quiet on a prepared machine. With
# --path it prints the browser's path instead, for KEYLEDGER_TEST_CHROMIUM.
set -euo pipefail

find_chromium() {
	local c
	for c in "${KEYLEDGER_TEST_CHROMIUM:-}" chromium chromium-browser /usr/bin/chromium; do
		[ -n "$c" ] || continue
		if command -v "$c" >/dev/null 2>&1; then
			command -v "$c"
			return 0
		fi
	done
	return 1
}

PRINT=0
if [ "${1:-}" = "--path" ]; then
	PRINT=1
fi

if BIN="$(find_chromium)"; then
	[ "$PRINT" = 1 ] && echo "$BIN"
	exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		echo "ensure-chromium: chromium is missing and this user is not root (no sudo either)." >&2
		echo "ensure-chromium: install it as root with: apt-get install chromium" >&2
		exit 1
	fi
fi

echo "ensure-chromium: installing Debian's chromium" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	chromium fonts-liberation >/dev/null

if ! BIN="$(find_chromium)"; then
	echo "ensure-chromium: apt-get finished but chromium is still missing" >&2
	exit 1
fi
echo "ensure-chromium: installed $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo chromium)" >&2
[ "$PRINT" = 1 ] && echo "$BIN"
exit 0
