"""End to end, as producers use it: the questdb client over TCP, plain HTTP, signals."""
import json, os, random, signal, socket, subprocess, time
from questdb import Sender, TimestampNanos
from conftest import Server, stats

BASE = 1_763_978_400_000_000_000


def rows(n, sensors=1000, seed=1, base=BASE):
    rnd = random.Random(seed)
    types = ["temperature", "humidity", "pressure"]
    for i in range(n):
        s = i % sensors
        yield (types[s % 3], f"sensor-{s:05d}", f"site-{s % 50:02d}", round(40 + rnd.uniform(-5, 5), 3),
               base + (i // sensors) * 1_000_000_000 + s * 1000)


def send_questdb(port, data):
    with Sender.from_conf(f"tcp::addr=127.0.0.1:{port};") as sender:
        for i, (t, sid, loc, v, ts) in enumerate(data):
            sender.row(t, symbols={"sensor_id": sid, "location": loc}, columns={"value": v}, at=TimestampNanos(ts))
            if i % 10_000 == 9_999:
                sender.flush()
        sender.flush()


def test_questdb_client_100k_rows_stored_exactly_once_and_resend_adds_nothing(server, data_dir):
    data = list(rows(100_000))
    send_questdb(server.tcp, data)
    server.wait_metric("sensorlog_readings_ingested_total", 100_000)
    send_questdb(server.tcp, data[:60_000])  # a producer resending after a crash
    server.wait_metric("sensorlog_readings_rejected_total", 60_000, reason="duplicate")
    assert server.metric("sensorlog_readings_ingested_total") == 100_000
    assert server.stop() == 0
    assert stats(data_dir)["readings"] == 100_000
    # After a restart the dedupe state comes back from the log.
    again = Server(data_dir).start()
    try:
        send_questdb(again.tcp, data[50_000:])
        again.wait_metric("sensorlog_readings_rejected_total", 50_000, reason="duplicate")
        assert again.metric("sensorlog_readings_ingested_total") == 0
        # And the REST API knows them too.
        t, sid, loc, v, ts = data[12345]
        doc = {"sensor_id": sid, "type": t, "value": v, "location": loc,
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 10**9)) + f".{ts % 10**9:09d}Z"}
        assert again.post(doc)[0] == 409
    finally:
        again.stop()
    assert stats(data_dir)["readings"] == 100_000


def test_bad_lines_never_stop_the_listener_nor_lose_good_ones(server, data_dir):
    good = [f"temperature,sensor_id=g{i},location=l value={i}.25 {BASE + i}\n".encode() for i in range(1000)]
    bad = [b"no_fields_here\n", b"temperature,sensor_id=x value=abc 1\n", b"\xff\xfe\n", b"x" * 100_000 + b"\n",
           b"bogus,sensor_id=a,location=l value=1 1\n", b"humidity,sensor_id=h,location=l value=101 1\n",
           b"temperature,sensor_id=a,location=l value=NaN 1\n", b"temperature,sensor_id=a,location=l value=1 nope\n"]
    stream = []
    for i, g in enumerate(good):
        stream.append(g)
        if i % 125 == 0:
            stream.append(bad[i // 125])
    c = socket.create_connection(("127.0.0.1", server.tcp))
    c.sendall(b"".join(stream) + b"temperature,sensor_id=cut,location=l value=1")
    c.close()
    server.wait_metric("sensorlog_readings_ingested_total", 1000)
    server.wait_metric("sensorlog_readings_rejected_total", 9)
    for reason in ["syntax", "missing_location", "invalid_utf8", "line_too_long", "unknown_type", "out_of_range",
                   "non_finite_value", "invalid_timestamp", "partial_line"]:
        assert server.metric("sensorlog_readings_rejected_total", reason=reason) >= 1, reason
    assert server.get("/health")[0] == 200
    # Each refused line is logged by its number and its start, the cut-off last one too.
    logged = {}
    for line in open(server.log_path, errors="replace"):
        if '"line rejected"' in line:
            entry = json.loads(line)
            logged[entry["reason"]] = entry
    assert logged["partial_line"]["line_number"] == len(stream) + 1
    assert logged["partial_line"]["line_prefix"] == "temperature,sensor_id=cut,location=l value=1"
    assert logged["line_too_long"]["line_number"] == stream.index(bad[3]) + 1
    assert logged["line_too_long"]["line_prefix"] == "x" * 80


def test_sigterm_appends_and_syncs_everything_read(data_dir):
    s = Server(data_dir, extra=["--fsync", "interval", "--fsync-interval-ms", "60000"]).start()
    c = socket.create_connection(("127.0.0.1", s.tcp))
    c.sendall(b"".join(f"pressure,sensor_id=p{i % 300},location=l value=1013.5 {BASE + i}\n".encode() for i in range(50_000)))
    s.wait_metric("sensorlog_readings_ingested_total", 50_000)
    # The connection is still open and nothing was fsynced by the timer (60 s): SIGTERM must do both.
    assert s.stop(signal.SIGTERM) == 0
    c.close()
    assert stats(data_dir)["readings"] == 50_000
    log = open(s.log_path).read()
    assert "log closed cleanly" in log


def test_kill_nine_then_resend_leaves_no_duplicate(data_dir):
    s = Server(data_dir).start()
    data = list(rows(30_000, sensors=300, seed=3))
    send_questdb(s.tcp, data)
    time.sleep(random.Random(4).uniform(0, 0.2))
    s.stop(signal.SIGKILL)
    s2 = Server(data_dir).start()
    try:
        send_questdb(s2.tcp, data)  # resend everything unconfirmed
        deadline = time.time() + 60
        while time.time() < deadline:
            if s2.metric("sensorlog_readings_ingested_total") + s2.metric("sensorlog_readings_rejected_total", reason="duplicate") >= 30_000:
                break
            time.sleep(0.05)
    finally:
        assert s2.stop() == 0
    assert stats(data_dir)["readings"] == 30_000


def test_http_codes_on_a_real_server(data_dir):
    s = Server(data_dir, extra=["--rate-limit", "5", "--max-body-bytes", "4096"], env={"SENSORLOG_API_KEYS": "key-a,key-b"}).start()
    try:
        doc = {"sensor_id": "h1", "type": "temperature", "value": 20.5, "location": "lab", "timestamp": "2025-11-24T10:00:00Z"}
        assert s.post(doc)[0] == 401
        assert s.post(doc, {"X-API-Key": "nope"})[0] == 401
        status, body, headers = s.post(doc, {"X-API-Key": "key-a", "X-Request-Id": "req-77"})
        assert status == 201 and headers.get("X-Request-Id") == "req-77"
        assert s.post(doc, {"X-API-Key": "key-a"})[0] == 409
        assert s.request("POST", "/sensor/data", b"x" * 10, {"Content-Type": "text/plain", "X-API-Key": "key-a"})[0] == 415
        statuses = [s.post(dict(doc, timestamp=f"2025-11-24T10:00:{i:02d}Z"), {"X-API-Key": "key-b"})[0] for i in range(1, 12)]
        assert 429 in statuses
        # 413 from Content-Length, before the body is read.
        c = socket.create_connection(("127.0.0.1", s.http), timeout=10)
        c.sendall(b"POST /sensor/data HTTP/1.1\r\nHost: x\r\nX-API-Key: key-a\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 33554432\r\n\r\n[" + b" " * 1000)
        assert c.recv(100).split(b"\r\n")[0].split()[1] == b"413"
        c.close()
        assert s.get("/health")[0] == 200 and s.get("/metrics")[0] == 200
        assert s.metric("sensorlog_http_requests_total", route="/sensor/data", status="401") >= 2
        # An array refused whole counts each of its readings under the reason.
        batch = [dict(doc, sensor_id=f"arr{i}", location="" if i == 1 else "lab") for i in range(3)]
        status, body, _ = s.request("POST", "/sensor/data", json.dumps(batch).encode(),
                                    {"Content-Type": "application/json", "X-API-Key": "key-a"})
        assert status == 400 and json.loads(body)["error"]["index"] == 1
        assert s.metric("sensorlog_readings_rejected_total", transport="http", reason="invalid_location") == 3
    finally:
        s.stop()


def test_debug_log_has_an_access_line_per_request_with_its_id(data_dir):
    s = Server(data_dir, extra=["--log-level", "debug"]).start()
    try:
        doc = {"sensor_id": "d1", "type": "temperature", "value": 1.5, "location": "lab", "timestamp": "2025-11-24T10:00:00Z"}
        assert s.post(doc, {"X-Request-Id": "trace-me-1"})[0] == 201
        assert s.post(doc, {"X-Request-Id": "trace-me-2"})[0] == 409
    finally:
        s.stop()
    lines = [json.loads(l) for l in open(s.log_path, errors="replace") if '"request"' in l]
    by_id = {l.get("request_id"): l for l in lines if l.get("message") == "request"}
    assert by_id["trace-me-1"]["status"] == 201 and by_id["trace-me-1"]["path"] == "/sensor/data"
    assert by_id["trace-me-2"]["status"] == 409 and by_id["trace-me-2"]["method"] == "POST"


def test_api_keys_set_but_empty_refuse_to_start_rather_than_run_open(data_dir):
    from conftest import BIN
    for keys in ["", ",", " , "]:
        r = subprocess.run([os.path.join(BIN, "sensorlogd"), "--data-dir", data_dir, "--tcp-port", "0", "--http-port", "0"],
                           env=dict(os.environ, SENSORLOG_API_KEYS=keys), capture_output=True, text=True, timeout=60)
        assert r.returncode == 64, (keys, r.returncode, r.stdout[-300:], r.stderr[-300:])
        assert "SENSORLOG_API_KEYS is set but holds no key" in r.stderr + r.stdout
