"""The soak (issues 16 and 20): readings through every door at once into small segments while the
server's retention (by size) and background compaction cycle, an operator runs `sensorlog
rebuild-aggregates`, `compact` and `verify` against it now and then (jobs inside the server), and
sensorlogd is killed with SIGKILL at random times; producers resend what they could not confirm.

The doors, each its own producer thread and its own readings (each reading is sent by exactly
one door, resends aside):

- `tcp`: line protocol over TCP (no acknowledgements: a chunk is confirmed once the server has
  judged every line sent to it, `sensorlog_readings_*_total{transport="tcp"}`; after a kill the
  unconfirmed chunks are sent again, before anything newer);
- `http_json`: `POST /sensor/data`, one reading or an array (201/409: confirmed; no answer: sent again);
- `http_lp`: InfluxDB line protocol over HTTP, `/write` and `/api/v2/write`, precisions ns, us
  and ms, a third gzip-compressed (204: confirmed; no answer: sent again);
- `mqtt`: QoS 1 publishes to a real mosquitto the soak starts, to which sensorlogd subscribes
  (line protocol and JSON payloads, the sensor id from the topic in some): the broker keeps and
  redelivers what sensorlogd did not acknowledge before a kill.

Each door's sensors hash to a partition of their own (`--partitions 4`) and its timestamps
increase, so what a kill leaves unconfirmed is always newer than anything retention removed from
that partition: a resend is judged a duplicate, never `too_old` (which would make it lost).

At the end: every door's readings folded exactly once (the aggregates against a reference fold
of every reading generated: `lost` and `counted twice` per (sensor, hour) bucket, both must be
0), a clean restart changes nothing, a rebuild from offset zero equals the live rows, `verify`
is clean and the retained log holds no key twice. A kill counts as recovered once the restarted
server answers /health and has stored a new reading. RSS of sensorlogd (VmRSS) and the data
directory's disk usage are sampled every 10 s into samples.csv, the kills into kills.csv, in the
run folder printed at the start; summary.json holds the figures printed at the end.

    soak.py [--minutes N] [--kill-every A-B] [--operator-every A-B] [--seed S] [--run-dir DIR]

Run by tools/soak and, for a minute, by the e2e suite. SENSORLOG_TEST_SEED repeats a run's
choices (kill times, values, batch shapes; not the threads' interleaving)."""
import argparse, collections, csv, gzip, http.client, json, os, random, signal, socket, statistics, subprocess
import shutil, tempfile, threading, time

from conftest import Server, BIN, free_port
from test_exactly_once import line, stored

BASE = 1_763_978_400_000_000_000
STEP = 10_000_000                        # 10 ms between a door's readings: an hour of soak spans hours
HOUR = 3_600_000_000_000
PARTITIONS = 4
DOORS = ["tcp", "http_json", "http_lp", "mqtt"]     # door i owns partition i
RATES = {"tcp": 1200, "http_json": 300, "http_lp": 700, "mqtt": 600}  # readings a second
SENSORS_PER_DOOR = 120
TYPES = ["temperature", "humidity", "pressure"]
MQTT_PER_MESSAGE, MQTT_BURST = 50, 10     # messages of one sensor each, published ten at a time
FLAGS = ["--segment-bytes", "65536", "--partitions", str(PARTITIONS), "--maintenance-interval-seconds", "1",
         "--retention-bytes", "120K", "--compaction-bytes-per-second", "4M"]
OPERATOR = [["rebuild-aggregates"], ["compact", "--target-segment-bytes", "262144"], ["verify"]]
TCP_CHUNK, TCP_WRITE, TCP_UNCONFIRMED = 500, 25, 4
STALL = 180                               # seconds without progress that count as a hang


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def door_sensors(door):
    """SENSORS_PER_DOOR ids that the server's partitioner (FNV-1a 64 mod 4) puts in the door's partition."""
    out, k = [], 0
    while len(out) < SENSORS_PER_DOOR:
        sid = f"{door}-{k:04d}"
        if fnv1a64(sid) % PARTITIONS == DOORS.index(door):
            out.append(sid)
        k += 1
    return out


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 10**9)) + f".{ts % 10**9:09d}Z"


def span(s):
    a, _, b = s.partition("-")
    lo, hi = float(a), float(b or a)
    assert 0 < lo <= hi, f"bad range {s!r}"
    return lo, hi


class Stalled(Exception):
    pass


class Door:
    """One door's readings: generated in order with increasing timestamps, folded into the reference
    as they are made (each is sent by this door only: resends are not new readings)."""

    def __init__(self, name, seed):
        self.name, self.rnd = name, random.Random(f"{seed}-{name}")
        self.sensors = door_sensors(name)
        self.next = 0
        self.ref = {}                      # (sensor_id, hour index) -> [count, sum, min, max]
        self.resent = 0                    # readings sent again (or redelivered, as far as the producer knows)
        self.duplicates = 0                # readings the server answered as already stored (HTTP doors)
        self.refused = collections.Counter()   # anything else refused: none expected

    def take(self, count, per_sensor=1):
        out = []
        for i in range(self.next, self.next + count):
            sid = self.sensors[(i // per_sensor) % len(self.sensors)]
            r = (sid, TYPES[int(sid[-4:]) % 3], round(self.rnd.uniform(0, 100), 3), f"site-{i % 7}", BASE + i * STEP)
            a = self.ref.get((sid, r[4] // HOUR))
            if a is None:
                self.ref[(sid, r[4] // HOUR)] = [1, r[2], r[2], r[2]]
            else:
                a[0] += 1; a[1] += r[2]; a[2] = min(a[2], r[2]); a[3] = max(a[3], r[2])
            out.append(r)
        self.next += count
        return out


class Pace:
    def __init__(self, rate):
        self.rate, self.t0, self.done = rate, time.time(), 0

    def wait(self, n):
        self.done += n
        due = self.t0 + self.done / self.rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        elif now - due > 2:                # fell behind (a kill, a busy machine): no burst to catch up
            self.t0, self.done = now, 0


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of a /metrics body."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        series, _, value = ln.rpartition(" ")
        name, _, rest = series.partition("{")
        labels = frozenset(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").replace('"', "").split(",") if kv) if rest else frozenset()
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


class Soak:
    def __init__(self, data_dir, seconds, seed, kill_every, operator_every, run_dir, sample_every=10):
        self.data_dir, self.seconds, self.seed = data_dir, seconds, seed
        self.kill_every, self.operator_every, self.sample_every = kill_every, operator_every, sample_every
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.rnd = random.Random(seed)
        self.cond = threading.Condition()
        self.up, self.gen = False, 0
        self.op_lock = threading.Lock()    # held by a kill, and by an operator job until it is inside the server
        self.aim, self.aimed = None, threading.Event()   # a kill aimed at a door's request in flight
        self.stop_kills, self.stop_producers, self.stop_all = threading.Event(), threading.Event(), threading.Event()
        self.errors = []
        self.doors = {d: Door(d, seed) for d in DOORS}
        self.kills = []                    # dicts: one per kill
        self.samples = []
        self.jobs = collections.Counter()
        self.job_failures = []
        self.metrics_total = collections.Counter()   # per incarnation, read just before each kill and at the end
        self.t_start = time.time()

    # --- the server and its incarnations -------------------------------------------------------

    def wait_up(self, timeout=STALL):
        with self.cond:
            if not self.cond.wait_for(lambda: self.up or self.stop_all.is_set(), timeout):
                raise Stalled("the server was not back up in time")
            if self.stop_all.is_set():
                raise Stalled("stopping")
            return self.gen

    def metrics(self):
        """/metrics of the incarnation `gen`, or None when that incarnation is gone."""
        g = self.gen
        try:
            status, body, _ = self.server.get("/metrics")
        except OSError:
            return None, g
        return (parse_metrics(body.decode()) if status == 200 and self.gen == g else None), g

    def bank(self, m):
        """Adds an incarnation's counters to the run's totals."""
        if not m:
            return
        for (name, labels), v in m.items():
            if name in ("sensorlog_readings_ingested_total", "sensorlog_readings_rejected_total"):
                d = dict(labels)
                self.metrics_total[(name, d.get("transport", ""), d.get("reason", ""))] += v
            elif name in ("sensorlog_retention_segments_removed_total", "sensorlog_compaction_segments_rewritten_total"):
                self.metrics_total[(name, "", "")] += v

    def in_flight(self, door):
        """A producer has just handed the server (or the broker) something it has not confirmed."""
        if self.aim == door:
            self.aimed.set()

    def supervisor(self):
        lo, hi = self.kill_every
        while not self.stop_kills.is_set():
            if self.stop_kills.wait(self.rnd.uniform(lo, hi)):
                break
            # Every other kill is aimed: it lands just after a door (in turn) sent something, so
            # each door's resend path runs, not only the TCP one (an HTTP request takes about a
            # millisecond: a kill at a random moment almost never meets one).
            aim = DOORS[len(self.kills) // 2 % len(DOORS)] if len(self.kills) % 2 else None
            delay = self.rnd.uniform(0, 0.02 if aim == "mqtt" else 0.002)
            with self.op_lock:
                m, _ = self.metrics()
                rss = rss_kib(self.server.proc.pid)
                hit = None
                if aim:
                    self.aimed.clear()
                    self.aim = aim
                    hit = self.aimed.wait(10)
                    self.aim = None
                    time.sleep(delay)
                with self.cond:
                    self.up = False
                    self.gen += 1
                pid = self.server.proc.pid
                t_kill = time.time()
                self.server.stop(signal.SIGKILL)
                self.bank(m)
                k = {"kill": len(self.kills) + 1, "t": round(t_kill - self.t_start, 1), "pid": pid, "rss_kib_before": rss,
                     "aimed_at": (aim if hit else f"{aim} (missed)") if aim else ""}
                self.kills.append(k)
                for attempt in range(5):
                    try:
                        self.server.start(timeout=STALL)
                        break
                    except AssertionError as e:  # not healthy, or it exited: the log says why
                        k.setdefault("start_failures", []).append(str(e)[:300])
                        self.server.stop(signal.SIGKILL)
                        time.sleep(1)
                else:
                    k["recovered"] = False
                    raise AssertionError(f"kill {k['kill']}: sensorlogd did not come back: {k['start_failures']}")
                k["healthy_s"] = round(time.time() - t_kill, 3)
                with self.cond:
                    self.up = True
                    self.cond.notify_all()
            # Recovered once it stores a new reading again (over any door).
            deadline = time.time() + STALL
            while True:
                m, g = self.metrics()
                if m and metric_sum(m, "sensorlog_readings_ingested_total") > 0:
                    break
                if time.time() > deadline:
                    k["recovered"] = False
                    raise AssertionError(f"kill {k['kill']}: healthy but nothing ingested within {STALL} s")
                time.sleep(0.02)
            k["ingesting_s"] = round(time.time() - t_kill, 3)
            k["recovered"] = True

    # --- producers ----------------------------------------------------------------------------

    def producer_tcp(self):
        door, pace = self.doors["tcp"], Pace(RATES["tcp"])
        conn, conn_gen, sent_in_gen, unconfirmed = None, None, 0, []

        def judged(m):
            return (metric_sum(m, "sensorlog_readings_ingested_total", transport="tcp")
                    + metric_sum(m, "sensorlog_readings_rejected_total", transport="tcp"))

        def connect():
            nonlocal conn, conn_gen, sent_in_gen
            while True:
                g = self.wait_up()
                try:
                    c = socket.create_connection(("127.0.0.1", self.server.tcp), timeout=30)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    time.sleep(0.05)
                    continue
                if self.gen != g:
                    c.close()
                    continue
                if conn_gen != g:
                    sent_in_gen = 0
                conn, conn_gen = c, g
                # What may not have landed goes again, before anything newer.
                try:
                    for chunk in unconfirmed:
                        write(chunk)
                        door.resent += len(chunk)
                except OSError:
                    conn = None
                    continue
                return

        def write(rows):
            nonlocal sent_in_gen
            for i in range(0, len(rows), TCP_WRITE):
                conn.sendall(b"".join(line(r) for r in rows[i:i + TCP_WRITE]))
            sent_in_gen += len(rows)

        def confirm(block):
            """Clears `unconfirmed` once the incarnation has judged every line sent to it; with
            `block`, waits for that (or for a kill, which leaves them to be resent)."""
            deadline, n = time.time() + STALL, "?"
            while True:
                m, g = self.metrics()
                if m is not None and g == conn_gen:
                    n = judged(m)
                    if n >= sent_in_gen:
                        unconfirmed.clear()
                        return
                if not block or self.gen != conn_gen or self.stop_all.is_set():
                    return
                if time.time() > deadline:
                    raise Stalled(f"tcp: {sent_in_gen} lines sent, the server judged {n} after {STALL} s")
                time.sleep(0.02)

        while not self.stop_producers.is_set() or unconfirmed:
            if conn is None or self.gen != conn_gen:
                if conn:
                    conn.close()
                connect()
            if not self.stop_producers.is_set():
                chunk = door.take(TCP_CHUNK)
                unconfirmed.append(chunk)
                try:
                    write(chunk)
                except OSError:
                    conn = None
                    continue
                self.in_flight("tcp")
                confirm(block=len(unconfirmed) > TCP_UNCONFIRMED)
                pace.wait(len(chunk))
            else:
                confirm(block=True)
        if conn:
            conn.close()

    def http_send(self, state, method, path, body, headers):
        """Sends until the server answers (a kill loses the answer: the request goes again)."""
        first, state["resends"] = True, 0
        deadline = time.time() + STALL
        while True:
            if not first:
                state["resends"] += 1
            if not first and self.stop_all.is_set():
                raise Stalled("stopping")
            try:
                if state.get("conn") is None or state.get("gen") != self.gen:
                    g = self.wait_up()
                    state["conn"], state["gen"] = http.client.HTTPConnection("127.0.0.1", self.server.http, timeout=60), g
                state["conn"].request(method, path, body, headers)
                self.in_flight(state["door"])
                r = state["conn"].getresponse()
                data = r.read()
                if r.status == 503:            # not now (e.g. the disk): Retry-After
                    raise OSError(f"503 {data[:200]!r}")
                return r.status, data, r
            except (OSError, http.client.HTTPException):
                if state.get("conn") is not None:
                    state["conn"].close()
                state["conn"] = None
                first = False
                if time.time() > deadline:
                    raise Stalled(f"{path}: no answer for {STALL} s")
                time.sleep(0.05)

    def producer_http_json(self):
        door, pace, state = self.doors["http_json"], Pace(RATES["http_json"]), {"door": "http_json"}
        rnd = random.Random(f"{self.seed}-http_json-shape")
        while not self.stop_producers.is_set():
            n = 1 if rnd.random() < 0.3 else rnd.randint(2, 40)
            rows = door.take(n)
            docs = [{"sensor_id": r[0], "type": r[1], "value": r[2], "location": r[3], "timestamp": iso(r[4])} for r in rows]
            body = json.dumps(docs[0] if n == 1 else docs).encode()
            status, data, _ = self.http_send(state, "POST", "/sensor/data", body, {"Content-Type": "application/json"})
            door.resent += state["resends"] * n
            answer = json.loads(data) if data else {}
            if status == 409 and n == 1 and answer.get("error", {}).get("code") == "duplicate":
                door.duplicates += 1
            elif status == 201:
                if n > 1:
                    door.duplicates += len(answer.get("duplicates", []))
                    for reason in ("too_old", "deleted", "too_many_sensors"):
                        if answer.get(reason):
                            door.refused[reason] += len(answer[reason])
            else:
                door.refused[f"http {status}: {answer}"[:120]] += n
            pace.wait(n)

    def producer_http_lp(self):
        door, pace, state = self.doors["http_lp"], Pace(RATES["http_lp"]), {"door": "http_lp"}
        rnd = random.Random(f"{self.seed}-http_lp-shape")
        while not self.stop_producers.is_set():
            n = rnd.randint(100, 600)
            rows = door.take(n)
            v2 = rnd.random() < 0.5
            unit, scale = rnd.choice([("ns", 1), ("us", 1000), ("ms", 10**6)])
            text = "".join(f"{r[1]},sensor_id={r[0]},location={r[3]} value={r[2]!r} {r[4] // scale}\n" for r in rows).encode()
            headers = {"Content-Type": "text/plain; charset=utf-8"}
            if rnd.random() < 1 / 3:
                text = gzip.compress(text)
                headers["Content-Encoding"] = "gzip"
            path = (f"/api/v2/write?org=soak&bucket=soak&precision={unit}" if v2
                    else f"/write?db=soak&precision={ {'ns': 'n', 'us': 'u', 'ms': 'ms'}[unit] }")
            status, data, r = self.http_send(state, "POST", path, text, headers)
            door.resent += state["resends"] * n
            if status == 204:
                door.duplicates += int(r.getheader("X-Sensorlog-Duplicates") or 0)
            else:
                door.refused[f"http {status}: {data[:200]!r}"[:160]] += n
            pace.wait(n)

    def producer_mqtt(self):
        import paho.mqtt.client as mqtt
        door, pace = self.doors["mqtt"], Pace(RATES["mqtt"])
        rnd = random.Random(f"{self.seed}-mqtt-shape")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-publisher")
        pub.max_inflight_messages_set(100)
        pub.connect("127.0.0.1", self.broker.port)
        pub.loop_start()
        pending = collections.deque()
        try:
            while not self.stop_producers.is_set():
                for _ in range(MQTT_BURST):
                    rows = door.take(MQTT_PER_MESSAGE, per_sensor=MQTT_PER_MESSAGE)
                    sid = rows[0][0]
                    topic = f"sensors/yard/{sid}"
                    shape = rnd.randrange(4)   # line protocol with/without the sensor tag, JSON with/without sensor_id
                    if shape < 2:
                        tag = f",sensor_id={sid}" if shape == 0 else ""
                        body = "\n".join(f"{r[1]}{tag},location={r[3]} value={r[2]!r} {r[4]}" for r in rows)
                    else:
                        body = json.dumps([dict({"type": r[1], "value": r[2], "location": r[3], "timestamp": iso(r[4])},
                                                **({"sensor_id": sid} if shape == 2 else {})) for r in rows])
                    pending.append(pub.publish(topic, body, qos=1))
                self.in_flight("mqtt")
                while len(pending) > 200:
                    pending.popleft().wait_for_publish(STALL)
                pace.wait(MQTT_BURST * MQTT_PER_MESSAGE)
            while pending:
                info = pending.popleft()
                info.wait_for_publish(STALL)
                if not info.is_published():
                    raise Stalled("mqtt: the broker did not acknowledge a publish")
        finally:
            pub.loop_stop()
            pub.disconnect()

    # --- the operator, the sampler ------------------------------------------------------------

    def operator(self):
        lo, hi = self.operator_every
        rnd = random.Random(f"{self.seed}-operator")
        while not self.stop_producers.wait(rnd.uniform(lo, hi)):
            args = rnd.choice(OPERATOR)
            err, inside = [], threading.Event()
            with self.op_lock:
                if not self.up:
                    continue
                job = subprocess.Popen([os.path.join(BIN, "sensorlog"), *args, "--data-dir", self.data_dir],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

                def read_err():
                    for ln in job.stderr:
                        err.append(ln)
                        if "runs inside it as job" in ln:
                            inside.set()
                    inside.set()
                reader = threading.Thread(target=read_err, daemon=True)
                reader.start()
                # No kill until the tool has handed the job to the server: a tool that found the
                # server gone would take the data directory itself and keep the restart out.
                inside.wait(60)
            out = job.stdout.read()
            job.wait()
            reader.join(10)
            err = "".join(err)
            name = args[0]
            # Done (0); the server killed under it (75); or the same job already running (1, 409).
            if job.returncode == 0:
                self.jobs[(name, "done")] += 1
            elif job.returncode == 75:
                self.jobs[(name, "met a kill")] += 1
            elif job.returncode == 1 and "already running" in err:
                self.jobs[(name, "already running")] += 1
            else:
                self.jobs[(name, f"exit {job.returncode}")] += 1
                self.job_failures.append((args, job.returncode, out[-2000:], err[-2000:]))

    def sample(self):
        pid = self.server.proc.pid if self.server.proc and self.server.proc.poll() is None else None
        row = {"t_s": round(time.time() - self.t_start, 1), "incarnation": self.gen, "pid": pid,
               "rss_kib": rss_kib(pid) if pid else None, "data_dir_bytes": du(self.data_dir),
               "log_bytes": du(os.path.join(self.data_dir, "log")), "kills": len(self.kills)}
        for d in DOORS:
            row[f"sent_{d}"] = self.doors[d].next
        self.samples.append(row)

    def sampler(self):
        while not self.stop_all.wait(self.sample_every):
            self.sample()

    # --- the run ------------------------------------------------------------------------------

    def thread(self, name, fn):
        def run():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 (reported, and the run stops)
                if not (isinstance(e, Stalled) and self.stop_all.is_set()):
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
                    self.stop_kills.set(); self.stop_producers.set()
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    def stored_per_door(self):
        import sqlite3
        con = sqlite3.connect(f"file:{os.path.join(self.data_dir, 'aggregates.sqlite')}?mode=ro", uri=True, timeout=10)
        try:
            got = dict.fromkeys(DOORS, 0)
            for sid, c in con.execute("SELECT sensor_id, SUM(count) FROM aggregates GROUP BY sensor_id"):
                got[sid.rsplit("-", 1)[0]] = got.get(sid.rsplit("-", 1)[0], 0) + c
            return got
        finally:
            con.close()

    def run(self):
        say = lambda msg: print(f"soak: {msg}", flush=True)
        say(f"seed {self.seed} (SENSORLOG_TEST_SEED={self.seed} repeats it), {self.seconds:.0f} s, kill -9 every "
            f"{self.kill_every[0]:g}-{self.kill_every[1]:g} s, run folder {self.run_dir}, data in {self.data_dir}")
        self.broker = Broker(self.run_dir)
        mqtt = ["--mqtt-url", f"mqtt://127.0.0.1:{self.broker.port}", "--mqtt-topic-template", "sensors/{location}/{sensor_id}",
                "--mqtt-client-id", "sensorlogd-soak"]
        self.flags = FLAGS + mqtt
        self.server = Server(self.data_dir, extra=self.flags).start(poll_seconds=0.01)
        with self.cond:
            self.up, self.gen = True, 1
        self.t_start = time.time()
        self.sample()
        producers = [self.thread(f"producer-{d}", getattr(self, f"producer_{d}")) for d in DOORS]
        operator = self.thread("operator", self.operator)
        supervisor = self.thread("supervisor", self.supervisor)
        sampler = self.thread("sampler", self.sampler)
        ended, last_report = self.t_start + self.seconds, time.time()
        try:
            while time.time() < ended and not self.errors:
                time.sleep(0.5)
                if time.time() - last_report >= 300:
                    last_report = time.time()
                    rss = [s["rss_kib"] for s in self.samples[-30:] if s["rss_kib"]]
                    say(f"{(time.time() - self.t_start) / 60:.0f} min: {sum(d.next for d in self.doors.values())} readings, "
                        f"{len(self.kills)} kills, RSS now {rss[-1] // 1024 if rss else '?'} MiB, "
                        f"data dir {self.samples[-1]['data_dir_bytes'] / 2**20:.1f} MiB")
            if self.errors:
                self.stop_all.set()
                with self.cond:
                    self.cond.notify_all()
            self.stop_kills.set()
            supervisor.join(STALL * 2)
            self.stop_producers.set()
            for t in producers + [operator]:
                t.join(STALL * 3)
            assert not self.errors, "; ".join(self.errors)
            assert not supervisor.is_alive() and not any(t.is_alive() for t in producers + [operator]), "a thread hangs"
            sent = {d: self.doors[d].next for d in DOORS}
            say(f"producers done ({sent}); waiting for every reading to be folded")
            # The broker delivers what it still holds, the aggregator folds it all.
            deadline, last = time.time() + STALL, None
            while True:
                got = self.stored_per_door()
                lag = self.server.metric("sensorlog_consumer_lag", group="aggregator")
                if lag == 0 and all(got[d] >= sent[d] for d in DOORS):
                    break
                if (got, lag) != last:
                    deadline, last = time.time() + STALL, (got, lag)
                if time.time() > deadline:
                    say(f"no progress for {STALL} s: stored {got}, lag {lag}")
                    break
                time.sleep(0.2)
            self.stop_all.set()
            sampler.join(30)
            self.sample()
            m, _ = self.metrics()
            self.bank(m)
            assert self.server.stop() == 0
            return self.check(sent)
        finally:
            self.stop_kills.set(); self.stop_producers.set(); self.stop_all.set()
            with self.cond:
                self.cond.notify_all()
            self.server.stop()
            self.broker.stop()
            self.write_csv()

    def check(self, sent):
        live = stored(os.path.join(self.data_dir, "aggregates.sqlite"))
        ref = {}
        for d in self.doors.values():
            for (sid, h), a in d.ref.items():
                ref[(sid, time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(h * 3600)))] = a
        lost = twice = wrong = 0
        per_door = {d: {"lost": 0, "twice": 0} for d in DOORS}
        for k in set(ref) | set(live):
            rc = ref[k][0] if k in ref else 0
            gc = live[k][0] if k in live else 0
            door = k[0].rsplit("-", 1)[0]
            if gc < rc:
                lost += rc - gc; per_door.setdefault(door, {"lost": 0, "twice": 0})["lost"] += rc - gc
            elif gc > rc:
                twice += gc - rc; per_door.setdefault(door, {"lost": 0, "twice": 0})["twice"] += gc - rc
            elif rc and not (live[k][2] == ref[k][2] and live[k][3] == ref[k][3] and abs(live[k][1] - ref[k][1]) <= 1e-9 * max(1, abs(ref[k][1]))):
                wrong += 1
        stored_total = sum(v[0] for v in live.values())
        # A clean restart changes nothing; a rebuild from offset zero gives the same rows; verify is clean.
        s = Server(self.data_dir, extra=FLAGS).start()
        restart_rc = s.stop()
        restart_same = stored(os.path.join(self.data_dir, "aggregates.sqlite")) == live
        out = self.data_dir + "-rebuilt.sqlite"
        r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", self.data_dir, "--output", out],
                           capture_output=True, text=True)
        rebuild_same = r.returncode == 0 and stored(out) == live
        v = subprocess.run([os.path.join(BIN, "sensorlog"), "verify", "--data-dir", self.data_dir], capture_output=True, text=True)
        retained = retained_keys(self.data_dir)
        log = open(self.data_dir + "-sensorlogd.log", errors="replace").read()
        healthy = sorted(k["healthy_s"] for k in self.kills if "healthy_s" in k)
        ingesting = sorted(k["ingesting_s"] for k in self.kills if "ingesting_s" in k)
        mt = self.metrics_total
        redelivered, delivered = self.broker.redeliveries("sensorlogd-soak")
        summary = {
            "seed": self.seed, "seconds": round(self.seconds), "kill_every_s": list(self.kill_every), "run_dir": self.run_dir,
            "sent": sent, "sent_total": sum(sent.values()),
            "resent_by_producers": {d: self.doors[d].resent for d in DOORS},
            "duplicates_answered": {d: self.doors[d].duplicates for d in ("http_json", "http_lp")},
            "mqtt_messages_published": self.doors["mqtt"].next // MQTT_PER_MESSAGE, "mqtt_deliveries": delivered,
            "mqtt_redeliveries": redelivered,
            "duplicates_judged": {t: int(mt[("sensorlog_readings_rejected_total", t, "duplicate")]) for t in ("tcp", "http", "http_lp", "mqtt")},
            "ingested_per_transport": {t: int(mt[("sensorlog_readings_ingested_total", t, "")]) for t in ("tcp", "http", "http_lp", "mqtt")},
            "refused_other": {f"{t}/{r}": int(v) for (n, t, r), v in mt.items() if n == "sensorlog_readings_rejected_total" and r != "duplicate" and v},
            "refused_seen_by_producers": {d: dict(self.doors[d].refused) for d in DOORS if self.doors[d].refused},
            "stored": stored_total, "buckets": len(live), "lost": lost, "counted_twice": twice, "wrong_buckets": wrong, "per_door": per_door,
            "kills": len(self.kills), "kills_aimed": dict(collections.Counter(k["aimed_at"] for k in self.kills if k["aimed_at"])),
            "recoveries": sum(1 for k in self.kills if k.get("recovered")),
            "start_retries": sum(len(k.get("start_failures", [])) for k in self.kills),
            "kill_to_healthy_s": {"median": med(healthy), "max": max(healthy, default=None), "min": min(healthy, default=None)},
            "kill_to_ingesting_s": {"median": med(ingesting), "max": max(ingesting, default=None)},
            "operator_jobs": {f"{a} {b}": n for (a, b), n in sorted(self.jobs.items())}, "operator_job_failures": len(self.job_failures),
            "retention_passes_logged": log.count('"retention deleted segments"'), "compactions_logged": log.count('"compacted segments"'),
            "errors_logged": log.count('"level":"error"'), "critical_logged": log.count('"level":"critical"'),
            "restart_rc": restart_rc, "restart_same": restart_same, "rebuild_same": rebuild_same, "verify_rc": v.returncode,
            "retained_readings": len(retained), "retained_duplicate_keys": len(retained) - len(set(retained)),
            "rss_windows": rss_windows(self.samples, 600, self.seconds), "rss_kib": stats_of([s["rss_kib"] for s in self.samples if s["rss_kib"]]),
            "data_dir_bytes": stats_of([s["data_dir_bytes"] for s in self.samples]),
            "log_bytes": stats_of([s["log_bytes"] for s in self.samples]),
        }
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print_summary(summary)
        problems = []
        if lost or twice or wrong:
            problems.append(f"{lost} lost, {twice} counted twice, {wrong} buckets with other figures wrong")
        if summary["recoveries"] != summary["kills"]:
            problems.append("a kill without a recovery")
        if any(summary["refused_seen_by_producers"].values()) or summary["refused_other"]:
            problems.append(f"readings refused: {summary['refused_seen_by_producers']} {summary['refused_other']}")
        if self.job_failures:
            problems.append(f"operator jobs failed: {self.job_failures[:3]}")
        if restart_rc != 0 or not restart_same:
            problems.append(f"the clean restart (exit {restart_rc}) changed the aggregates: {not restart_same}")
        if not rebuild_same:
            problems.append(f"the rebuild differs (exit {r.returncode}: {r.stderr[-500:]})")
        if v.returncode != 0:
            problems.append(f"verify: exit {v.returncode}: {(v.stdout + v.stderr)[-2000:]}")
        if summary["retained_duplicate_keys"]:
            problems.append("a key twice in the retained log")
        assert not problems, "; ".join(problems)
        return summary

    def write_csv(self):
        if self.samples:
            with open(os.path.join(self.run_dir, "samples.csv"), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(self.samples[0]))
                w.writeheader()
                w.writerows(self.samples)
        with open(os.path.join(self.run_dir, "kills.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["kill", "t", "pid", "aimed_at", "rss_kib_before", "healthy_s", "ingesting_s", "recovered", "start_failures"])
            w.writeheader()
            w.writerows(self.kills)


class Broker:
    """mosquitto on a free loopback port, as tests/e2e/test_mqtt.py runs it (sessions kept whole:
    `max_queued_messages 0`), logging every PUBLISH to mosquitto.log in the run folder: the ones
    it sends sensorlogd again after a kill carry the DUP flag (`d1`)."""

    def __init__(self, run_dir):
        self.port = free_port()
        self.log = os.path.join(run_dir, "mosquitto.log")
        conf = os.path.join(run_dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                    f"user root\nlog_dest file {self.log}\nlog_type all\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=open(self.log + ".stderr", "w"))
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, f"mosquitto did not start: {open(self.log + '.stderr').read()}"
                time.sleep(0.05)

    def redeliveries(self, client_id):
        """PUBLISHes the broker sent `client_id` again (DUP set), and all it sent."""
        dup = sent = 0
        try:
            with open(self.log, errors="replace") as f:
                for ln in f:
                    if f"Sending PUBLISH to {client_id} " in ln:
                        sent += 1
                        dup += "(d1," in ln
        except OSError:
            pass
        return dup, sent

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except (OSError, TypeError):
        return None
    return None


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def med(xs):
    return round(statistics.median(xs), 3) if xs else None


def stats_of(xs):
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else {}


def rss_windows(samples, width, seconds):
    """RSS min/median/max per `width` seconds (the sample taken after the producers stopped goes
    into the last window)."""
    out = []
    for s in samples:
        if s["rss_kib"] is None:
            continue
        w = int(min(s["t_s"], max(seconds - 1, 0)) // width)
        while len(out) <= w:
            out.append([])
        out[w].append(s["rss_kib"])
    return [{"from_min": i * width // 60, "to_min": (i + 1) * width // 60, "samples": len(xs), **stats_of(xs)}
            for i, xs in enumerate(out) if xs]


def retained_keys(data_dir):
    keys = []
    for p in range(PARTITIONS):
        r = subprocess.run([os.path.join(BIN, "sensorlog"), "dump", "--data-dir", data_dir, "--partition", str(p), "--json"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        keys += [(d["sensor_id"], d["timestamp_ns"]) for d in map(json.loads, filter(str.strip, r.stdout.splitlines()))]
    return keys


def print_summary(s):
    say = lambda msg: print(f"soak: {msg}", flush=True)
    say(f"seed {s['seed']}, {s['seconds']} s, run folder {s['run_dir']}")
    say(f"readings sent per door: {s['sent']} (total {s['sent_total']}); resent by the producers: {s['resent_by_producers']}")
    say(f"MQTT: {s['mqtt_messages_published']} messages published, the broker delivered {s['mqtt_deliveries']} "
        f"({s['mqtt_redeliveries']} of them again after a kill, DUP set)")
    say(f"stored (aggregates): {s['stored']} in {s['buckets']} (sensor, hour) buckets; lost {s['lost']}, counted twice "
        f"{s['counted_twice']}, buckets with wrong sum/min/max {s['wrong_buckets']}")
    say(f"duplicates the server dropped (per transport, counted before each kill: at least): {s['duplicates_judged']}; "
        f"answered as duplicates to the HTTP producers: {s['duplicates_answered']}; other refusals: {s['refused_other'] or 'none'}")
    say(f"kill -9s {s['kills']} (aimed just after a door sent: {s['kills_aimed']}), recoveries {s['recoveries']}, start retries {s['start_retries']}; kill to healthy: median "
        f"{s['kill_to_healthy_s']['median']} s, max {s['kill_to_healthy_s']['max']} s; kill to ingesting: median "
        f"{s['kill_to_ingesting_s']['median']} s, max {s['kill_to_ingesting_s']['max']} s")
    say(f"operator jobs: {s['operator_jobs']}; retention passes logged {s['retention_passes_logged']}, compactions logged "
        f"{s['compactions_logged']}, errors logged {s['errors_logged']}")
    for w in s["rss_windows"]:
        say(f"RSS {w['from_min']:>3}-{w['to_min']:<3} min: min {w['min'] / 1024:.1f} MiB, median {w['median'] / 1024:.1f} MiB, "
            f"max {w['max'] / 1024:.1f} MiB ({w['samples']} samples)")
    dd, lb = s["data_dir_bytes"], s["log_bytes"]
    if dd:
        say(f"data dir {dd['min'] / 2**20:.2f}-{dd['max'] / 2**20:.2f} MiB (log {lb['min'] / 2**20:.2f}-{lb['max'] / 2**20:.2f} MiB)")
    say(f"clean restart same: {s['restart_same']}, rebuild same: {s['rebuild_same']}, verify exit {s['verify_rc']}, "
        f"retained log {s['retained_readings']} readings, {s['retained_duplicate_keys']} keys twice")


def soak(data_dir, seconds, seed=None, kill_every=(1, 4), operator_every=(1, 5), run_dir=None, sample_every=10):
    seed = seed if seed is not None else int(os.environ.get("SENSORLOG_TEST_SEED", random.randrange(1 << 30)))
    return Soak(data_dir, seconds, seed, kill_every, operator_every, run_dir or data_dir + "-run", sample_every).run()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("minutes_pos", nargs="?", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--minutes", type=float, default=None, help="how long the producers run (default 1)")
    ap.add_argument("--kill-every", default="1-4", help="seconds between kill -9s, a range drawn from (default 1-4)")
    ap.add_argument("--operator-every", default=None, help="seconds between operator jobs (default 1-5, or 10-40 past 10 minutes)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--run-dir", default=None, help="where the data, logs and CSVs go (default: a new folder under /tmp)")
    a = ap.parse_args()
    minutes = a.minutes if a.minutes is not None else (a.minutes_pos if a.minutes_pos is not None else 1)
    seed = a.seed if a.seed is not None else int(os.environ.get("SENSORLOG_TEST_SEED", random.randrange(1 << 30)))
    run_dir = a.run_dir or tempfile.mkdtemp(prefix=f"sensorlog-soak-{time.strftime('%Y%m%d-%H%M%S')}-{seed}-")
    op = a.operator_every or ("1-5" if minutes <= 10 else "10-40")
    soak(os.path.join(run_dir, "data"), minutes * 60, seed, span(a.kill_every), span(op), run_dir)
