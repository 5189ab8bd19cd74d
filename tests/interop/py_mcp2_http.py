"""Interop: the official Python MCP SDK 2.x (mcp==2.3.0) Streamable HTTP client against callside's
/mcp, once forced to each protocol era (handshake: mode="legacy"; stateless 2026-07-28: a pinned
version, and "auto", which probes server/discover), each running the booking flow."""

import asyncio
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from common import Checks, booking_flow

BASE = os.environ["CALLSIDE_URL"]
KEY = os.environ["CALLSIDE_KEY"]
RUN = os.environ.get("RUN_ID", "0")
EXPECTED_TOOLS = {"start_call", "get_caller_context", "list_services", "find_slots", "hold_slot", "release_hold", "book_slot", "escalate", "end_call"}


async def run(c, mode, expected_version, call_id):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        async with Client(streamable_http_client(f"{BASE}/mcp", http_client=http), mode=mode) as client:
            c.check(f"[{mode}] protocol version {expected_version}", client.protocol_version == expected_version, client.protocol_version)
            tools = await client.list_tools()
            names = {t.name for t in tools.tools}
            c.check(f"[{mode}] tools/list", names == EXPECTED_TOOLS, sorted(names))
            if expected_version == "2026-07-28":
                c.check(f"[{mode}] tools/list caching hints", (tools.ttl_ms or 0) > 0 and tools.cache_scope == "public", f"{tools.ttl_ms} {tools.cache_scope}")
            await booking_flow(c, client.call_tool, call_id, True, {"from": "+14155550134", "to": "+12125550100"})


async def main():
    c = Checks("python mcp 2.x streamable http")
    for mode, version in [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28"), ("auto", "2026-07-28")]:
        try:
            await run(c, mode, version, f"py2-{mode}-{RUN}")
        except Exception as e:  # a crash is a failure with its reason, not a traceback only
            c.check(f"[{mode}] ran without an exception", False, repr(e))
    c.finish()


asyncio.run(main())
