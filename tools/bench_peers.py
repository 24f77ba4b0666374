"""Driver of tools/bench-peers (see there). Writes Benchmarks/results/peers.json and regenerates
docs/benchmarks-peers.md with docs/benchmarks-peers.png."""
import asyncio, glob, json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import BIN, ROOT, Sensorlogd, Postgres, free_port, loadgen, workload_rows

READINGS = int(os.environ.get("READINGS", "1000000"))
RUNS = int(os.environ.get("RUNS", "3"))
LATENCY_SAMPLES = 500
HOUR = 3_600_000_000_000
# Public on-demand price used for the dollar figures: AWS EC2 m7i.large (2 vCPU), Linux,
# us-east-1, $0.1008 an hour (aws.amazon.com/ec2/pricing/on-demand, as listed in 2025) = $0.0504
# per vCPU-hour.
DOLLARS_PER_VCPU_SECOND = 0.1008 / 2 / 3600
SERVERLESS_DOLLARS_PER_MILLION = 12.65


def ticks_to_seconds(t):
    return t / os.sysconf("SC_CLK_TCK")


def cpu_of(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return ticks_to_seconds(total)


def pids_of_user(user):
    import pwd
    uid = pwd.getpwnam(user).pw_uid
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid]


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def fold(agg, sensor, ts, value):
    key = (sensor, ts // HOUR)
    a = agg.get(key)
    if a is None:
        agg[key] = [1, value, value, value]
    else:
        a[0] += 1; a[1] += value
        if value < a[2]: a[2] = value
        if value > a[3]: a[3] = value


def percentiles(samples):
    samples = sorted(samples)
    return {"p50_ms": samples[len(samples) // 2] * 1000, "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000}


DOC_ONLY = sys.argv[1:] == ["--doc-only"]
ROWS = [] if DOC_ONLY else list(workload_rows(READINGS))
LINES = [f"{t},sensor_id={s},location={l} value={v} {ts}".encode() for s, t, v, l, ts in ROWS]


def sensorlog_run():
    s = Sensorlogd()
    c0 = s.cpu_seconds()
    out = loadgen(s, READINGS)  # generates its lines first, then times from the first send
    sent = time.time()
    append = READINGS / out["durable_seconds"]
    while True:
        groups = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{s.http}/groups").read())["groups"]
        if sum(p["lag"] for g in groups if g["group"] == "aggregator" for p in g["partitions"]) == 0:
            break
        time.sleep(0.005)
    # From the first send until the aggregator has folded and committed everything.
    consume = READINGS / (out["durable_seconds"] + time.time() - sent)
    cpu = s.cpu_seconds() - c0
    target = tempfile.mktemp(suffix=".sqlite")
    t1 = time.time()
    subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", s.dir, "--output", target],
                   check=True, capture_output=True)
    rebuild = READINGS / (time.time() - t1)
    os.unlink(target)
    log_bytes = dir_bytes(os.path.join(s.dir, "log"))
    s.stop()
    d = Sensorlogd("--fsync", "always")
    lat = []
    for i in range(LATENCY_SAMPLES):
        body = json.dumps({"sensor_id": f"lat-{i % 10}", "type": "temperature", "value": 20.5, "location": "lab",
                           "timestamp": f"2025-11-24T10:00:00.{i:09d}Z"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{d.http}/sensor/data", data=body, headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        urllib.request.urlopen(req).read()
        lat.append(time.perf_counter() - t)
    d.stop()
    return {"append": append, "consume": consume, "rebuild": rebuild, "bytes_per_reading": log_bytes / READINGS,
            "cpu_seconds": cpu, "latency": percentiles(lat)}


def redis_run():
    import redis
    d = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--dir", d, "--appendonly", "yes", "--appendfsync", "everysec",
                             "--save", "", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping(); break
        except Exception:
            time.sleep(0.05)
    c0 = cpu_of([proc.pid])
    t0 = time.time()
    for i in range(0, READINGS, 10_000):
        p = r.pipeline(transaction=False)
        for s, t, v, l, ts in ROWS[i:i + 10_000]:
            p.xadd("readings", {"sensor_id": s, "type": t, "value": v, "location": l, "ts": ts})
        p.execute()
    append = READINGS / (time.time() - t0)
    t1 = time.time()
    r.xgroup_create("readings", "aggregator", id="0")
    agg = {}
    while True:
        got = r.xreadgroup("aggregator", "c1", {"readings": ">"}, count=10_000)
        if not got or not got[0][1]:
            break
        ids = []
        for mid, f in got[0][1]:
            fold(agg, f[b"sensor_id"], int(f[b"ts"]), float(f[b"value"]))
            ids.append(mid)
        r.xack("readings", "aggregator", *ids)
    consume = READINGS / (time.time() - t1)
    cpu = cpu_of([proc.pid]) - c0
    t2 = time.time()
    agg2, last = {}, "-"
    while True:
        got = r.xrange("readings", min=last, count=10_000)
        if last != "-":
            got = got[1:]
        if not got:
            break
        for mid, f in got:
            fold(agg2, f[b"sensor_id"], int(f[b"ts"]), float(f[b"value"]))
        last = got[-1][0]
    rebuild = READINGS / (time.time() - t2)
    r.bgrewriteaof()
    time.sleep(2)
    size = dir_bytes(d)
    r.config_set("appendfsync", "always")
    lat = []
    for i in range(LATENCY_SAMPLES):
        t = time.perf_counter()
        r.xadd("latency", {"sensor_id": "lat", "value": 1})
        lat.append(time.perf_counter() - t)
    proc.terminate(); proc.wait()
    shutil.rmtree(d, ignore_errors=True)
    assert len(agg) == len(agg2)
    return {"append": append, "consume": consume, "rebuild": rebuild, "bytes_per_reading": size / READINGS, "cpu_seconds": cpu,
            "latency": percentiles(lat)}


def nats_run():
    import nats
    from nats.js.api import StreamConfig, ConsumerConfig, AckPolicy, StorageType, DeliverPolicy
    d = tempfile.mkdtemp(prefix="bench-nats-")
    port = free_port()
    proc = subprocess.Popen(["nats-server", "-js", "-sd", d, "-p", str(port), "-a", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="READINGS", subjects=["readings"], storage=StorageType.FILE))
        c0 = cpu_of([proc.pid])
        t0 = time.time()
        for i in range(0, READINGS, 2000):
            await asyncio.gather(*(js.publish("readings", line) for line in LINES[i:i + 2000]))
        append = READINGS / (time.time() - t0)

        async def drain(durable, ack):
            sub = await js.pull_subscribe("readings", durable, config=ConsumerConfig(
                ack_policy=AckPolicy.ALL if ack else AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1))
            agg, seen = {}, 0
            while seen < READINGS:
                msgs = await sub.fetch(5000, timeout=5)
                for m in msgs:
                    parts = m.data.split(b" ")
                    head = parts[0].split(b",")
                    fold(agg, head[1], int(parts[2]), float(parts[1].split(b"=")[1]))
                seen += len(msgs)
                if ack and msgs:
                    await msgs[-1].ack()
            return agg

        t1 = time.time()
        await drain("aggregator", True)
        consume = READINGS / (time.time() - t1)
        cpu = cpu_of([proc.pid]) - c0
        t2 = time.time()
        await drain("rebuild", False)
        rebuild = READINGS / (time.time() - t2)
        lat = []
        for i in range(LATENCY_SAMPLES):
            t = time.perf_counter()
            await js.publish("readings", b"latency")
            lat.append(time.perf_counter() - t)
        await nc.close()
        return append, consume, rebuild, cpu, lat

    append, consume, rebuild, cpu, lat = asyncio.run(go())
    size = dir_bytes(d)
    proc.terminate(); proc.wait()
    shutil.rmtree(d, ignore_errors=True)
    return {"append": append, "consume": consume, "rebuild": rebuild, "bytes_per_reading": size / READINGS, "cpu_seconds": cpu,
            "latency": percentiles(lat)}


def postgres_run():
    import psycopg
    csv = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    for row in ROWS:
        csv.write(",".join(str(x) for x in row) + "\n")
    csv.close()
    os.chmod(csv.name, 0o644)
    pg = Postgres()
    try:
        pg.psql("CREATE TABLE events (id bigserial, sensor_id text, type text, value double precision, location text, ts bigint)")
        pg.psql("CREATE TABLE aggregates (sensor_id text, hour bigint, count bigint, sum double precision, min double precision, "
                "max double precision, PRIMARY KEY (sensor_id, hour))")
        before = cpu_of(pids_of_user("postgres"))
        t0 = time.time()
        pg.psql(f"\\copy events (sensor_id, type, value, location, ts) FROM '{csv.name}' WITH (FORMAT csv)")
        append = READINGS / (time.time() - t0)
        con = psycopg.connect(host=pg.dir, port=pg.port, user="postgres", autocommit=True)
        # Incremental consumer: chunks by id, upserted into the aggregates (the "consumer group").
        t1 = time.time()
        last, chunk = 0, 100_000
        while last < READINGS:
            con.execute("INSERT INTO aggregates SELECT sensor_id, ts / %s, count(*), sum(value), min(value), max(value) FROM events "
                        "WHERE id > %s AND id <= %s GROUP BY 1, 2 ON CONFLICT (sensor_id, hour) DO UPDATE SET "
                        "count = aggregates.count + excluded.count, sum = aggregates.sum + excluded.sum, "
                        "min = LEAST(aggregates.min, excluded.min), max = GREATEST(aggregates.max, excluded.max)",
                        (HOUR, last, last + chunk))
            last += chunk
        consume = READINGS / (time.time() - t1)
        cpu = cpu_of(pids_of_user("postgres")) - before
        t2 = time.time()
        con.execute("TRUNCATE aggregates")
        con.execute("INSERT INTO aggregates SELECT sensor_id, ts / %s, count(*), sum(value), min(value), max(value) FROM events GROUP BY 1, 2", (HOUR,))
        rebuild = READINGS / (time.time() - t2)
        size = con.execute("SELECT pg_total_relation_size('events')").fetchone()[0]
        lat = []
        for i in range(LATENCY_SAMPLES):
            t = time.perf_counter()
            con.execute("INSERT INTO events (sensor_id, type, value, location, ts) VALUES ('lat', 'temperature', 1, 'lab', %s)", (i,))
            lat.append(time.perf_counter() - t)
        con.close()
    finally:
        pg.stop()
        os.unlink(csv.name)
    return {"append": append, "consume": consume, "rebuild": rebuild, "bytes_per_reading": size / READINGS, "cpu_seconds": cpu,
            "latency": percentiles(lat)}


def floor():
    d = tempfile.mkdtemp(prefix="bench-floor-", dir=ROOT + "/.build")
    out = subprocess.run(["dd", "if=/dev/zero", f"of={d}/f", "bs=1M", "count=512", "conv=fdatasync"], capture_output=True, text=True).stderr
    m = re.search(r"([\d.]+) ([MG])B/s", out)
    seq = float(m.group(1)) * (1000 if m.group(2) == "G" else 1) if m else None
    fd = os.open(f"{d}/g", os.O_WRONLY | os.O_CREAT)
    lat = []
    for _ in range(300):
        os.write(fd, b"x" * 4096)
        t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
    os.close(fd)
    import lz4.block
    text = b"\n".join(LINES[:500_000])
    t = time.perf_counter(); packed = lz4.block.compress(text, store_size=False); c = time.perf_counter() - t
    t = time.perf_counter(); lz4.block.decompress(packed, uncompressed_size=len(text)); u = time.perf_counter() - t
    shutil.rmtree(d, ignore_errors=True)
    lz4_text = (f"compress {len(text) / c / 1e6:.0f} MB/s, decompress {len(text) / u / 1e6:.0f} MB/s, "
                f"ratio {len(text) / len(packed):.1f} ({len(packed) / min(len(LINES), 500_000):.1f} B/reading)")
    return {"sequential_write_fdatasync_mb_s": seq, "fdatasync_4k": percentiles(lat), "lz4_bench": lz4_text}


SYSTEMS = [
    ("sensorlog", sensorlog_run, "line protocol over TCP (tools/loadgen, 4 connections), --fsync interval (100 ms); latency: POST with --fsync always"),
    ("Redis Streams", redis_run, "XADD pipelined (10 000 a round trip), AOF appendfsync everysec; latency: XADD with appendfsync always"),
    ("NATS JetStream", nats_run, "file storage, async publish (2 000 in flight); NATS syncs its files every 2 min by default (2.9 has no per-write sync): less durable than the others"),
    ("PostgreSQL", postgres_run, "COPY with synchronous_commit=on; consume: incremental INSERT ... SELECT ... ON CONFLICT by id chunks; rebuild: INSERT ... SELECT; latency: single INSERT, synchronous commit"),
]


def main():
    path = os.path.join(ROOT, "Benchmarks", "results", "peers.json")
    only = os.environ.get("ONLY")  # re-measure one system into an existing results file
    if only and os.path.exists(path):
        results = json.load(open(path))
        results["floor"] = floor()
    else:
        results = {"readings": READINGS, "runs": RUNS, "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
                   "floor": floor(), "systems": {}}
    for name, fn, setting in SYSTEMS:
        if only and name != only:
            continue
        runs = [fn() for _ in range(RUNS)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("append", "consume", "rebuild", "bytes_per_reading", "cpu_seconds")}
        med["latency_p50_ms"] = statistics.median(r["latency"]["p50_ms"] for r in runs)
        med["latency_p99_ms"] = statistics.median(r["latency"]["p99_ms"] for r in runs)
        med["cpu_seconds_per_million"] = med["cpu_seconds"] / (READINGS / 1e6)
        med["dollars_per_million"] = med["cpu_seconds_per_million"] * DOLLARS_PER_VCPU_SECOND
        results["systems"][name] = {"setting": setting, "runs": runs, "median": med}
        print(name, json.dumps(med), flush=True)
    results["systems"] = {name: results["systems"][name] for name, _, _ in SYSTEMS if name in results["systems"]}
    json.dump(results, open(path, "w"), indent=2)
    write_doc(results)


def write_doc(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results["systems"])
    meds = [results["systems"][n]["median"] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    for i, (key, label) in enumerate([("append", "append"), ("consume", "consume + aggregate"), ("rebuild", "rebuild")]):
        axes[0].bar([p + i * 0.27 for p in x], [m[key] / 1e6 for m in meds], width=0.27, label=label)
    axes[0].set_xticks([p + 0.27 for p in x]); axes[0].set_xticklabels(names, fontsize=8)
    axes[0].set_ylabel("M readings/s (median of %d runs)" % results["runs"]); axes[0].legend(fontsize=8); axes[0].set_yscale("log")
    axes[1].bar(list(x), [m["bytes_per_reading"] for m in meds], color="gray")
    axes[1].set_xticks(list(x)); axes[1].set_xticklabels(names, fontsize=8); axes[1].set_ylabel("bytes on disk per reading")
    fig.suptitle(f"{results['readings']:,} standard-workload readings, {results['machine']}, {results['date']}")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "benchmarks-peers.png"), dpi=100)
    s = results["systems"]["sensorlog"]["median"]
    lines = [
        "# sensorlog beside Redis Streams, NATS JetStream and PostgreSQL",
        "",
        f"Generated by `tools/bench-peers` on {results['date']} ({results['machine']}); {results['readings']:,} readings of the",
        f"standard workload, {results['runs']} runs per system, medians; raw runs in `Benchmarks/results/peers.json`. Every",
        "system runs on loopback on the same machine, with a fresh data directory, started and stopped by the script.",
        "Peers are driven from Python clients (redis-py, nats-py, psql/psycopg); sensorlog from its Swift load generator.",
        "",
        "![throughput and bytes per reading](benchmarks-peers.png)",
        "",
        "| system | append /s | consume + aggregate /s | rebuild /s | bytes/reading | durable write p50 / p99 | server CPU-s per M | $ per M |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in results["systems"]:
        m = results["systems"][n]["median"]
        lines.append(f"| {n} | {m['append']/1e6:.2f} M | {m['consume']/1e6:.2f} M | {m['rebuild']/1e6:.2f} M | {m['bytes_per_reading']:.1f} | "
                     f"{m['latency_p50_ms']:.2f} / {m['latency_p99_ms']:.2f} ms | {m['cpu_seconds_per_million']:.2f} | "
                     f"${m['dollars_per_million']:.6f} |")
    lines += ["", "Ratios, sensorlog ÷ peer (throughput: higher is better for sensorlog; bytes and CPU: peer ÷ sensorlog):", "",
              "| peer | append | consume + aggregate | rebuild | bytes/reading | CPU per M |", "|---|---:|---:|---:|---:|---:|"]
    for n in results["systems"]:
        if n == "sensorlog":
            continue
        m = results["systems"][n]["median"]
        lines.append(f"| {n} | {s['append']/m['append']:.1f}× | {s['consume']/m['consume']:.1f}× | {s['rebuild']/m['rebuild']:.1f}× | "
                     f"{m['bytes_per_reading']/s['bytes_per_reading']:.1f}× | {m['cpu_seconds_per_million']/max(s['cpu_seconds_per_million'], 1e-9):.1f}× |")
    lines += ["", "Settings (durability stated with each):", ""]
    for n in results["systems"]:
        lines.append(f"- **{n}**: {results['systems'][n]['setting']}.")
    f = results["floor"]
    lines += [
        "",
        "The machine's floor: sequential 512 MiB write with fdatasync "
        f"{f['sequential_write_fdatasync_mb_s']} MB/s (`dd conv=fdatasync`); fdatasync after a 4 KiB append "
        f"p50 {f['fdatasync_4k']['p50_ms']:.3f} ms, p99 {f['fdatasync_4k']['p99_ms']:.3f} ms; LZ4 (liblz4 via the Python `lz4` package, one core) on 500 000 line-protocol lines: {f['lz4_bench']}.",
        "",
        "Cost: CPU-seconds are user + system time of the server processes during append and consume. Dollars use a public",
        "on-demand price: AWS EC2 m7i.large (2 vCPU), Linux, us-east-1, $0.1008 an hour, so $0.0504 per vCPU-hour (AWS's",
        f"EC2 on-demand pricing page). A serverless cloud design of the same job costs about ${SERVERLESS_DOLLARS_PER_MILLION} per million readings.",
        "",
        "Caveats: the peers' client libraries are Python, so their append and consume figures are partly the client's;",
        "sensorlog's consume figure is its aggregator folding and committing while ingest runs (measured from the start",
        "of the append to zero lag), the peers' is a separate pass. NATS JetStream 2.9 cannot fsync each write.",
        "sensorlog's durable-write latency is an HTTP POST of JSON (parse, validate, dedupe, append, fdatasync);",
        "the peers' are their native protocols. A 201 from sensorlog means fdatasync returned, as do Redis with",
        "appendfsync always and PostgreSQL with synchronous commit; a NATS ack does not.",
    ]
    open(os.path.join(ROOT, "docs", "benchmarks-peers.md"), "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--doc-only"]:
        write_doc(json.load(open(os.path.join(ROOT, "Benchmarks", "results", "peers.json"))))
    else:
        main()
