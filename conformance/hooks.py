"""Schemathesis hooks for `cargo xtask conformance`.

The OpenAPI document states every rule of the service that a JSON Schema can state. A few rules span
fields or depend on what the service gave before, which JSON Schema cannot say; the document states
them in prose (each schema's description), and these hooks keep generated requests that break them
out of the run, so that "schema-valid request rejected" means what it says. Nothing else is filtered:
every request the document allows and these rules allow must be accepted, and every request the
document forbids must be refused.

The rules (docs/api.md):
- a record: `startedAt` >= `createdAt`; `completedAt` >= `startedAt`, or >= `createdAt` without
  `startedAt`; a workflow: `currentStep` <= `stepCount`, `completedCount + failedCount +
  skippedCount` <= `stepCount`, each step's `completedAt` >= its `startedAt`;
- a search and the list: `until` > `since`;
- a consistency proof: `from` <= `to`;
- a `cursor` is one the service gave (`nextCursor`): any other is refused.
"""

from datetime import datetime

import schemathesis

RECORD_PATHS = {
    "/api/v1/audit/remediation",
    "/api/v1/audit/aianalysis",
    "/api/v1/audit/workflow",
    "/api/v1/audit/execution",
}

# Cursors the service gave in this run: the only ones a client can hold.
ISSUED_CURSORS = set()


def instant(value):
    """The instant of an RFC 3339 timestamp, or None for anything else (left to the schema)."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def ordered(earlier, later):
    """False only when both are instants and `later` comes before `earlier`."""
    a, b = instant(earlier), instant(later)
    return a is None or b is None or b >= a


def integer(value):
    """An integer as JSON Schema counts them (`3.0` is one), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):  # a query parameter, as sent
        try:
            return int(value)
        except ValueError:
            return None
    return None


def record_rules_hold(record):
    if not isinstance(record, dict):
        return True
    created, started, completed = (
        record.get("createdAt"),
        record.get("startedAt"),
        record.get("completedAt"),
    )
    if not ordered(created, started):
        return False
    if not ordered(started if instant(started) is not None else created, completed):
        return False
    total = integer(record.get("stepCount"))
    if total is not None:
        current = integer(record.get("currentStep"))
        if current is not None and current > total:
            return False
        counts = [integer(record.get(k)) for k in ("completedCount", "failedCount", "skippedCount")]
        if sum(max(c, 0) for c in counts if c is not None) > total:
            return False
    steps = record.get("stepStatuses")
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, dict) and not ordered(step.get("startedAt"), step.get("completedAt")):
                return False
    return True


def since_before_until(params):
    if not isinstance(params, dict):
        return True
    a, b = instant(params.get("since")), instant(params.get("until"))
    return a is None or b is None or b > a


@schemathesis.hook
def filter_case(context, case):
    path = case.operation.path
    body = case.body if isinstance(case.body, dict) else None
    query = case.query or {}
    if path in RECORD_PATHS:
        return record_rules_hold(body)
    if path == "/api/v1/audit/batch" and body is not None:
        items = body.get("records")
        if isinstance(items, list):
            return all(not isinstance(i, dict) or record_rules_hold(i.get("record")) for i in items)
        return True
    if path == "/api/v1/audit/search":
        return since_before_until(body)
    if path in ("/api/v1/audit/records", "/api/v1/audit/trail/{correlationId}"):
        cursor = query.get("cursor")
        if cursor is not None and cursor not in ISSUED_CURSORS:
            return False
        return path != "/api/v1/audit/records" or since_before_until(query)
    if path == "/api/v1/log/proof/consistency":
        a, b = integer(query.get("from")), integer(query.get("to"))
        return a is None or b is None or a <= b
    return True


@schemathesis.hook
def after_call(context, case, response):
    try:
        cursor = response.json().get("nextCursor")
    except Exception:  # not JSON, or not an object: no cursor given
        return
    if isinstance(cursor, str):
        ISSUED_CURSORS.add(cursor)
