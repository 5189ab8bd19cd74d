#!/usr/bin/env bash
# Starts a throwaway Radicale 3.9.0 CalDAV server for the CalDAV connector tests and prints its
# base URL (e.g. `http://127.0.0.1:5232/`) on stdout; everything else goes to stderr.
#
#   url=$(tests/radicale/start.sh)            # also writes target/radicale.pid
#   CALLSIDE_RADICALE_URL=$url cargo test caldav
#   kill "$(cat target/radicale.pid)"
#
# With RADICALE_WATCH_PID=<pid> set, Radicale is stopped once that process exits.
#
# Radicale runs from its own venv under target/radicale-venv (created once; pip installs only
# radicale==3.9.0 and its dependencies, with no cache), unauthenticated (`--auth-type none`),
# bound to loopback, storing into a fresh temp folder. Flags as `radicale --help` spells them
# in 3.9.0: `--server-hosts`, `--auth-type`, `--storage-filesystem-folder`.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/radicale-venv
if [[ ! -x "$venv/bin/radicale" ]] || ! "$venv/bin/python" -c 'import radicale, sys; sys.exit(radicale.VERSION != "3.9.0")' 2>/dev/null; then
    echo "installing radicale==3.9.0 into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check 'radicale==3.9.0' >&2
fi

port=${RADICALE_PORT:-$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}
storage=$(mktemp -d "${TMPDIR:-/tmp}/callside-radicale.XXXXXX")
log=target/radicale.log

# The config file is /dev/null so no system or user Radicale config leaks in.
"$venv/bin/radicale" --config /dev/null \
    --auth-type none \
    --storage-filesystem-folder "$storage" \
    --server-hosts "127.0.0.1:$port" \
    >"$log" 2>&1 &
pid=$!
echo "$pid" > target/radicale.pid

url="http://127.0.0.1:$port/"
# When a test process starts Radicale itself it passes its pid: Radicale then stops when that
# process exits (checked every second), so a local `cargo test` leaves nothing running.
if [[ -n "${RADICALE_WATCH_PID:-}" ]]; then
    ( while kill -0 "$RADICALE_WATCH_PID" 2>/dev/null; do sleep 1; done; kill "$pid" 2>/dev/null; sleep 1; rm -rf "$storage" ) \
        </dev/null >/dev/null 2>&1 &
fi
# Bounded wait (10 s) for the server to answer.
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "radicale exited early; see $log" >&2
        cat "$log" >&2
        exit 1
    fi
    # Any HTTP answer means it is up (the venv's Python, so curl is not needed).
    if "$venv/bin/python" - "$url" <<'PY' 2>/dev/null; then
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="OPTIONS"), timeout=1)
except urllib.error.HTTPError:
    pass
PY
        echo "radicale $pid listening on $url (storage $storage)" >&2
        echo "$url"
        exit 0
    fi
    sleep 0.1
done
echo "radicale did not answer on $url within 10 s; see $log" >&2
kill "$pid" 2>/dev/null || true
exit 1
