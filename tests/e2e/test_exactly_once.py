"""Exactly-once aggregation under kill -9: 20 rounds of SIGKILL during ingest and aggregation,
with out-of-order and hour-late readings, producers resending what they cannot confirm; then the
aggregates equal a reference computed here from the distinct readings, a clean restart changes
nothing, and a rebuild from offset zero gives the same rows."""
import json, os, random, signal, socket, sqlite3, subprocess, time
from conftest import Server, BIN

BASE = 1_763_978_400_000_000_000
HOUR = 3_600_000_000_000


def workload(n, sensors, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        s = i % sensors
        ts = BASE + (i // sensors) * 1_000_000_000 + s * 1000
        if rnd.random() < 0.05:
            ts -= HOUR + rnd.randrange(10**9)          # an hour late (or more)
        elif rnd.random() < 0.05:
            ts -= rnd.randrange(60) * 10**9             # out of order within the hour
        out.append((f"sensor-{s:04d}", ["temperature", "humidity", "pressure"][s % 3], round(rnd.uniform(0, 100), 3),
                    f"site-{s % 7}", ts))
    return out


def line(r):
    return f"{r[1]},sensor_id={r[0]},location={r[3]} value={r[2]!r} {r[4]}\n".encode()


def send(port, rows):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"".join(line(r) for r in rows))
    c.close()


def reference(rows):
    distinct = {}
    for r in rows:
        distinct.setdefault((r[0], r[4]), r)     # (sensor_id, timestamp) identifies a reading
    agg = {}
    for r in distinct.values():
        key = (r[0], time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(r[4] // 10**9)))
        a = agg.setdefault(key, [0, 0.0, float("inf"), float("-inf")])
        a[0] += 1; a[1] += r[2]; a[2] = min(a[2], r[2]); a[3] = max(a[3], r[2])
    return agg


def stored(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(sid, hb): (c, s, mn, mx, st, loc, fr, lr) for sid, hb, c, s, mn, mx, st, loc, fr, lr in con.execute(
            "SELECT sensor_id, hour_bucket, count, sum, min, max, sensor_type, location, first_reading, last_reading FROM aggregates")}
    finally:
        con.close()


def check(got, ref):
    assert set(got) == set(ref), f"buckets differ: {len(set(got) ^ set(ref))}"
    for k, (c, s, mn, mx) in ref.items():
        gc, gs, gmn, gmx = got[k][:4]
        assert gc == c and gmn == mn and gmx == mx and abs(gs - s) <= 1e-9 * max(1, abs(s)), (k, got[k], ref[k])


def wait_settled(s, expected_total, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        groups = json.loads(s.get("/groups")[1])["groups"]
        lag = sum(p["lag"] for g in groups if g["group"] == "aggregator" for p in g["partitions"])
        ends = sum(p["end"] for g in groups if g["group"] == "aggregator" for p in g["partitions"])
        if lag == 0 and ends >= expected_total:
            return
        time.sleep(0.05)
    raise AssertionError("aggregator did not catch up")


def test_twenty_kill_nines_then_aggregates_equal_the_reference(data_dir):
    rows = workload(40_000, sensors=400, seed=11)
    chunks = [rows[i:i + 2000] for i in range(0, len(rows), 2000)]
    rnd = random.Random(12)
    s = Server(data_dir).start()
    kills = 0
    for i, chunk in enumerate(chunks):
        send(s.tcp, chunk)
        time.sleep(rnd.uniform(0, 0.05))                # crash while appends and aggregation are in flight
        s.stop(signal.SIGKILL)
        kills += 1
        s = Server(data_dir).start()
        # TCP has no acks: the producer resends all it cannot confirm (this chunk and the one
        # before), and knows it landed once the server has judged every resent reading.
        resent = chunk + chunks[max(0, i - 1)]
        send(s.tcp, resent)
        deadline = time.time() + 30
        while s.metric("sensorlog_readings_ingested_total") + s.metric("sensorlog_readings_rejected_total", reason="duplicate") < len(resent):
            assert time.time() < deadline, "resent readings not judged"
            time.sleep(0.02)
    distinct = len({(r[0], r[4]) for r in rows})
    wait_settled(s, distinct)
    assert kills == 20
    assert s.stop() == 0
    ref = reference(rows)
    live = stored(os.path.join(data_dir, "aggregates.sqlite"))
    check(live, ref)

    # A clean restart changes nothing.
    s = Server(data_dir).start()
    wait_settled(s, distinct)
    assert s.stop() == 0
    again = stored(os.path.join(data_dir, "aggregates.sqlite"))
    assert again == live

    # Rebuild from offset zero: the same rows, bit for bit (last_updated aside).
    out = os.path.join(data_dir + "-rebuilt.sqlite")
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", data_dir, "--output", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stored(out) == live
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", data_dir], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stored(os.path.join(data_dir, "aggregates.sqlite")) == live


def test_rebuild_in_place_runs_inside_the_running_server(server, data_dir):
    rows = workload(5_000, sensors=50, seed=5)
    send(server.tcp, rows)
    wait_settled(server, len({(r[0], r[4]) for r in rows}))
    before = json.loads(server.get(f"/sensors/{rows[0][0]}/aggregates")[1])["aggregates"]
    assert before
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", data_dir], capture_output=True, text=True)
    assert r.returncode == 0 and "runs inside it as job" in r.stderr, r.stderr
    check(stored(os.path.join(data_dir, "aggregates.sqlite")), reference(rows))
    # The queries read the new store (rows written by the rebuild, later), with the same figures.
    after = json.loads(server.get(f"/sensors/{rows[0][0]}/aggregates")[1])["aggregates"]
    assert [a["last_updated"] > b["last_updated"] for a, b in zip(after, before)] == [True] * len(before)
    strip = lambda rows: [{k: v for k, v in a.items() if k != "last_updated"} for a in rows]
    assert strip(after) == strip(before)


def test_queries(server):
    rows = [(f"q{i % 3}", "temperature", float(i), "lab", BASE + i * 60 * 10**9) for i in range(180)]  # 3 h of minutes
    send(server.tcp, rows)
    wait_settled(server, 180)
    status, body, _ = server.get("/sensors/q0/aggregates?from=2025-11-24T10:00:00Z&to=2025-11-24T12:00:00Z")
    assert status == 200
    aggs = json.loads(body)["aggregates"]
    assert [a["hour_bucket"] for a in aggs] == ["2025-11-24T10:00:00Z", "2025-11-24T11:00:00Z"]
    assert aggs[0]["count"] == 20 and aggs[0]["min"] == 0.0 and aggs[0]["max"] == 57.0
    status, body, _ = server.get(f"/sensors/q1/readings?from={BASE}&to={BASE + 10 * 60 * 10**9}")
    got = json.loads(body)["readings"]
    assert [r["value"] for r in got] == [1.0, 4.0, 7.0]  # `to` is exclusive
    assert got[0]["timestamp"] == "2025-11-24T10:01:00Z" and "offset" in got[0] and "partition" in got[0]
    assert json.loads(server.get("/sensors/nobody/aggregates")[1])["aggregates"] == []
    assert json.loads(server.get("/sensors/nobody/readings")[1])["readings"] == []
    assert server.get("/sensors/q0/aggregates?from=yesterday")[0] == 400
    assert json.loads(server.get("/sensors/q0/readings?limit=0")[1])["error"]["field"] == "limit"
    # Pagination through /aggregates.
    seen, cursor = [], None
    while True:
        status, body, _ = server.get("/aggregates?limit=4" + (f"&cursor={cursor}" if cursor else ""))
        doc = json.loads(body)
        seen += [(a["hour_bucket"], a["sensor_id"]) for a in doc["aggregates"]]
        cursor = doc["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 9 and seen == sorted(seen)
    status, body, _ = server.get("/aggregates?type=humidity")
    assert json.loads(body)["aggregates"] == []
