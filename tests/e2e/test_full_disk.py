"""A real full disk: sensorlogd on a small ext4 file system the test loop-mounts (as root) and fills
with a file while producers write over every door: TCP line protocol (one persistent socket),
HTTP JSON (`POST /sensor/data`), HTTP line protocol (`/api/v2/write`) and MQTT (QoS 1 through a
real mosquitto). While it is full: 503 with `Retry-After` on both HTTP doors and on `/health`, the
TCP connection paused (kept open, its producer's sends block), MQTT batches refused and
redelivered, the metrics docs/operations.md names. Once the file is deleted, with the same process:
every door flows again, `/health` is 200, the aggregator catches up; the log holds every reading
sent exactly once (every acknowledged one, and every other one too, since the producers retry and
the server keeps what it read), with its value, and the aggregates equal a fold of the log.

Twice: on 4 KiB blocks (any ext4 over 512 MB) and on 1 KiB blocks (what mkfs.ext4 gives a small
volume). On the latter SQLite's shared-memory file (aggregates.sqlite-shm, mmap'd) can get pages
with unallocated blocks, and a write to one on a full disk is a SIGBUS, not an error code.

Without root or a mountable loop device the test skips: the injected-fault tests (ENOSPC from a
fault-injecting file layer: Tests/LogStoreTests, Tests/IngestTests, Tests/HTTPAPITests) still run.
The seed (values, batch sizes) comes from SENSORLOG_TEST_SEED when set and is printed."""
import datetime, errno, json, os, random, select, shutil, socket, sqlite3, subprocess, threading, time

import pytest
from conftest import Server, dump_all, stats
from test_mqtt import Broker, mqtt_args, publisher

T0 = 1763978400 * 10**9
STEP = 100_000_000      # 100 ms between a producer's readings: its sensors span several hours
IMAGE_MB = 80           # --fsync always takes 32 MiB of commit journal at the first start


def wait_for(what, cond, timeout, server=None):
    """Poll `cond` until it is true; fail after `timeout` seconds naming `what` (and the server's log tail)."""
    deadline = time.time() + timeout
    while True:
        try:
            value = cond()
        except OSError:   # the server went away mid-request: said below
            value = None
        if value:
            return value
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"while waiting for {what}: {died(server)}")
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}" + (f"\n{tail(server)}" if server else ""))
        time.sleep(0.05)


def tail(server, n=4000):
    try:
        return open(server.log_path, errors="replace").read()[-n:]
    except OSError:
        return ""


def died(server):
    """How sensorlogd ended: its status and, after a crash, the lines of its backtrace that say where."""
    code = server.proc.returncode
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    log = tail(server, 10**8)
    where = [l.strip() for l in log.splitlines() if "Program crashed" in l or " crashed:" in l]
    lines = log.splitlines()
    for i, l in enumerate(lines):
        if " crashed:" in l:
            where += [x.strip() for x in lines[i + 1:i + 4] if x.strip()]
    last = [l for l in lines if l.startswith("{")][-3:]
    return f"sensorlogd died ({how}) {where}; last log lines:\n" + "\n".join(last)


def header(headers, name):
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 10**9)) + ".%09dZ" % (ts % 10**9)


@pytest.fixture(params=[4096, 1024], ids=["4k-blocks", "1k-blocks"])
def small_fs(request, tmp_path):
    """A fresh ext4 file system of IMAGE_MB, loop-mounted at tmp_path/mnt, without the root reserve.
    4 KiB blocks, as on any volume over 512 MB; 1 KiB blocks, what mkfs.ext4 gives a small one."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to loop-mount a file system; the injected-fault disk-full tests cover ENOSPC")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if not shutil.which(tool):
            pytest.skip(f"a real full disk needs {tool}; the injected-fault disk-full tests cover ENOSPC")
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_MB << 20)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", str(request.param), str(image)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mkfs.ext4 failed ({r.stderr.strip()}); the injected-fault disk-full tests cover ENOSPC")
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"this machine cannot loop-mount ({r.stderr.strip()}); the injected-fault disk-full tests cover ENOSPC")
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink()


def fill(mnt, path):
    """Allocate free blocks into `path` until the file system refuses even 4 KiB (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    size = 0
    try:
        while True:
            st = os.statvfs(mnt)
            chunk = max(st.f_bavail * st.f_frsize, 4096)
            while True:
                try:
                    os.posix_fallocate(fd, size, chunk)
                    size += chunk
                    break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if chunk == 4096:
                        return size
                    chunk = max(chunk // 2 // 4096 * 4096, 4096)
    finally:
        os.close(fd)


class Producer(threading.Thread):
    """Unique readings of its own sensors; `sent` maps (sensor_id, timestamp_ns) to value for every
    reading handed over, `acked` the keys the server acknowledged (HTTP 2xx)."""

    def __init__(self, name, server, seed, sensors=8):
        super().__init__(name=name, daemon=True)
        self.server, self.rnd, self.sensors = server, random.Random(f"{seed}-{name}"), sensors
        self.k = 0
        self.sent, self.acked = {}, set()
        self.stop, self.error = threading.Event(), None
        self.refusals, self.unexpected = [], []   # (status, headers, body) of 503s; anything else not 2xx
        self.last_ack = 0.0

    def readings(self, n):
        out = []
        for _ in range(n):
            out.append((f"{self.name}-{self.k % self.sensors}", T0 + self.k * STEP, self.rnd.randrange(40_000) / 1000))
            self.k += 1
        return out

    def run(self):
        try:
            self.produce()
        except BaseException as e:   # surfaced by the test
            self.error = e


class HTTPProducer(Producer):
    """POST a batch, retry it (after a short wait, not the full Retry-After) until it is acknowledged."""

    def __init__(self, name, server, seed, lp):
        super().__init__(name, server, seed)
        self.lp = lp

    def post(self, batch):
        if self.lp:
            body = "".join(f"temperature,sensor_id={s},location=disk value={v} {t}\n" for s, t, v in batch).encode()
            return self.server.request("POST", "/api/v2/write?org=o&bucket=b", body, {"Content-Type": "text/plain"})
        body = json.dumps([{"sensor_id": s, "type": "temperature", "value": v, "location": "disk", "timestamp": iso(t)}
                           for s, t, v in batch]).encode()
        return self.server.request("POST", "/sensor/data", body, {"Content-Type": "application/json"})

    def produce(self):
        final = None
        while True:
            if self.stop.is_set():
                return
            batch = self.readings(self.rnd.randrange(10, 40))
            self.sent.update({(s, t): v for s, t, v in batch})
            while True:
                if self.stop.is_set() and final is None:
                    final = time.time() + 30
                if final is not None and time.time() > final:
                    return   # never acknowledged: the final check finds it missing
                try:
                    status, body, headers = self.post(batch)
                except OSError as e:
                    self.unexpected.append(("connection", repr(e)))
                    time.sleep(0.2)
                    continue
                if status in (201, 204):
                    self.acked.update((s, t) for s, t, _ in batch)
                    self.last_ack = time.time()
                    break
                if status == 503:
                    self.refusals.append((status, headers, body))
                else:
                    self.unexpected.append((status, body[:300]))
                time.sleep(0.2)
            time.sleep(0.05)


class TCPProducer(Producer):
    """One persistent non-blocking socket; 2 000 readings a second, or as fast as the socket takes
    them while `burst` is set. `blocked_since`: when its socket last stopped taking bytes."""

    def __init__(self, name, server, seed):
        super().__init__(name, server, seed)
        self.burst = threading.Event()
        self.blocked_since, self.bytes = None, 0
        self.sock = socket.create_connection(("127.0.0.1", server.tcp))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self.sock.setblocking(False)

    def blocked_for(self):
        since = self.blocked_since
        return 0.0 if since is None else time.time() - since

    def produce(self):
        pending, keys, next_at = b"", {}, time.time()
        while True:
            if not pending:
                self.sent.update(keys)
                if self.stop.is_set():
                    self.sock.shutdown(socket.SHUT_WR)   # everything sent; the server reads to the end
                    return
                if not self.burst.is_set() and time.time() < next_at:
                    time.sleep(min(next_at - time.time(), 0.05))
                    continue
                batch = self.readings(200)
                keys = {(s, t): v for s, t, v in batch}
                pending = "".join(f"temperature,sensor_id={s},location=disk value={v} {t}\n" for s, t, v in batch).encode()
                next_at = max(next_at, time.time() - 1) + 0.1
            _, writable, _ = select.select([], [self.sock], [], 0.1)
            if not writable:
                if self.blocked_since is None:
                    self.blocked_since = time.time()
                continue
            try:
                n = self.sock.send(pending)
            except BlockingIOError:
                continue
            self.blocked_since = None
            pending = pending[n:]
            self.bytes += n
            self.last_ack = time.time()   # progress, not an acknowledgement: TCP has none


class MQTTProducer(Producer):
    """QoS 1 messages of 20 line-protocol readings to sensors/disk/<sensor>, 10 a second. A PUBACK is
    the broker's: it says nothing of sensorlogd, which must get every message in the end."""

    def __init__(self, name, server, seed, broker):
        super().__init__(name, server, seed)
        self.client = publisher(broker.port, f"{name}-publisher")
        self.infos = []

    def produce(self):
        while not self.stop.is_set():
            batch = self.readings(20)
            self.sent.update({(s, t): v for s, t, v in batch})
            body = "\n".join(f"temperature,sensor_id={s} value={v} {t}" for s, t, v in batch)
            self.infos.append(self.client.publish(f"sensors/disk/{batch[0][0]}", body, qos=1))
            time.sleep(0.1)
        for info in self.infos:
            info.wait_for_publish(30)
        self.client.loop_stop()


def aggregator_state(server):
    groups = json.loads(server.get("/groups")[1])["groups"]
    parts = next(g["partitions"] for g in groups if g["group"] == "aggregator")
    return sum(p["lag"] for p in parts), sum(p["end"] for p in parts)


def stored_aggregates(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(sid, hb): (c, s, mn, mx) for sid, hb, c, s, mn, mx in
                con.execute("SELECT sensor_id, hour_bucket, count, sum, min, max FROM aggregates")}
    finally:
        con.close()


def fold(readings):
    agg = {}
    for r in readings:
        key = (r["sensor_id"], time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(r["timestamp_ns"] // 10**9)))
        a = agg.setdefault(key, [0, 0.0, float("inf"), float("-inf")])
        a[0] += 1
        a[1] += r["value"]
        a[2], a[3] = min(a[2], r["value"]), max(a[3], r["value"])
    return agg


def test_a_real_full_disk_over_every_door(small_fs, tmp_path):
    seed = int(os.environ.get("SENSORLOG_TEST_SEED") or random.randrange(2**32))
    print(f"SENSORLOG_TEST_SEED={seed}")
    broker = Broker()
    data_dir = os.path.join(small_fs, "data")
    filler = os.path.join(small_fs, "filler")
    s = Server(data_dir, extra=["--fsync", "always", "--segment-bytes", "65536", "--maintenance-interval-seconds", "3"]
               + mqtt_args(broker), env={"SWIFT_BACKTRACE": "unwind=precise,threads=crashed,images=none"})
    s.log_path = str(tmp_path / "sensorlogd.log")   # not on the file system that fills
    producers = []
    try:
        s.start()
        t_start, pid = time.time(), s.proc.pid
        wait_for("sensorlogd subscribed to the broker", lambda: "MQTT subscribed" in tail(s, 10**7), 30, s)
        json_p, lp_p = HTTPProducer("json", s, seed, lp=False), HTTPProducer("lp", s, seed, lp=True)
        tcp_p, mqtt_p = TCPProducer("tcp", s, seed), MQTTProducer("mqtt", s, seed, broker)
        producers = [json_p, lp_p, tcp_p, mqtt_p]
        for p in producers:
            p.start()
        for transport in ("http", "http_lp", "tcp", "mqtt"):
            s.wait_metric("sensorlog_readings_ingested_total", 1, timeout=30, transport=transport)
        # Some segments rolled first, so that closed segments (and maintenance on them) meet the full disk too.
        tcp_p.burst.set()
        s.wait_metric("sensorlog_log_segments", 12, timeout=30)
        tcp_p.burst.clear()
        print(f"segments before the fill: {s.metric('sensorlog_log_segments'):.0f}, after {time.time() - t_start:.1f} s")

        # --- Full. ---
        filled = fill(small_fs, filler)
        t_full = time.time()
        tcp_p.burst.set()   # push until the socket stops taking bytes
        seen = {}

        def health_503():
            status, body, headers = s.get("/health")
            if status == 503:
                seen["health"] = (json.loads(body), header(headers, "Retry-After"))
            return status == 503

        wait_for("/health answers 503", health_503, 30, s)
        doc, retry_after = seen["health"]
        assert doc["status"] == "unavailable" and retry_after and int(retry_after) > 0, seen["health"]
        wait_for("POST /sensor/data answers 503", lambda: json_p.refusals, 30, s)
        wait_for("/api/v2/write answers 503", lambda: lp_p.refusals, 30, s)
        for status, headers, body in json_p.refusals + lp_p.refusals:
            assert int(header(headers, "Retry-After")) > 0, (status, headers, body)
        assert json.loads(json_p.refusals[0][2])["error"]["code"] == "disk_full", json_p.refusals[0]
        assert json.loads(lp_p.refusals[0][2])["code"] == "unavailable", lp_p.refusals[0]
        wait_for("the TCP producer's socket blocked for 2 s (the server stopped reading it)",
                 lambda: tcp_p.blocked_for() >= 2, 45, s)
        tcp_p.burst.clear()
        assert s.metric("sensorlog_tcp_connections") == 1   # paused, not closed
        # MQTT: a refused batch closes the session, the broker delivers it again on the next. Four
        # of them (a second apart when reopened at once; 1 + 2 + 4 s apart with a growing backoff).
        def mqtt_refusals():   # when each refused batch was logged, in seconds
            return [datetime.datetime.fromisoformat(json.loads(l)["time"].replace("Z", "+00:00")).timestamp()
                    for l in tail(s, 10**8).splitlines() if "MQTT readings could not be appended" in l]
        refused_mqtt = lambda: len(mqtt_refusals())
        wait_for("four MQTT batches refused, each followed by a new session", lambda: refused_mqtt() >= 4, 30, s)
        assert s.metric("sensorlog_readings_rejected_total", transport="http", reason="disk_full") > 0
        assert s.metric("sensorlog_readings_rejected_total", transport="http_lp", reason="disk_full") > 0
        assert s.metric("sensorlog_http_requests_total", route="/sensor/data", status="503") > 0
        assert s.metric("sensorlog_http_requests_total", route="/api/v2/write", status="503") > 0
        assert s.metric("sensorlog_readings_rejected_total", transport="tcp", reason="lost_at_shutdown") == 0
        print(f"filled {filled >> 20} MiB; full for {time.time() - t_full:.1f} s; "
              f"refusals json={len(json_p.refusals)} lp={len(lp_p.refusals)}; tcp bytes={tcp_p.bytes}")

        # --- Space again, same process. ---
        ingested = {t: s.metric("sensorlog_readings_ingested_total", transport=t) for t in ("http", "http_lp", "tcp", "mqtt")}
        maintenance_ok = s.metric("sensorlog_maintenance_jobs_total", outcome="ok")
        os.remove(filler)
        t_free = time.time()
        resumed = {}   # what -> seconds after the filler went

        def all_resumed():
            now = time.time() - t_free
            checks = {"health": lambda: s.get("/health")[0] == 200,
                      "json acknowledged": lambda: json_p.last_ack > t_free, "lp acknowledged": lambda: lp_p.last_ack > t_free,
                      "tcp socket taking bytes": lambda: tcp_p.last_ack > t_free and tcp_p.blocked_for() < 1}
            checks.update({f"{t} ingested": lambda t=t: s.metric("sensorlog_readings_ingested_total", transport=t) > ingested[t]
                           for t in ingested})
            for what, check in checks.items():
                if what not in resumed and check():
                    resumed[what] = now
            return len(resumed) == len(checks)

        # 45 s: past the MQTT reconnect's longest backoff (30 s), so that a slow door is measured, not lost.
        wait_for("every door flowing again and /health 200", all_resumed, 45, s)
        print("resumed after (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(resumed.items(), key=lambda kv: kv[1])))
        wait_for("a maintenance job succeeding again", lambda: s.metric("sensorlog_maintenance_jobs_total", outcome="ok") > maintenance_ok, 30, s)

        for p in producers:
            p.stop.set()
        for p in producers:
            p.join(60)
            assert not p.is_alive(), f"producer {p.name} did not finish"
            assert p.error is None, f"producer {p.name}: {p.error!r}"
        sent = {}
        for p in producers:
            sent.update(p.sent)
        acked = set().union(*(p.acked for p in (json_p, lp_p)))
        assert acked == set(json_p.sent) | set(lp_p.sent), "an HTTP batch was never acknowledged after space returned"
        total = lambda: sum(p["readings"] for p in stats(data_dir)["partitions"])
        wait_for(f"all {len(sent)} readings in the log", lambda: total() >= len(sent), 60, s)

        readings = dump_all(data_dir)
        keys = [(r["sensor_id"], r["timestamp_ns"]) for r in readings]
        assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} readings stored twice"
        lost = acked - set(keys)
        assert not lost, f"{len(lost)} acknowledged readings lost, e.g. {sorted(lost)[:5]}"
        for p in producers:
            missing = set(p.sent) - set(keys)
            assert not missing, f"{p.name}: {len(missing)} of {len(p.sent)} readings never stored, e.g. {sorted(missing)[:5]}"
        assert set(keys) == set(sent), f"readings nobody sent: {sorted(set(keys) - set(sent))[:5]}"
        assert all(r["value"] == sent[(r["sensor_id"], r["timestamp_ns"])] for r in readings)

        # The aggregator caught up, and its rows are the fold of the log.
        wait_for("the aggregator's lag back to 0 over the whole log",
                 lambda: aggregator_state(s) == (0, len(sent)), 60, s)
        assert s.metric("sensorlog_consumer_lag", group="aggregator") == 0
        got, ref = stored_aggregates(os.path.join(data_dir, "aggregates.sqlite")), fold(readings)
        assert set(got) == set(ref), f"{len(set(got) ^ set(ref))} sensor-hours differ"
        for k, (c, sm, mn, mx) in ref.items():
            assert got[k][0] == c and got[k][2] == mn and got[k][3] == mx and abs(got[k][1] - sm) <= 1e-9 * max(1, abs(sm)), (k, got[k], ref[k])

        assert s.proc.pid == pid and s.proc.poll() is None, "sensorlogd was restarted or died"
        assert s.metric("sensorlog_readings_rejected_total", transport="tcp", reason="lost_at_shutdown") == 0
        unexpected = [(p.name, u) for p in (json_p, lp_p) for u in p.unexpected]
        assert not unexpected, f"answers other than 2xx and 503: {unexpected[:5]}"
        print(f"{len(sent)} readings ({', '.join(f'{p.name} {len(p.sent)}' for p in producers)}), "
              f"{len(ref)} sensor-hours; maintenance jobs failed: "
              f"{s.metric('sensorlog_maintenance_jobs_total', outcome='failed')}")
        assert s.stop() == 0, tail(s)
        r = subprocess.run([os.path.join(__import__("conftest").BIN, "sensorlog"), "verify", "--data-dir", data_dir],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

        # Everything came back; now how soon. TCP retries every second, the HTTP producers every
        # 0.2 s, and a refused MQTT batch "closes the connection and opens it again" (docs/protocol.md):
        # not with the growing backoff meant for a broker that cannot be reached (1, 2, 4, 8 ... 30 s),
        # which leaves the MQTT door shut for up to 30 s after space returns.
        times = mqtt_refusals()
        gaps = [round(b - a, 1) for a, b in zip(times, times[1:])]
        assert max(gaps) <= 3, f"MQTT sessions reopened after a refused batch only after a growing backoff: gaps {gaps} s"
        slow = {k: round(v, 1) for k, v in resumed.items() if v > 6}
        assert not slow, f"doors flowing again more than 6 s after space returned: {slow}"
    except OSError as e:   # a request to a server that went away (a crash's backtrace takes seconds)
        try:
            s.proc.wait(20)
        except (subprocess.TimeoutExpired, AttributeError):
            raise e
        raise AssertionError(died(s)) from e
    finally:
        for p in producers:
            p.stop.set()
        if s.proc is not None and s.proc.poll() is None:
            s.stop()
        for p in producers:
            if isinstance(p, TCPProducer):
                p.sock.close()
            if isinstance(p, MQTTProducer):
                p.client.loop_stop()
        broker.stop()
