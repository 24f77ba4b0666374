"""verify --repair against a real sensorlogd: a salvage keeps "aggregates = the fold of the log", so
producers' resends heal the gap exactly once, and verify reports the state after its repair."""
import json, os, socket, sqlite3, tempfile, time
from conftest import Server
from test_operator import BASE, fill, tool

N, SENSORS = 300_000, 1000


def reading(i):
    """The i-th reading `fill` sends: (sensor, timestamp ns, value)."""
    return f"op-{i % SENSORS}", BASE + (i // SENSORS) * 10**9 + i % SENSORS, (i * 7919) % 100003 / 1000


def line(i):
    sid, ts, value = reading(i)
    return f"temperature,sensor_id={sid},location=l value={value} {ts}\n".encode()


def iso(ns):
    s, frac = divmod(ns - BASE, 10**9)     # BASE is 2025-11-24T10:00:00Z; fill spans 300 s
    return f"2025-11-24T10:{s // 60:02d}:{s % 60:02d}.{frac:09d}Z"


def rows(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        return {(r[0], r[1]): r[2:] for r in c.execute(
            "SELECT sensor_id, hour_bucket, count, sum, min, max, sensor_type, location, first_reading, last_reading FROM aggregates")}


def counts(path):
    return {k: v[0] for k, v in rows(path).items()}


def lag_and_end(s):
    parts = [p for g in json.loads(s.get("/groups")[1])["groups"] if g["group"] == "aggregator" for p in g["partitions"]]
    return sum(p["lag"] for p in parts), sum(p["end"] for p in parts)


def wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def corrupt_a_closed_segment(data_dir):
    part = os.path.join(data_dir, "log", "partition-002")
    segs = sorted(f for f in os.listdir(part) if f.endswith(".log"))
    assert len(segs) >= 2, segs
    victim = os.path.join(part, segs[0])
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    return "partition-002/" + segs[0]


def test_salvage_rebuilds_the_aggregates_so_resends_heal_the_gap_exactly_once(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=N, sensors=SENSORS)
    assert s.stop() == 0
    store = os.path.join(data_dir, "aggregates.sqlite")
    before = counts(store)
    assert sum(before.values()) == N
    damaged = corrupt_a_closed_segment(data_dir)

    r = tool("verify", "--data-dir", data_dir, "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REPAIRED" in r.stdout and damaged in r.stdout and "aggregates" in r.stdout, r.stdout
    assert "FAILED" not in r.stdout and r.stdout.strip().splitlines()[-1].startswith("ok"), r.stdout
    # The repaired log is clean, index files included: nothing left for the next verify to warn of.
    after = json.loads(tool("verify", "--data-dir", data_dir, "--json").stdout)
    assert after["ok"] and after["problems"] == [], after["problems"]

    # The aggregates are the fold of the repaired log, and they lost what the log lost.
    check = os.path.join(tempfile.mkdtemp(), "check.sqlite")
    assert tool("rebuild-aggregates", "--data-dir", data_dir, "--output", check).returncode == 0
    assert rows(store) == rows(check)
    repaired = counts(store)
    lost = {k: before[k] - repaired.get(k, 0) for k in before if before[k] != repaired.get(k, 0)}
    assert lost and all(n > 0 for n in lost.values()), lost

    s = Server(data_dir).start()
    try:
        # One sensor's producer resends its readings: exactly the lost ones are taken again.
        (sensor, hour), missing = next(iter(lost.items()))
        taken = 0
        for i in range(int(sensor[3:]), N, SENSORS):
            sid, ts, value = reading(i)
            status, body, _ = s.post({"sensor_id": sid, "type": "temperature", "value": value, "location": "l", "timestamp": iso(ts)})
            assert status in (201, 409), body
            taken += status == 201
        assert taken == missing
        wait_for(lambda: lag_and_end(s)[0] == 0, "the aggregator to catch up")
        aggs = json.loads(s.get(f"/sensors/{sensor}/aggregates")[1])["aggregates"]
        assert [a["count"] for a in aggs] == [before[(sensor, hour)]]    # as before the damage, not more

        # Every producer resends everything over the line protocol: the gap closes exactly.
        _, end = lag_and_end(s)
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(b"".join(line(i) for i in range(N)))
        c.close()
        rest = sum(lost.values()) - missing
        s.wait_metric("sensorlog_readings_rejected_total", N - rest, transport="tcp", reason="duplicate")
        wait_for(lambda: lag_and_end(s) == (0, end + rest), "the resent readings to be folded")
    finally:
        assert s.stop() == 0
    assert counts(store) == before
    check = os.path.join(tempfile.mkdtemp(), "check.sqlite")
    assert tool("rebuild-aggregates", "--data-dir", data_dir, "--output", check).returncode == 0
    assert rows(store) == rows(check)


def test_sensorlogd_finishes_a_repair_interrupted_before_its_aggregate_rebuild(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=20_000, sensors=200)
    s.stop()
    store = os.path.join(data_dir, "aggregates.sqlite")
    expected = counts(store)
    # What an interrupted repair leaves: the marker down, the store still holding folds of
    # records that are gone (here: rows the log does not back, and rows missing).
    with sqlite3.connect(store) as c:
        c.execute("UPDATE aggregates SET count = count + 1 WHERE sensor_id = 'op-7'")
        c.execute("DELETE FROM aggregates WHERE sensor_id = 'op-8'")
    open(os.path.join(data_dir, "aggregates.rebuild-pending"), "w").close()
    s = Server(data_dir).start()
    try:
        assert "interrupted verify --repair" in open(s.log_path).read()
    finally:
        s.stop()
    assert counts(store) == expected
    assert not os.path.exists(os.path.join(data_dir, "aggregates.rebuild-pending"))


def test_a_torn_tail_alone_is_cut_without_rebuilding_the_aggregates(data_dir):
    s = Server(data_dir).start()
    fill(s, n=5_000, sensors=100)
    s.stop()
    segment = os.path.join(data_dir, "log", "partition-000", "00000000000000000000.log")
    with open(segment, "ab") as f:
        f.write(b"\x07" * 40)          # what a crash mid-write leaves: never decoded, never folded
    r = tool("verify", "--data-dir", data_dir, "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torn tail truncated" in r.stdout and "rebuilt from the repaired log" not in r.stdout, r.stdout


def test_a_running_server_salvages_a_damaged_closed_segment_and_resends_heal_it(data_dir):
    # The same damage, repaired without stopping sensorlogd: `verify --repair` runs inside it.
    s = Server(data_dir, extra=["--segment-bytes", "65536", "--compaction", "off"]).start()
    store = os.path.join(data_dir, "aggregates.sqlite")
    try:
        fill(s, n=N, sensors=SENSORS)
        before = counts(store)
        damaged = corrupt_a_closed_segment(data_dir)
        r = tool("verify", "--data-dir", data_dir)
        assert r.returncode == 1 and damaged in r.stdout and "runs inside it" in r.stderr, r.stdout[-500:] + r.stderr
        r = tool("verify", "--data-dir", data_dir, "--repair")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "REPAIRED" in r.stdout and damaged in r.stdout and "aggregates" in r.stdout, r.stdout
        assert os.listdir(os.path.join(data_dir, "quarantine", "partition-002"))
        after = json.loads(tool("verify", "--data-dir", data_dir, "--json").stdout)
        assert after["ok"] and after["problems"] == [], after["problems"]
        wait_for(lambda: lag_and_end(s)[0] == 0, "the aggregator to catch up")
        lost = sum(before.values()) - sum(counts(store).values())
        assert lost > 0
        # Producers resend everything: exactly the lost readings are taken again.
        _, end = lag_and_end(s)
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(b"".join(line(i) for i in range(N)))
        c.close()
        s.wait_metric("sensorlog_readings_rejected_total", N - lost, transport="tcp", reason="duplicate")
        wait_for(lambda: lag_and_end(s) == (0, end + lost), "the resent readings to be folded")
        assert counts(store) == before
    finally:
        assert s.stop() == 0
    check = os.path.join(tempfile.mkdtemp(), "check.sqlite")
    assert tool("rebuild-aggregates", "--data-dir", data_dir, "--output", check).returncode == 0
    assert rows(store) == rows(check)
