#!/usr/bin/env bash
# Interop tests with the official MCP clients, each in its own pinned environment:
#   - Python MCP SDK 2.x (mcp==2.3.0), Streamable HTTP, forced to each protocol era
#   - Python MCP SDK 1.x (mcp[ws]==1.29.0), WebSocket at /v1/calls/ws
#   - TypeScript SDK (@modelcontextprotocol/sdk 1.x, pinned by package-lock.json), one tool call
#     over each transport
# Starts target/debug/callside on a free loopback port with a temporary data dir, waits for
# /healthz, runs the clients, asserts from /metrics that both MCP eras were exercised, and stops
# the server. Called by .ci/run after `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
work="$root/target/interop"
mkdir -p "$work"

echo "== interop: environments"
if [ ! -x "$work/py2/bin/python" ] || ! "$work/py2/bin/python" -c 'import importlib.metadata as m; assert m.version("mcp") == "2.3.0"' 2>/dev/null; then
  rm -rf "$work/py2" && python3 -m venv "$work/py2"
  "$work/py2/bin/pip" install --quiet --disable-pip-version-check 'mcp==2.3.0'
fi
if [ ! -x "$work/py1/bin/python" ] || ! "$work/py1/bin/python" -c 'import importlib.metadata as m; assert m.version("mcp") == "1.29.0"' 2>/dev/null; then
  rm -rf "$work/py1" && python3 -m venv "$work/py1"
  "$work/py1/bin/pip" install --quiet --disable-pip-version-check 'mcp[ws]==1.29.0'
fi
(cd tests/interop/ts && npm ci --no-audit --no-fund --silent)

echo "== interop: server"
bin="${CALLSIDE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin callside
  bin="$root/target/debug/callside"
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
data=$(mktemp -d)
log="$work/server.log"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
export CALLSIDE_URL="http://127.0.0.1:$port"
export CALLSIDE_KEY="cs_demo_not_secret_5d0c2a91"
export RUN_ID="$(date +%s)"
ready=0
for _ in $(seq 1 100); do
  if curl -fsS "$CALLSIDE_URL/healthz" >/dev/null 2>&1; then ready=1; break; fi
  if ! kill -0 "$server" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "callside did not become healthy; its log:"; cat "$log"; exit 1
fi

status=0
echo "== interop: Python MCP SDK 2.3.0, Streamable HTTP, both eras"
(cd tests/interop && "$work/py2/bin/python" py_mcp2_http.py) || status=1
echo "== interop: Python MCP SDK 1.29.0, WebSocket"
(cd tests/interop && "$work/py1/bin/python" py_mcp1_ws.py) || status=1
echo "== interop: TypeScript SDK, one tool call per transport"
(cd tests/interop/ts && node --experimental-websocket interop.mjs) || status=1

echo "== interop: both protocol eras recorded by the server"
metrics=$(curl -fsS "$CALLSIDE_URL/metrics")
for era in 2025-11-25 2026-07-28; do
  if echo "$metrics" | grep -Eq "^callside_mcp_sessions_total\{era=\"$era\"\} [1-9]"; then
    echo "  ok   era $era exercised"
  else
    echo "  FAIL era $era not exercised"; status=1
  fi
done
if [ "$status" != 0 ]; then
  echo "interop FAILED; server log: $log"
fi
exit "$status"
