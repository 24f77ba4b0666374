"""Operating a server that is never stopped: sensor deletion, in-place rebuilds and retention
inside the running server while producers write over TCP and HTTP, sensorlogd killed with -9 at
random points of each, producers resending what they cannot confirm; then 0 acknowledged
readings lost, 0 counted twice, aggregates equal to a reference fold, a rebuild from offset zero
equal to the live rows. And the admin channel's doors: the socket's mode, key roles, refusals."""
import json, os, random, signal, socket, stat, subprocess, threading, time

import pytest

from conftest import Server, BIN, stats
from test_exactly_once import workload, line, reference, stored, check, wait_settled
from test_operator import tool

FLAGS = ["--segment-bytes", "65536", "--partitions", "2", "--maintenance-interval-seconds", "1",
         "--compaction-bytes-per-second", "2M"]
VICTIM = "sensor-0007"


def seed():
    value = int(os.environ.get("SENSORLOG_TEST_SEED", random.randrange(1 << 30)))
    print(f"SENSORLOG_TEST_SEED={value}")
    return value


def iso(ns):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def exchange(host, port, request):
    """One request on a fresh connection (`Connection: close`); the whole reply."""
    c = socket.create_connection((host, port), timeout=30)
    try:
        c.sendall(request)
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
        return reply
    finally:
        c.close()


def post_rows(port, rows):
    body = json.dumps([{"sensor_id": r[0], "type": r[1], "value": r[2], "location": r[3], "timestamp": iso(r[4])} for r in rows]).encode()
    reply = exchange("127.0.0.1", port, b"POST /sensor/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert reply.startswith(b"HTTP/1.1 201"), reply[:300]


def produce(s, rows):
    """Even sensors over TCP (small writes), odd sensors over HTTP (arrays of 200), at once. A
    killed server ends them early: what they could not confirm is resent after the restart."""
    tcp_rows = [r for r in rows if int(r[0][-4:]) % 2 == 0]
    http_rows = [r for r in rows if int(r[0][-4:]) % 2 == 1]

    def tcp():
        try:
            c = socket.create_connection(("127.0.0.1", s.tcp))
            for i in range(0, len(tcp_rows), 50):
                c.sendall(b"".join(line(r) for r in tcp_rows[i:i + 50]))
            c.close()
        except OSError:
            pass

    def http():
        for i in range(0, len(http_rows), 200):
            try:
                post_rows(s.http, http_rows[i:i + 200])
            except (OSError, AssertionError):
                return

    threads = [threading.Thread(target=tcp), threading.Thread(target=http)]
    for t in threads:
        t.start()
    return threads


def judged(s, count, timeout=60):
    """Every reading of the last sends has been answered: stored, a duplicate, deleted or too old."""
    deadline = time.time() + timeout
    while True:
        seen = s.metric("sensorlog_readings_ingested_total") + sum(
            s.metric("sensorlog_readings_rejected_total", reason=r) for r in ("duplicate", "deleted", "too_old"))
        if seen >= count:
            return
        assert time.time() < deadline, f"resent readings not judged: {seen} of {count}"
        time.sleep(0.02)


def resend(s, rows):
    for t in produce(s, rows):
        t.join()
    judged(s, len(rows))


def delete_until_done(data_dir):
    """After a kill in the middle of a deletion: delete again, until the sensor is deleted (exit
    0) or already was (exit 64: no readings of it)."""
    r = tool("delete-sensor", "--data-dir", data_dir, VICTIM)
    assert r.returncode == 0 or (r.returncode == 64 and "no readings" in r.stderr), (r.returncode, r.stderr)


def test_kill_nine_during_deletion_and_rebuilds_with_tcp_and_http_producers(data_dir):
    rnd = random.Random(seed())
    first = workload(15_000, sensors=100, seed=41)
    horizon = max(r[4] for r in first if r[0] == VICTIM)
    later = [r for r in workload(30_000, sensors=100, seed=42)[15_000:] if r[0] != VICTIM or r[4] > horizon]
    # The deletion's round sends nothing of the victim: its horizon is the newest reading of `first`.
    deletion_round = 5
    chunks = [first[i:i + 3_000] for i in range(0, 15_000, 3_000)]
    chunks += [[r for r in later[:3_000] if r[0] != VICTIM]] + [later[i:i + 3_000] for i in range(3_000, len(later), 3_000)]
    expected = [r for r in first if r[0] != VICTIM] + [r for c in chunks[deletion_round:] for r in c]

    s = Server(data_dir, extra=FLAGS).start()
    refused_deleted = 0
    for i, chunk in enumerate(chunks):
        threads = produce(s, chunk)
        operation = ["delete-sensor", VICTIM] if i == deletion_round else ["rebuild-aggregates"]
        job = subprocess.Popen([os.path.join(BIN, "sensorlog"), *operation, "--data-dir", data_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rnd.uniform(0.0, 0.6))
        s.stop(signal.SIGKILL)
        for t in threads:
            t.join()
        out, err = job.communicate(timeout=60)
        assert job.returncode in (0, 75), (operation, job.returncode, err)  # done, or the server went away
        s = Server(data_dir, extra=FLAGS).start()
        if i == deletion_round:
            delete_until_done(data_dir)
        resend(s, chunk + (chunks[i - 1] if i > 0 else []))
        refused_deleted += s.metric("sensorlog_readings_rejected_total", reason="deleted")
    assert refused_deleted > 0, "no resend of a deleted reading was refused"
    # A deleted reading sent again much later is still refused, over both doors.
    victim_first = [r for r in first if r[0] == VICTIM]
    assert json.loads(s.post({"sensor_id": VICTIM, "type": victim_first[0][1], "value": 1.0, "location": "x",
                              "timestamp": iso(victim_first[0][4])})[1])["error"]["code"] == "deleted"
    # Physically gone from every closed segment once a compaction ran (the server's, on request).
    r = tool("compact", "--data-dir", data_dir)
    assert r.returncode == 0, r.stderr
    distinct = {(r[0], r[4]) for r in expected}
    wait_settled(s, len(distinct))
    assert s.stop() == 0
    assert stats(data_dir)["readings"] == len(distinct)
    live = stored(os.path.join(data_dir, "aggregates.sqlite"))
    check(live, reference(expected))
    # In the files (the offline dump sees no mask): only the victim's readings after the deletion.
    kept = [int(l.rsplit(" ", 1)[1]) for l in tool("dump", "--data-dir", data_dir, "--sensor", VICTIM, "--format", "ilp").stdout.splitlines()]
    assert sorted(kept) == sorted({r[4] for r in expected if r[0] == VICTIM}) and min(kept) > horizon
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    out = data_dir + "-rebuilt.sqlite"
    r = tool("rebuild-aggregates", "--data-dir", data_dir, "--output", out)
    assert r.returncode == 0, r.stderr
    assert stored(out) == live


def test_kill_nine_during_retention_passes_with_tcp_and_http_producers(data_dir):
    rnd = random.Random(seed())
    # A reading a minute per sensor: five hours, so that hours after the last floor remain.
    base = 1_763_978_400_000_000_000
    rows = [(r[0], r[1], r[2], r[3], base + (r[4] - base) * 60) for r in workload(30_000, sensors=100, seed=43)]
    chunks = [rows[i:i + 3_000] for i in range(0, len(rows), 3_000)]
    flags = FLAGS + ["--retention-bytes", "40000"]
    s = Server(data_dir, extra=flags).start()
    removed = 0
    for i, chunk in enumerate(chunks):
        threads = produce(s, chunk)
        time.sleep(rnd.uniform(0.8, 2.0))               # a retention pass a second
        removed += s.metric("sensorlog_retention_segments_removed_total")
        s.stop(signal.SIGKILL)
        for t in threads:
            t.join()
        s = Server(data_dir, extra=flags).start()
        resend(s, chunk + (chunks[i - 1] if i > 0 else []))
    distinct = {(r[0], r[4]) for r in rows}
    wait_settled(s, 0)
    time.sleep(0.5)
    assert s.stop() == 0
    assert removed > 0, "no retention pass deleted anything before a kill"
    assert stats(data_dir)["readings"] < len(distinct)
    # Retention never deletes what the aggregator has not folded, and refuses readings at or
    # before its floors (too_old). Hours after every floor: each reading counted exactly once.
    # Hours at or before one: a reading lost with a kill and resent after the floor passed it
    # was refused, never stored, so those may count fewer, never more.
    floor = max(f for f in json.load(open(os.path.join(data_dir, "retention.json")))["floors"] if f is not None)
    live = stored(os.path.join(data_dir, "aggregates.sqlite"))
    ref = reference(rows)
    above = lambda key: key[1] > time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(floor // 10**9))
    check({k: v for k, v in live.items() if above(k)}, {k: v for k, v in ref.items() if above(k)})
    assert any(above(k) for k in ref), "the floor passed every hour: nothing left to compare exactly"
    for k, v in live.items():
        assert k in ref and v[0] <= ref[k][0], (k, v, ref.get(k))
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    out = data_dir + "-rebuilt.sqlite"
    r = tool("rebuild-aggregates", "--data-dir", data_dir, "--output", out)
    assert r.returncode == 0, r.stderr
    assert stored(out) == live


def admin(s, path, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    status, reply, head = s.request("POST" if body is not None else "GET", path, json.dumps(body).encode() if body is not None else None, headers)
    return status, json.loads(reply or b"null"), head


def wait_job(s, job_id, key=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = admin(s, f"/admin/jobs/{job_id}", key=key)[1]
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_admin_doors_roles_and_refusals(data_dir):
    keys = os.path.join(os.path.dirname(data_dir), os.path.basename(data_dir) + "-keys")
    with open(keys, "w") as f:
        f.write("# the operator\nadmin-key admin\nreader read\nwriter ingest\nold-style\n")
    s = Server(data_dir, extra=FLAGS + ["--api-keys-file", keys, "--compaction-bytes-per-second", "1M",
                                     "--compaction", "off"]).start()
    try:
        mode = os.stat(os.path.join(data_dir, "admin.sock")).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        doc = {"sensor_id": "k-1", "type": "temperature", "value": 1.0, "location": "l", "timestamp": "2025-11-24T10:00:00Z"}
        assert s.post(doc, headers={"X-API-Key": "reader"})[0] == 403
        assert s.post(doc, headers={"X-API-Key": "writer"})[0] == 201
        assert s.post(dict(doc, timestamp="2025-11-24T10:00:01Z"), headers={"X-API-Key": "old-style"})[0] == 201
        assert s.get("/aggregates", headers={"X-API-Key": "writer"})[0] == 403
        assert s.get("/aggregates", headers={"X-API-Key": "reader"})[0] == 200
        for key in (None, "reader", "writer", "old-style"):
            status, reply, _ = admin(s, "/admin/compact", {}, key=key)
            assert status == (401 if key is None else 403), (key, status, reply)
        assert admin(s, "/admin/jobs", key="reader")[0] == 403
        # Paths the router matches to the admin routes all the same are checked all the same.
        for path in ("//admin/compact", "/admin//compact", "/./admin/compact"):
            assert admin(s, path, {}, key="writer")[0] in (403, 404), path
        # Bad requests change nothing and say why.
        for body, field in (({"older_than": "30 days"}, "older_than"), ({"max_bytes": "lots"}, "max_bytes"), ({}, "older_than"),
                            ({"older_than": "1d", "forse": True}, "forse")):
            status, reply, _ = admin(s, "/admin/retention", body, key="admin-key")
            assert status == 400 and reply["error"]["field"] == field, (body, reply)
        status, reply, _ = admin(s, "/admin/delete-sensor", {"sensors": ["k-1", "nobody"]}, key="admin-key")
        assert status == 404 and "nobody" in reply["error"]["message"], reply
        status, reply, _ = admin(s, "/admin/reset-offsets", {"group": "aggregator", "to": "earliest"}, key="admin-key")
        assert status == 400 and "rebuild-aggregates" in reply["error"]["message"]
        status, reply, _ = admin(s, "/admin/reset-offsets", {"group": "ghost", "to": "latest", "execute": True}, key="admin-key")
        assert status == 404 and reply["error"]["code"] == "unknown_group"
        # A second job of a kind while one runs: 409 naming it (1 MiB/s keeps the first busy
        # for seconds over these megabytes).
        lines = b"".join(f"temperature,sensor_id=c-{i % 500},location=l value={i * 7919 % 100003 / 7:.3f} {1_763_978_400_000_000_000 + i * 10**6}\n".encode()
                         for i in range(600_000))
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(lines)
        c.close()
        s.wait_metric("sensorlog_readings_ingested_total", 600_002)
        status, first, head = admin(s, "/admin/compact", {"target_segment_bytes": "1M"}, key="admin-key")
        assert status == 202 and head.get("Location") == f"/admin/jobs/{first['id']}", (status, first, head)
        status, reply, _ = admin(s, "/admin/compact", {}, key="admin-key")
        assert status == 409 and f"job {first['id']}" in reply["error"]["message"], reply
        deadline = time.time() + 30
        while admin(s, f"/admin/jobs/{first['id']}", key="admin-key")[1]["progress"]["done"] == 0:
            assert time.time() < deadline, "the job shows no progress"
            time.sleep(0.05)
        listed = admin(s, "/admin/jobs", key="admin-key")[1]["jobs"]
        assert listed[0]["id"] == first["id"] and listed[0]["state"] == "running" and listed[0]["progress"]["total"] > 0
    finally:
        # Shutdown stops the running job between batches and waits for it.
        assert s.stop() == 0
    assert tool("verify", "--data-dir", data_dir).returncode == 0


def non_loopback_address():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_without_keys_admin_answers_on_loopback_only(data_dir):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address beyond loopback to call from")
    s = Server(data_dir, extra=["--bind", "0.0.0.0"]).start()
    try:
        assert admin(s, "/admin/jobs")[0] == 200                     # loopback
        reply = exchange(address, s.http, b"GET /admin/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403"), reply[:200]
        reply = exchange(address, s.http, b"POST //admin/compact HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert reply.startswith(b"HTTP/1.1 403"), reply[:200]
        reply = exchange(address, s.http, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    finally:
        s.stop()
