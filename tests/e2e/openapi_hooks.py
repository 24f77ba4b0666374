"""Schemathesis hooks for tests/e2e/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

`GET /groups/{group}/records?wait_ms=W` is a long poll: a valid W up to 30 000 makes the request
wait that long when the partition has nothing new, and a bounded run cannot afford many such
waits. A valid W is sent as at most 50 ms (still valid, so every check still holds); an invalid
one (negative, past 30 000, not a number) is sent as generated, to be refused."""
import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/groups/{group}/records" or not case.query:
        return
    wait = case.query.get("wait_ms")
    if isinstance(wait, bool):
        return
    if isinstance(wait, int) and 0 <= wait <= 30000:
        case.query["wait_ms"] = min(wait, 50)
    elif isinstance(wait, str) and wait.isdigit() and wait.isascii() and int(wait) <= 30000:
        case.query["wait_ms"] = str(min(int(wait), 50))
