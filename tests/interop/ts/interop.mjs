// Interop: the official MCP TypeScript SDK (@modelcontextprotocol/sdk 1.x) makes one tool call
// over each MCP transport callside serves: Streamable HTTP at /mcp and the per-call WebSocket at
// /v1/calls/ws (subprotocol `mcp`, key in the URL). Prints `N passed, M failed`; exit 1 on failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { WebSocketClientTransport } from "@modelcontextprotocol/sdk/client/websocket.js";

const base = process.env.CALLSIDE_URL;
const key = process.env.CALLSIDE_KEY;
const run = process.env.RUN_ID ?? "0";
let passed = 0;
let failed = 0;
const check = (what, ok, detail = "") => {
  if (ok) {
    passed += 1;
    console.log(`  ok   ${what}`);
  } else {
    failed += 1;
    console.log(`  FAIL ${what} ${detail}`);
  }
};

async function overHttp() {
  const client = new Client({ name: "callside-interop-ts", version: "0.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
  await client.connect(transport);
  check("http: negotiated a handshake-era version", ["2025-11-25", "2025-06-18", "2025-03-26"].includes(transport.protocolVersion), String(transport.protocolVersion));
  const callId = `ts-http-${run}`;
  const r = await client.callTool({ name: "start_call", arguments: { call_id: callId, from: "+14155550134", to: "+12125550100" } });
  check("http: start_call", !r.isError && r.structuredContent?.business === "Demo Salon", JSON.stringify(r));
  const end = await client.callTool({ name: "end_call", arguments: { call_id: callId, summary: "TS interop over HTTP." } });
  check("http: end_call saved", end.structuredContent?.saved === true, JSON.stringify(end));
  await client.close();
}

async function overWebSocket() {
  const client = new Client({ name: "callside-interop-ts", version: "0.0.0" });
  const wsBase = base.replace("http://", "ws://");
  const q = new URLSearchParams({ call_id: `ts-ws-${run}`, from: "+14155550134", to: "+12125550100", api_key: key });
  await client.connect(new WebSocketClientTransport(new URL(`${wsBase}/v1/calls/ws?${q}`)));
  const r = await client.callTool({ name: "get_caller_context", arguments: {} });
  check("ws: get_caller_context", !r.isError && r.structuredContent?.status === "matched", JSON.stringify(r));
  await client.close();
}

for (const [name, f] of [["http", overHttp], ["ws", overWebSocket]]) {
  try {
    await f();
  } catch (e) {
    check(`${name}: ran without an exception`, false, String(e?.stack ?? e));
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
