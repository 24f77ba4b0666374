"""A consumer of sensorlog's log through a consumer group, exactly once: the results and the
offsets they reach are stored in one SQLite transaction, so a consumer killed at any point resumes
where its results end. docs/consumers.md shows and explains this program; tests/e2e/test_consumers.py
kills it with SIGKILL mid-stream.

usage: consumer.py BASE_URL GROUP OUT.sqlite [--stop-after-idle SECONDS]
"""
import json, sqlite3, sys, time, urllib.error, urllib.request

base, group, path = sys.argv[1], sys.argv[2], sys.argv[3]
idle_limit = float(sys.argv[5]) if len(sys.argv) > 5 else None


def call(method, route, body=None):
    req = urllib.request.Request(base + route, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


db = sqlite3.connect(path)
db.execute("CREATE TABLE IF NOT EXISTS counts (sensor_id TEXT PRIMARY KEY, readings INTEGER, total REAL)")
db.execute("CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY, next INTEGER)")
db.commit()
partitions = len(call("GET", "/groups")["groups"][0]["partitions"])
try:
    call("POST", "/groups", {"group": group, "start": "earliest"})
except urllib.error.HTTPError as e:
    if e.code != 409:  # it exists: we are resuming
        raise
idle_since = time.time()
while idle_limit is None or time.time() - idle_since < idle_limit:
    got = 0
    for p in range(partitions):
        row = db.execute("SELECT next FROM offsets WHERE partition = ?", (p,)).fetchone()
        # Our own offsets, not the group's: they are the ones stored with our results.
        route = f"/groups/{group}/records?partition={p}&max=1000&wait_ms=100" + (f"&from={row[0]}" if row else "")
        page = call("GET", route)
        with db:  # one transaction: these results and the offset after them, or neither
            for r in page["records"]:
                db.execute("INSERT INTO counts VALUES (?, 1, ?) ON CONFLICT(sensor_id) DO UPDATE SET "
                           "readings = readings + 1, total = total + excluded.total", (r["sensor_id"], r["value"]))
            db.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?)", (p, page["next_offset"]))
        # The group's commit is for lag and monitoring (GET /groups); a crash before it is harmless.
        call("POST", f"/groups/{group}/offsets", {"offsets": [{"partition": p, "committed": page["next_offset"]}]})
        got += len(page["records"])
    if got:
        idle_since = time.time()
        print(f"consumed {got}", flush=True)
