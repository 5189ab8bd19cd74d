"""Shared bits of the interop clients: checks that count, and the closing `N passed, M failed` line."""

import json
import sys


class Checks:
    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok   {what}")
        else:
            self.failed += 1
            print(f"  FAIL {what} {detail}")

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(0 if self.failed == 0 and self.passed > 0 else 1)


def structured(result):
    """structuredContent from a CallToolResult of either SDK major version."""
    for attr in ("structured_content", "structuredContent"):
        v = getattr(result, attr, None)
        if v is not None:
            return v
    return {}


def is_error(result):
    for attr in ("is_error", "isError"):
        v = getattr(result, attr, None)
        if v is not None:
            return bool(v)
    return False


def text(result):
    return result.content[0].text if result.content else ""


async def booking_flow(c, call_tool, call_id, pass_call_id, start_args):
    """start_call → get_caller_context → find_slots → hold_slot → book_slot → end_call."""
    extra = {"call_id": call_id} if pass_call_id else {}
    r = await call_tool("start_call", {**extra, **start_args})
    c.check(f"{call_id}: start_call", not is_error(r) and structured(r).get("business") == "Demo Salon", text(r))
    r = await call_tool("get_caller_context", {**extra})
    c.check(f"{call_id}: caller matched", structured(r).get("status") == "matched", json.dumps(structured(r)))
    c.check(f"{call_id}: speakable greeting", "Ana" in text(r), text(r))
    r = await call_tool("find_slots", {**extra, "service": "consultation"})
    slots = structured(r).get("slots") or []
    c.check(f"{call_id}: slots offered", len(slots) >= 2, text(r))
    if not slots:
        return
    r = await call_tool("hold_slot", {**extra, "service": "consult", "start": slots[0]["start"], "staff_id": slots[0]["staff_id"]})
    hold = structured(r).get("hold_id")
    c.check(f"{call_id}: slot held", bool(hold) and not is_error(r), text(r))
    r = await call_tool("book_slot", {**extra, "hold_id": hold or "", "name": "Ana López"})
    c.check(f"{call_id}: booked", structured(r).get("booked") is True, text(r))
    r = await call_tool("end_call", {**extra, "summary": "Booked a consultation (interop test)."})
    c.check(f"{call_id}: call saved", structured(r).get("saved") is True, text(r))
