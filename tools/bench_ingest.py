"""Driver of tools/bench-ingest (see there). Prints a markdown table; writes JSON."""
import glob, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "release")
RUNS = int(os.environ.get("RUNS", "3"))
# 10 M readings: about 2 s of sensorlog flat out, long enough to be a sustained rate rather than
# a burst into socket buffers (1 M lasted 0.25 s and measured start-up as much as steady state).
READINGS = int(os.environ.get("READINGS", "10000000"))


# wrk script: one reading per request, 1000 sensors per wrk thread, ISO timestamps that never repeat.
POST_SCRIPT = """
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args) thread_id = id end
function request()
  counter = counter + 1
  local body = string.format('{"sensor_id":"wrk-%d-%d","type":"temperature","value":21.5,"location":"lab","timestamp":"2025-11-24T10:00:00.%09dZ"}',
                             thread_id, counter % 1000, counter)
  return wrk.format("POST", "/sensor/data", {["Content-Type"] = "application/json"}, body)
end
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def settle_disk(path=tempfile.gettempdir(), quiet_seconds=2.0, limit_seconds=120.0):
    """Waits until the disk under `path` has had no I/O in flight and no writes or discards for
    `quiet_seconds`. Deleting the previous phase's gigabytes makes ext4 (mounted with `discard`)
    trim them in the background for a while; fsync latency measured meanwhile is that cleanup's."""
    os.sync()
    st = os.stat(path)
    stat = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat"
    if not os.path.exists(stat):
        return
    def sample():
        f = open(stat).read().split()
        # writes completed, in flight, discards completed (when the kernel reports them)
        return (f[4], f[8], f[11] if len(f) > 11 else "0")
    start = time.time()
    last, quiet_since = sample(), time.time()
    while time.time() - start < limit_seconds:
        time.sleep(0.25)
        now = sample()
        if now != last or now[1] != "0":
            last, quiet_since = now, time.time()
        elif time.time() - quiet_since >= quiet_seconds:
            return


def wait_healthy(http, seconds=30):
    """Waits until the sensorlogd on HTTP port `http` answers /health; exits the run if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("sensorlogd did not start")


class Sensorlogd:
    def __init__(self, *extra, binary=None):
        self.dir = tempfile.mkdtemp(prefix="bench-sensorlog-")
        self.tcp, self.http = free_port(), free_port()
        self.proc = subprocess.Popen([binary or os.path.join(BIN, "sensorlogd"), "--data-dir", self.dir, "--tcp-port", str(self.tcp),
                                      "--http-port", str(self.http), "--log-level", "warning", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.http)

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def cpu_seconds(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def loadgen(server, readings, sensors=10_000, connections=4, base=1_763_978_400, rate=0):
    out = subprocess.run([os.path.join(BIN, "sensorlog-loadgen"), "--tcp-port", str(server.tcp), "--http-port", str(server.http),
                          "--readings", str(readings), "--sensors", str(sensors), "--connections", str(connections),
                          "--base-seconds", str(base), "--rate", str(rate), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def workload_rows(n, sensors=10_000, base=1_763_978_400):
    """The loadgen's readings, for PostgreSQL (same generator, same values)."""
    types, bases = ["temperature", "humidity", "pressure"], [20_000, 50_000, 1_013_000]
    seed = 7
    for i in range(n):
        s, k = i % sensors, i // sensors
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        milli = bases[s % 3] + (seed >> 33) % 10_001 - 5000
        yield f"sensor-{s:05d}", types[s % 3], f"{milli // 1000}.{milli % 1000:03d}", f"site-{s % 50:02d}", \
            base * 10**9 + k * 10**9 + s * 1000


class Postgres:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-pg-")
        self.port = free_port()
        shutil.chown(self.dir, "postgres")
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.bin = bindir
        self.version = os.path.basename(os.path.dirname(bindir))
        self.as_pg([f"{bindir}/initdb", "-D", self.dir + "/data", "-A", "trust", "-U", "postgres"])
        self.as_pg([f"{bindir}/pg_ctl", "-D", self.dir + "/data", "-l", self.dir + "/log", "-w", "start",
                    "-o", f"-p {self.port} -k {self.dir} -c synchronous_commit=on -c fsync=on -c full_page_writes=on "
                    # Room for a 10 M-row COPY without a checkpoint in the middle: PostgreSQL's best case.
                    f"-c max_wal_size=8GB -c checkpoint_timeout=1h"])

    def as_pg(self, cmd, **kw):
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)

    def psql(self, sql):
        return self.as_pg(["psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])

    def stop(self):
        self.as_pg([f"{self.bin}/pg_ctl", "-D", self.dir + "/data", "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def median(xs):
    return statistics.median(xs)


def postgres_aggregate(pg):
    """PostgreSQL's equivalent of a rebuild: INSERT ... SELECT ... GROUP BY (sensor, hour) over the
    `events` table into a fresh `aggregates` table. Returns the seconds it took."""
    pg.psql("DROP TABLE IF EXISTS aggregates; CREATE TABLE aggregates (sensor_id text, hour_start bigint, sensor_type text, "
            "location text, count bigint, sum double precision, min double precision, max double precision, avg double precision, "
            "first_reading bigint, last_reading bigint, PRIMARY KEY (sensor_id, hour_start))")
    t0 = time.time()
    pg.psql("INSERT INTO aggregates SELECT sensor_id, ts / 3600000000000 * 3600000000000, max(type), max(location), count(*), "
            "sum(value), min(value), max(value), avg(value), min(ts), max(ts) FROM events GROUP BY 1, 2")
    return time.time() - t0


def wait_aggregated(server):
    """Waits until the aggregator's committed offsets reach the end of every partition."""
    while True:
        groups = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http}/groups").read())["groups"]
        if sum(p["lag"] for g in groups if g["group"] == "aggregator" for p in g["partitions"]) == 0:
            return
        time.sleep(0.005)


def write_results(name, results):
    """Keeps a bench's figures in Benchmarks/results/<name>.json and prints them."""
    os.makedirs("Benchmarks/results", exist_ok=True)
    with open(f"Benchmarks/results/{name}.json", "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


def main():
    results = {"machine": f"{os.cpu_count()} cores", "readings": READINGS, "runs": RUNS}

    # 1. sensorlog line protocol.
    tcp = []
    for r in range(RUNS):
        s = Sensorlogd()
        c0 = s.cpu_seconds()
        out = loadgen(s, READINGS)
        tcp.append({"readings_per_second": out["readings_per_second"], "server_cpu_seconds": s.cpu_seconds() - c0})
        s.stop()
    results["sensorlog_tcp"] = tcp
    tcp_rate = median([x["readings_per_second"] for x in tcp])

    # 2. PostgreSQL COPY, same readings, as CSV from a file.
    csv = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    for row in workload_rows(READINGS):
        csv.write(",".join(str(x) for x in row) + "\n")
    csv.close()
    os.chmod(csv.name, 0o644)
    pg = Postgres()
    copy = {"plain": [], "primary_key": []}
    try:
        for variant in copy:
            for r in range(RUNS):
                key = ", PRIMARY KEY (sensor_id, ts)" if variant == "primary_key" else ""
                pg.psql(f"DROP TABLE IF EXISTS events; CREATE TABLE events (sensor_id text, type text, value double precision, "
                        f"location text, ts bigint{key})")
                t0 = time.time()
                pg.psql(f"\\copy events FROM '{csv.name}' WITH (FORMAT csv)")
                copy[variant].append(READINGS / (time.time() - t0))
        results["postgres_version"] = pg.version
    finally:
        pg.stop()
        os.unlink(csv.name)
        # PostgreSQL leaves gigabytes of dirty pages behind; written back during the next phase they
        # would put the disk's latency, not sensorlog's, into the fsync-always figures.
        os.sync()
    results["postgres_copy"] = copy

    # 3. POST one reading per request, fsync always, 16 connections.
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(POST_SCRIPT)
    lua.close()
    http = []
    # Five runs: this figure swings most with the machine (fsync latency of a shared virtual disk).
    for r in range(max(RUNS, 5)):
        settle_disk()
        s = Sensorlogd("--fsync", "always")
        out = subprocess.run(["wrk", "-t2", "-c16", "-d10s", "--latency", "-s", lua.name, f"http://127.0.0.1:{s.http}/"],
                             capture_output=True, text=True, check=True).stdout
        ok = s_metric(s, 'sensorlog_http_requests_total{route="/sensor/data",status="201"}')
        s.stop()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p99 = parse_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
        p50 = parse_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
        http.append({"requests_per_second": rps, "p50_ms": p50, "p99_ms": p99, "created": ok})
    os.unlink(lua.name)
    results["http_post_fsync_always"] = http

    # 3b. A 1M readings/s burst of 5 s (standard workload): how long until the aggregator's lag is 0.
    def catch_up(server):
        t0 = time.time()
        while True:
            groups = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http}/groups").read())["groups"]
            if sum(p["lag"] for g in groups if g["group"] == "aggregator" for p in g["partitions"]) == 0:
                return time.time() - t0
            time.sleep(0.01)
    bursts = []
    for r in range(RUNS):
        s = Sensorlogd()
        loadgen(s, 5_000_000, rate=1_000_000)
        bursts.append(catch_up(s))
        s.stop()
    results["aggregator_catch_up_seconds_after_1m_per_second_burst"] = bursts

    # 4. 10M readings from 100 000 sensors: RSS, aggregator catch-up, rebuild, query latency.
    big = int(os.environ.get("BIG_READINGS", "10000000"))
    s = Sensorlogd()
    out = loadgen(s, big, sensors=100_000)
    sent_done = time.time()
    wait_aggregated(s)
    results["aggregator_catch_up_seconds_after_burst"] = time.time() - sent_done
    results["aggregator_readings_per_second_during_ingest"] = big / (out["durable_seconds"] + results["aggregator_catch_up_seconds_after_burst"])
    time.sleep(1)
    results["rss_after_10m_readings_100k_sensors_mib"] = s.rss_mib()
    results["rss_run_readings_per_second"] = out["readings_per_second"]
    rebuilds = []
    for r in range(RUNS):
        target = tempfile.mktemp(suffix=".sqlite")
        t0 = time.time()
        doc = json.loads(subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", s.dir, "--output", target, "--json"],
                                        capture_output=True, text=True, check=True).stdout)
        rebuilds.append(big / (time.time() - t0))
        os.unlink(target)
    results["rebuild_readings_per_second"] = rebuilds
    rnd = __import__("random").Random(3)
    def latency(path_of, n=200):
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            urllib.request.urlopen(f"http://127.0.0.1:{s.http}" + path_of()).read()
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        return {"p50_ms": lat[n // 2], "p99_ms": lat[int(n * 0.99) - 1]}
    base_iso = "2025-11-24T10:00:00Z"
    results["query_readings_sensor_hour"] = latency(
        lambda: f"/sensors/sensor-{rnd.randrange(100_000):05d}/readings?from={base_iso}&to=2025-11-24T11:00:00Z&limit=10000")
    results["query_aggregates_sensor_day"] = latency(
        lambda: f"/sensors/sensor-{rnd.randrange(100_000):05d}/aggregates?from=2025-11-24T00:00:00Z&to=2025-11-25T00:00:00Z")
    results["query_aggregates_page_1000"] = latency(lambda: "/aggregates?limit=1000", n=50)
    s.stop()

    # PostgreSQL aggregating the same 10M readings with INSERT ... SELECT (the rebuild's equivalent).
    csv = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    for row in workload_rows(big, sensors=100_000):
        csv.write(",".join(str(x) for x in row) + "\n")
    csv.close()
    os.chmod(csv.name, 0o644)
    pg = Postgres()
    pg_agg = []
    try:
        pg.psql("CREATE TABLE events (sensor_id text, type text, value double precision, location text, ts bigint)")
        pg.psql(f"\\copy events FROM '{csv.name}' WITH (FORMAT csv)")
        pg.psql("VACUUM ANALYZE events")
        for r in range(RUNS):
            pg_agg.append(big / postgres_aggregate(pg))
    finally:
        pg.stop()
        os.unlink(csv.name)
    results["postgres_insert_select_readings_per_second"] = pg_agg

    pg_plain = median(copy["plain"])
    pg_pk = median(copy["primary_key"])
    summary = {
        "sensorlog_tcp_readings_per_second": tcp_rate,
        "postgres_copy_readings_per_second": pg_plain,
        "postgres_copy_pk_readings_per_second": pg_pk,
        "ratio_vs_copy": tcp_rate / pg_plain,
        "ratio_vs_copy_pk": tcp_rate / pg_pk,
        "http_requests_per_second": median([x["requests_per_second"] for x in http]),
        "http_p99_ms": median([x["p99_ms"] for x in http]),
        "http_p50_ms": median([x["p50_ms"] for x in http]),
        "rss_mib": results["rss_after_10m_readings_100k_sensors_mib"],
        "sensorlog_server_cpu_seconds_per_million": median([x["server_cpu_seconds"] for x in tcp]) / (READINGS / 1e6),
        "aggregator_catch_up_seconds_after_burst": results["aggregator_catch_up_seconds_after_burst"],
        "aggregator_catch_up_seconds_after_1m_per_second_burst": median(bursts),
        "rebuild_readings_per_second": median(rebuilds),
        "postgres_insert_select_readings_per_second": median(pg_agg),
        "rebuild_ratio_vs_insert_select": median(rebuilds) / median(pg_agg),
        "query_readings_sensor_hour": results["query_readings_sensor_hour"],
        "query_aggregates_sensor_day": results["query_aggregates_sensor_day"],
        "query_aggregates_page_1000": results["query_aggregates_page_1000"],
    }
    results["summary"] = summary
    json.dump(results, open(os.path.join(ROOT, "Benchmarks", "results", "ingest.json"), "w"), indent=2)
    print(json.dumps(summary, indent=2))


def s_metric(server, series):
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics").read().decode()
    for line in body.splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


if __name__ == "__main__":
    main()
