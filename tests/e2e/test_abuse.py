"""Hostile clients on the HTTP door: idle connections at the cap, slow-loris heads and bodies,
floods of connections over the cap, oversized heads. The server keeps serving everyone else."""
import json, resource, socket, time

from conftest import Server

CAP = 40


def connect(server):
    s = socket.create_connection(("127.0.0.1", server.http), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_server(s, timeout):
    """True once the server has closed s (recv gives b'' or a reset) within timeout."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def health(server):
    return server.get("/health")[0]


def test_idle_connections_at_the_cap_give_way_to_new_clients(data_dir):
    server = Server(data_dir, extra=["--max-http-connections", str(CAP)]).start()
    try:
        idle = [connect(server) for _ in range(CAP * 3)]
        # Every newcomer took the slot of an idle connection; the oldest ones were closed.
        for _ in range(20):
            assert health(server) == 200
        assert server.metric("sensorlog_http_idle_connections_closed_total") >= CAP * 2
        assert server.metric("sensorlog_http_connections") <= CAP
        for s in idle:
            s.close()
    finally:
        server.stop()


def test_connections_over_a_cap_of_busy_ones_are_refused_quickly_and_counted(data_dir):
    server = Server(data_dir, extra=["--max-http-connections", str(CAP), "--http-request-timeout-seconds", "60"]).start()
    try:
        # Inside a request (a head promising a body that never comes): not idle, not evictable.
        busy = []
        for _ in range(CAP):
            s = connect(server)
            s.sendall(b"POST /sensor/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            busy.append(s)
        # The cap is full of busy connections once a newcomer is refused. (A probe admitted before
        # every head was read would take the slot of the oldest idle one; the settling pause
        # makes that unlikely, and the probe then fails loudly rather than passing wrongly.)
        time.sleep(0.5)
        probe = connect(server)
        assert closed_by_server(probe, 5), "a connection over a cap of busy ones was admitted"
        probe.close()
        attempts, start = 10_000, time.time()  # the figure
        for _ in range(attempts):
            s = connect(server)
            assert closed_by_server(s, 5), "a connection over the cap was not closed"
            s.close()
        elapsed = time.time() - start
        assert elapsed < 30, f"{attempts} refusals took {elapsed:.1f} s"
        for s in busy:
            s.close()
        deadline = time.time() + 10
        while True:
            try:
                if health(server) == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline
            time.sleep(0.05)
        assert server.metric("sensorlog_http_connections_refused_total") >= attempts
        print(f"{attempts} connections over the cap refused in {elapsed:.2f} s")
    finally:
        server.stop()


def test_slow_loris_heads_and_bodies_are_closed_in_bounded_time(data_dir):
    server = Server(data_dir, extra=["--http-header-timeout-seconds", "1", "--http-request-timeout-seconds", "2"]).start()
    try:
        head = connect(server)
        body = connect(server)
        body.sendall(b"POST /sensor/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        start = time.time()
        # A byte of header or body every 200 ms: never idle, never done.
        header_closed = body_closed = None
        for i in range(40):
            try:
                if header_closed is None:
                    head.sendall(b"GET /health HTTP/1.1\r\nX-Slow: "[i:i + 1] or b"a")
            except OSError:
                header_closed = header_closed or time.time() - start
            try:
                if body_closed is None:
                    body.sendall(b"{")
            except OSError:
                body_closed = body_closed or time.time() - start
            for s, name in ((head, "head"), (body, "body")):
                s.settimeout(0.2)
                try:
                    if s.recv(4096) == b"":
                        if name == "head" and header_closed is None:
                            header_closed = time.time() - start
                        if name == "body" and body_closed is None:
                            body_closed = time.time() - start
                except socket.timeout:
                    pass
                except OSError:
                    if name == "head" and header_closed is None:
                        header_closed = time.time() - start
                    if name == "body" and body_closed is None:
                        body_closed = time.time() - start
            if header_closed is not None and body_closed is not None:
                break
        assert header_closed is not None and 0.8 <= header_closed <= 4, header_closed
        assert body_closed is not None and 1.8 <= body_closed <= 5, body_closed
        assert server.metric("sensorlog_http_slow_requests_closed_total", phase="headers") == 1
        assert server.metric("sensorlog_http_slow_requests_closed_total", phase="body") == 1
        assert health(server) == 200
    finally:
        server.stop()


def test_oversized_heads_are_refused_with_a_status(data_dir):
    server = Server(data_dir).start()
    try:
        for request in (b"GET /health?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n"):
            s = connect(server)
            s.sendall(request)
            reply = b""
            s.settimeout(5)
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except (socket.timeout, ConnectionResetError):
                pass
            s.close()
            status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
            assert status == 431, reply[:200]
            body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert body == {"error": {"code": "headers_too_large", "message": "the request line and headers exceed 16384 bytes"}}
        # Bytes that are not HTTP: 400 with a body that says so.
        s = connect(server)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        s.settimeout(5)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
        assert health(server) == 200
    finally:
        server.stop()


def test_a_low_open_file_limit_lowers_the_caps_and_idle_connections_cannot_starve_health(data_dir):
    """The case that made /health time out for everyone: a soft limit of 1 024 open files and
    1 251 idle HTTP connections. Start-up raises the soft limit to the hard one (here 1 024 too)
    and lowers the caps to fit it with a reserve, so accepting never fails for want of files."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = Server(data_dir, preexec=low_limit).start()
    try:
        log = open(server.log_path).read()
        assert "the open-file limit cannot hold the connection caps; lowering them" in log
        idle = [connect(server) for _ in range(1251)]
        for _ in range(10):
            assert health(server) == 200
        assert server.metric("sensorlog_http_connections") <= 1024 - 256
        for s in idle:
            s.close()
    finally:
        server.stop()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_million_new_sensor_ids_from_one_producer_are_bounded(data_dir):
    cap = 50_000
    server = Server(data_dir, extra=["--max-sensors", str(cap)]).start()
    try:
        doc = {"sensor_id": "known-1", "type": "temperature", "value": 1.0, "location": "lab", "timestamp": "2026-11-24T10:00:00Z"}
        assert server.post(doc)[0] == 201
        before = rss_kib(server.proc.pid)
        total = 1_000_000
        with socket.create_connection(("127.0.0.1", server.tcp)) as s:
            chunk = []
            for i in range(total):
                chunk.append(b"temperature,sensor_id=mint-%d,location=x value=1 1764000000000000000\n" % i)
                if len(chunk) == 10_000:
                    s.sendall(b"".join(chunk))
                    chunk = []
        server.wait_metric("sensorlog_readings_rejected_total", total - (cap - 1), timeout=300, reason="too_many_sensors")
        assert server.metric("sensorlog_readings_ingested_total", transport="tcp") == cap - 1
        grown = rss_kib(server.proc.pid) - before
        print(f"{cap - 1} new sensors and {total - cap + 1} refused: RSS grew {grown / 1024:.1f} MiB")
        # Known sensors still write; a new one over HTTP hears why it is refused.
        assert server.post(dict(doc, timestamp="2026-11-24T10:00:01Z"))[0] == 201
        status, body, _ = server.post(dict(doc, sensor_id="one-more"))
        assert status == 400 and json.loads(body)["error"]["code"] == "too_many_sensors"
        status, body, _ = server.post([dict(doc, timestamp="2026-11-24T10:00:02Z"), dict(doc, sensor_id="and-another")])
        reply = json.loads(body)
        assert status == 201 and reply["accepted"] == 1 and reply["too_many_sensors"] == [1], reply
        assert server.get("/health")[0] == 200
    finally:
        server.stop()


def post_raw(server, body):
    status, reply, _ = server.request("POST", "/sensor/data", body, {"Content-Type": "application/json"})
    return status, json.loads(reply) if reply else None


def test_hostile_json_gets_a_clear_error_and_the_server_serves_on(data_dir):
    server = Server(data_dir).start()
    try:
        good = '{"sensor_id":"j-1","type":"temperature","value":1.5,"location":"lab","timestamp":"2026-11-24T10:00:00Z"}'
        cases = {
            "deep nesting": b"[" * 100_000 + b"]" * 100_000,
            "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
            "huge number": good.replace("1.5", "1" + "0" * 400).encode(),
            "huge exponent": good.replace("1.5", "1e999999999").encode(),
            "duplicate keys": good.replace('"value":1.5', '"value":1.5,"value":2.5').encode(),
            "invalid utf-8": good.replace("lab", "l\udcffb").encode("utf-8", "surrogateescape"),
            "lone surrogate escape": good.replace("lab", "l\\ud800b").encode(),
            "nul in id": good.replace("j-1", "j\\u0000").encode(),
            "not an object": b'"just a string"',
            "truncated": good[:40].encode(),
        }
        for name, body in cases.items():
            status, reply = post_raw(server, body)
            assert status in (400, 413), (name, status, reply)
            assert reply and reply["error"]["code"] and reply["error"]["message"], (name, reply)
        assert server.post(json.loads(good))[0] == 201
        # A long number is still a number: taken, rounded to the nearest double.
        status, _ = post_raw(server, good.replace("1.5", "0." + "1" * 100_000).replace("10:00:00", "10:00:01").encode())
        assert status == 201
        assert server.metric("sensorlog_readings_ingested_total") == 2
    finally:
        server.stop()


def test_ids_and_locations_at_every_length_limit(data_dir):
    server = Server(data_dir).start()
    try:
        def doc(sensor_id, location, second):
            return {"sensor_id": sensor_id, "type": "temperature", "value": 1.0, "location": location,
                    "timestamp": f"2026-11-24T10:00:{second:02d}Z"}
        # 128 bytes is the bound (docs/protocol.md); a 2-byte character straddling it counts whole.
        assert server.post(doc("i" * 128, "l" * 128, 1))[0] == 201
        assert server.post(doc("é" * 64, "ü" * 64, 2))[0] == 201
        for sensor_id, location, field in (("i" * 129, "l", "sensor_id"), ("i", "l" * 129, "location"),
                                           ("é" * 64 + "x", "l", "sensor_id"), ("i", "", "location"), ("", "l", "sensor_id")):
            status, body, _ = server.post(doc(sensor_id, location, 3))
            error = json.loads(body)["error"]
            assert status == 400 and error["field"] == field, (sensor_id[:10], location[:10], status, error)
        line = b"temperature,sensor_id=" + b"t" * 129 + b",location=x value=1 1764000000000000000\n"
        with socket.create_connection(("127.0.0.1", server.tcp)) as s:
            s.sendall(line + b"temperature,sensor_id=" + b"t" * 128 + b",location=" + b"x" * 128 + b" value=1 1764000000000000000\n")
        server.wait_metric("sensorlog_readings_rejected_total", 1, reason="invalid_sensor_id")
        server.wait_metric("sensorlog_readings_ingested_total", 3)
    finally:
        server.stop()
