"""Consumers of one's own through the /groups doors: a long poll that answers as soon as records
arrive, at-least-once by commit, the exactly-once pattern of docs/consumers.md (tests/e2e/consumer.py)
across a SIGKILL, and a hostile consumer's requests refused with nothing moved."""
import json, os, signal, sqlite3, subprocess, sys, threading, time, urllib.error, urllib.request

from conftest import Server

CONSUMER = os.path.join(os.path.dirname(__file__), "consumer.py")
T0 = 1763978400


def call(s, method, route, body=None):
    data = json.dumps(body).encode() if body is not None else None
    status, payload, _ = s.request(method, route, data, {"Content-Type": "application/json"})
    return status, json.loads(payload) if payload else None


def write(s, sensor_prefix, n, start=0):
    body = "".join(f"temperature,sensor_id={sensor_prefix}-{i % 37},location=l value={i % 10} {T0 + start + i}\n" for i in range(n)).encode()
    status, _, _ = s.request("POST", "/api/v2/write?precision=s", body)
    assert status == 204


def test_a_long_poll_answers_as_soon_as_records_arrive(server):
    assert call(server, "POST", "/groups", {"group": "poller", "start": "latest"})[0] == 201
    partition = call(server, "GET", "/groups")[1]["groups"][0]["partitions"][0]["partition"]
    result = {}

    def poll():
        t = time.time()
        result["page"] = call(server, "GET", "/groups/poller/records?partition=0&wait_ms=20000")[1]
        result["seconds"] = time.time() - t

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    write(server, "lp", 2000)  # 37 sensors: partition 0 gets some
    t.join(30)
    assert result["page"]["records"] and result["seconds"] < 10
    assert all(r["partition"] == partition for r in result["page"]["records"])


def test_the_exactly_once_pattern_survives_sigkill(data_dir):
    s = Server(data_dir).start()
    try:
        n = 60_000
        for k in range(6):
            write(s, "eo", n // 6, start=k * (n // 6))
        out = data_dir + "-consumer.sqlite"
        base = f"http://127.0.0.1:{s.http}"
        p = subprocess.Popen([sys.executable, CONSUMER, base, "reports", out], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("consumed")  # mid-stream: some pages done, most not
        p.send_signal(signal.SIGKILL)
        p.wait()
        done = subprocess.run([sys.executable, CONSUMER, base, "reports", out, "--stop-after-idle", "2"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        db = sqlite3.connect(out)
        readings, total = db.execute("SELECT SUM(readings), SUM(total) FROM counts").fetchone()
        assert readings == n and total == sum(i % 10 for i in range(n // 6)) * 6
        # The group's committed offsets followed: lag 0.
        group = [g for g in call(s, "GET", "/groups")[1]["groups"] if g["group"] == "reports"][0]
        assert sum(p["lag"] for p in group["partitions"]) == 0
    finally:
        s.stop()


def test_at_least_once_by_commit(server):
    write(server, "al", 3000)
    assert call(server, "POST", "/groups", {"group": "alo", "start": "earliest"})[0] == 201
    seen = []
    for p in range(8):
        page = call(server, "GET", f"/groups/alo/records?partition={p}&max=100")[1]
        seen += [(r["sensor_id"], r["timestamp"]) for r in page["records"]]
        # A consumer that dies before committing reads the same page again.
        again = call(server, "GET", f"/groups/alo/records?partition={p}&max=100")[1]
        assert again == page
        assert call(server, "POST", "/groups/alo/offsets", {"offsets": [{"partition": p, "committed": page["next_offset"]}]})[0] == 200
        after = call(server, "GET", f"/groups/alo/records?partition={p}&max=100")[1]
        assert not set((r["sensor_id"], r["timestamp"]) for r in after["records"]) & set(seen)


def test_a_hostile_consumer_moves_nothing(server):
    write(server, "h", 100)
    assert call(server, "POST", "/groups", {"group": "h", "start": "earliest"})[0] == 201
    def groups():
        # Everything but the aggregator's offsets, which move as it folds.
        return {g["group"]: [p["committed"] for p in g["partitions"]] for g in call(server, "GET", "/groups")[1]["groups"]
                if g["group"] != "aggregator"}

    before = groups()
    for route in ["/groups/h/records?partition=0&max=1000000", "/groups/h/records?partition=0&from=-5",
                  "/groups/h/records?partition=99", "/groups/h/records", "/groups/h/records?partition=0&wait_ms=99999999",
                  "/groups/h/records?partition=0&from=999999999"]:
        status, body = call(server, "GET", route)
        assert status == 400 and body["error"]["code"] == "invalid_parameter", (route, body)
    for offsets in [[{"partition": 0, "committed": 10**12}], [{"partition": -1, "committed": 0}], [{"partition": 0, "committed": -1}],
                    [{"partition": 0}], "x"]:
        status, body = call(server, "POST", "/groups/h/offsets", {"offsets": offsets})
        assert status == 400, (offsets, body)
    assert call(server, "POST", "/groups/aggregator/offsets", {"offsets": []})[1]["error"]["code"] == "reserved_group"
    assert call(server, "DELETE", "/groups/aggregator")[0] == 400
    assert call(server, "POST", "/groups", {"group": "../etc", "start": "earliest"})[0] == 400
    assert call(server, "POST", "/groups", {"group": "h2", "start": "tomorrow"})[0] == 400
    assert call(server, "GET", "/groups/nobody/records?partition=0")[0] == 404
    assert groups() == before


def test_a_consumer_needs_the_read_role(data_dir):
    keys = data_dir + "-keys"
    with open(keys, "w") as f:
        f.write("reader-key read\nwriter-key ingest\n")
    s = Server(data_dir, extra=["--api-keys-file", keys]).start()
    try:
        for key, expected in (("writer-key", 403), ("reader-key", 201)):
            status, _, _ = s.request("POST", "/groups", json.dumps({"group": "keyed"}).encode(),
                                     {"Content-Type": "application/json", "X-API-Key": key})
            assert status == expected, key
        status, body, _ = s.request("GET", "/groups/keyed/records?partition=0", headers={"X-API-Key": "reader-key"})
        assert status == 200 and json.loads(body)["records"] == []
    finally:
        s.stop()
