"""The line protocol over HTTP with the real clients producers run: influxdb-client (v2), the v1
`influxdb` client, QuestDB's Sender over http::, and a replay of Telegraf's two outputs. Every
reading stored exactly once; a resend changes nothing; the refusals answer as InfluxDB does."""
import base64, gzip, json, socket, time
from collections import Counter

import pytest
from conftest import Server, dump_all

T0 = 1763978400  # 2025-11-24T10:00:00Z


def keys(data_dir):
    return Counter((r["sensor_id"], r["timestamp_ns"]) for r in dump_all(data_dir))


def test_influxdb_client_v2_every_precision_with_and_without_gzip(data_dir):
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS
    s = Server(data_dir).start()
    try:
        expected = Counter()
        for gz in (False, True):
            with InfluxDBClient(url=f"http://127.0.0.1:{s.http}", token="unused", org="acme", enable_gzip=gz) as client:
                assert client.ping()
                api = client.write_api(write_options=SYNCHRONOUS)
                for unit, scale in ((WritePrecision.NS, 1), (WritePrecision.US, 1000), (WritePrecision.MS, 10**6), (WritePrecision.S, 10**9)):
                    points = [Point("temperature").tag("sensor_id", f"v2-{gz}-{unit}-{i % 7}").tag("location", "hall a,b")
                              .field("value", 20.0 + i / 8).time((T0 + i) * 10**9 // scale, unit) for i in range(500)]
                    api.write(bucket="readings", record=points, write_precision=unit)
                    api.write(bucket="readings", record=points, write_precision=unit)  # a resend: duplicates
                    expected.update((f"v2-{gz}-{unit}-{i % 7}", (T0 + i) * 10**9) for i in range(500))
        got = keys(data_dir)
        assert got == expected
        hall = {r["location"] for r in dump_all(data_dir)}
        assert hall == {"hall a,b"}
        assert s.metric("sensorlog_readings_ingested_total", transport="http_lp") == 4000
        assert s.metric("sensorlog_readings_rejected_total", transport="http_lp", reason="duplicate") == 4000
    finally:
        s.stop()


def test_influxdb_v1_client_write_points_and_ping(data_dir):
    from influxdb import InfluxDBClient
    s = Server(data_dir, env={"SENSORLOG_API_KEYS": "secret-1"}).start()
    try:
        client = InfluxDBClient("127.0.0.1", s.http, "telegraf", "secret-1", "sensors")
        assert client.ping()
        client.create_database("sensors")
        points = [{"measurement": "humidity", "tags": {"sensor_id": f"v1-{i % 5}", "location": "roof"},
                   "time": (T0 + i) * 1000, "fields": {"value": 40 + i % 10}} for i in range(300)]
        assert client.write_points(points, time_precision="ms")
        assert client.write_points(points, time_precision="ms")
        assert keys(data_dir) == Counter((f"v1-{i % 5}", (T0 + i) * 10**9) for i in range(300))
        bad = InfluxDBClient("127.0.0.1", s.http, "telegraf", "wrong", "sensors")
        from influxdb.exceptions import InfluxDBClientError
        with pytest.raises(InfluxDBClientError) as refused:
            bad.write_points(points[:1], time_precision="ms")
        assert refused.value.code == 401
    finally:
        s.stop()


def test_questdb_sender_over_http(data_dir):
    from questdb import Sender, TimestampNanos
    s = Server(data_dir).start()
    try:
        conf = f"http::addr=127.0.0.1:{s.http};"
        for _ in range(2):  # the second pass is a resend
            with Sender.from_conf(conf) as sender:
                for i in range(1000):
                    sender.row("temperature", symbols={"sensor_id": f"qdb\\{i % 9}", "location": "dock 4"},
                               columns={"value": 1.5 + i}, at=TimestampNanos((T0 + i) * 10**9))
                sender.flush()
        readings = dump_all(data_dir)
        # QuestDB's client writes one backslash as two and means one.
        assert Counter((r["sensor_id"], r["timestamp_ns"]) for r in readings) == Counter(
            (f"qdb\\{i % 9}", (T0 + i) * 10**9) for i in range(1000))
        assert {r["location"] for r in readings} == {"dock 4"}
    finally:
        s.stop()


def http(port, method, path, body=b"", headers=()):
    """One raw request, as a replayed client sends it; returns (status, headers, body)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "Connection: close\r\n\r\n"
    c.sendall(head.encode() + body)
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    c.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return int(lines[0].split()[1]), hdrs, payload


def telegraf_lines(prefix, n, start=0):
    # Telegraf's own shape: the measurement is its input's name and each field a type.
    return "".join(f"sensors,host=edge-1,location=yard,sensor_id={prefix}-{i % 11} temperature={20 + i % 5}.5 {(T0 + start + i) * 10**9}\n"
                   for i in range(n)).encode()


def test_telegraf_outputs_replayed(data_dir):
    s = Server(data_dir, env={"SENSORLOG_API_KEYS": "tg-token"}).start()
    try:
        ua = ("User-Agent", "Telegraf/1.30.0 Go/1.22.1")
        basic = "Basic " + base64.b64encode(b"telegraf:tg-token").decode()
        # outputs.influxdb: CREATE DATABASE first, then writes with no precision (ns), plain text.
        st, h, body = http(s.http, "POST", "/query", b'q=CREATE+DATABASE+%22telegraf%22',
                           [ua, ("Authorization", basic), ("Content-Type", "application/x-www-form-urlencoded")])
        assert st == 200 and json.loads(body)["results"][0]["statement_id"] == 0
        v1 = telegraf_lines("tg1", 1000)
        for _ in range(2):
            st, h, _ = http(s.http, "POST", "/write?db=telegraf", v1, [ua, ("Authorization", basic), ("Content-Type", "text/plain; charset=utf-8")])
            assert st == 204 and h["x-influxdb-version"]
        # outputs.influxdb_v2: gzip by default, Token auth, org and bucket.
        v2 = gzip.compress(telegraf_lines("tg2", 1000))
        for _ in range(2):
            st, h, _ = http(s.http, "POST", "/api/v2/write?bucket=telegraf%2Fautogen&org=acme", v2,
                            [ua, ("Authorization", "Token tg-token"), ("Content-Encoding", "gzip"), ("Content-Type", "text/plain; charset=utf-8")])
            assert st == 204
        got = keys(data_dir)
        assert sum(got.values()) == 2000 and set(got.values()) == {1}
        # Without the token: 401 in each output's error body.
        st, h, body = http(s.http, "POST", "/write?db=telegraf", v1, [ua])
        assert st == 401 and "error" in json.loads(body)
        st, h, body = http(s.http, "POST", "/api/v2/write?bucket=b&org=o", v2, [ua, ("Content-Encoding", "gzip")])
        assert st == 401 and json.loads(body)["code"] == "unauthorized"
    finally:
        s.stop()


def test_refusals_answer_as_influxdb_does(data_dir):
    s = Server(data_dir, extra=["--rate-limit", "1500", "--max-write-body-bytes", "200000"]).start()
    try:
        # A partial write: the good lines stored, 400 naming the first bad line.
        body = telegraf_lines("pw", 3) + b"temperature,sensor_id=pw-x,location=l value=oops\n" + telegraf_lines("pw", 2, start=10)
        st, h, payload = http(s.http, "POST", "/api/v2/write?org=o&bucket=b", body)
        err = json.loads(payload)
        assert st == 400 and err["code"] == "invalid" and err["line"] == 4 and "invalid_value" in err["message"], payload
        st, h, payload = http(s.http, "POST", "/write?db=d", body)
        assert st == 400 and json.loads(payload)["error"].startswith("partial write: unable to parse line 4")
        assert sum(keys(data_dir).values()) == 5
        # 413 above the limit, plain or inflated; a gzip bomb is cut off at the limit.
        st, _, payload = http(s.http, "POST", "/api/v2/write", telegraf_lines("big", 3000))
        assert st == 413 and json.loads(payload)["code"] == "request too large"
        bomb = gzip.compress(b"#" * 50_000_000)
        assert len(bomb) < 200_000
        t = time.time()
        st, _, payload = http(s.http, "POST", "/api/v2/write", bomb, [("Content-Encoding", "gzip")])
        assert st == 413 and time.time() - t < 5
        # 429 with Retry-After: over 1500 readings a second from this address.
        statuses = [http(s.http, "POST", "/api/v2/write", telegraf_lines(f"rl{k}", 1000))[0] for k in range(4)]
        assert 429 in statuses
        st, h, payload = http(s.http, "POST", "/api/v2/write", telegraf_lines("rl-last", 1000))
        assert st == 429 and int(h["retry-after"]) >= 1 and json.loads(payload)["code"] == "too many requests"
        assert s.metric("sensorlog_readings_rejected_total", transport="http_lp", reason="invalid_value") == 2
        assert s.metric("sensorlog_readings_rejected_total", transport="http_lp", reason="body_too_large") == 2
    finally:
        s.stop()
