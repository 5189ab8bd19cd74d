"""Interop: the official Python MCP SDK 1.x WebSocket client (mcp[ws]==1.29.0; subprotocol `mcp`,
the key in the URL since the client takes only a URL) runs the booking flow over /v1/calls/ws."""

import asyncio
import os
import urllib.parse

from mcp import ClientSession
from mcp.client.websocket import websocket_client

from common import Checks, booking_flow

BASE = os.environ["CALLSIDE_URL"].replace("http://", "ws://")
KEY = os.environ["CALLSIDE_KEY"]
RUN = os.environ.get("RUN_ID", "0")


async def main():
    c = Checks("python mcp 1.x websocket")
    call_id = f"py1-ws-{RUN}"
    q = urllib.parse.urlencode({"call_id": call_id, "from": "+14155550134", "to": "+12125550100", "api_key": KEY})
    try:
        async with websocket_client(f"{BASE}/v1/calls/ws?{q}") as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                c.check("initialize", init.serverInfo.name == "callside", init.serverInfo.name)
                tools = await session.list_tools()
                c.check("tools/list", len(tools.tools) == 9, [t.name for t in tools.tools])
                await booking_flow(c, session.call_tool, call_id, False, {})
    except Exception as e:
        c.check("ran without an exception", False, repr(e))
    c.finish()


asyncio.run(main())
