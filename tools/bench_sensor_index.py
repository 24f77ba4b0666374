#!/usr/bin/env python3
"""The per-sensor index (issue 18): one sensor-hour from a log of READINGS readings from SENSORS
sensors, QUERIES random sensors, with the page cache warm and again after dropping it; the
index's bytes per reading; and, with BEFORE=<sensorlogd of another build>, the same queries
against it and the ingest rate of the two binaries in alternating rounds (the append cost). Results in
Benchmarks/results/sensor-index.json."""
import json, os, random, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ingest
from bench_ingest import BIN, Sensorlogd, loadgen, write_results

READINGS = int(os.environ.get("READINGS", "10000000"))
SENSORS = int(os.environ.get("SENSORS", "100000"))
QUERIES = int(os.environ.get("QUERIES", "200"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SEED = int(os.environ.get("SEED", "3"))
BASE = 1_763_978_400  # 2025-11-24T10:00:00Z


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def latencies(server, n, rnd, worst=False):
    out = []
    for _ in range(n):
        sensor = f"sensor-{rnd.randrange(SENSORS):05d}"
        url = (f"http://127.0.0.1:{server.http}/sensors/{sensor}/readings"
               f"?from=2025-11-24T10:00:00Z&to=2025-11-24T11:00:00Z&limit=10000")
        t0 = time.perf_counter()
        body = json.loads(urllib.request.urlopen(url).read())
        out.append((time.perf_counter() - t0) * 1000)
        assert body["readings"], f"{sensor} has no readings"
    if worst:
        return {"max_ms": round(max(out), 3)}
    return {"p50_ms": round(percentile(out, 0.5), 3), "p99_ms": round(percentile(out, 0.99), 3)}


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def sizes(directory):
    """Bytes of the closed segments' .log and .sensors files, and the readings they hold."""
    log = index = readings = 0
    for root, _, files in os.walk(directory):
        bases = sorted(int(n[:-4]) for n in files if n.endswith(".log") and len(n) == 24)
        for base, nxt in zip(bases, bases[1:]):
            stem = os.path.join(root, f"{base:020d}")
            if os.path.exists(stem + ".sensors"):
                log += os.path.getsize(stem + ".log")
                index += os.path.getsize(stem + ".sensors")
                readings += nxt - base
    return log, index, readings


def all_indexed(directory):
    """Whether every closed segment has its .sensors file."""
    for root, _, files in os.walk(directory):
        logs = sorted(n for n in files if n.endswith(".log") and len(n) == 24)
        if any(n[:-4] + ".sensors" not in files for n in logs[:-1]):
            return False
    return True


def queries(binary=None):
    s = Sensorlogd(binary=binary)
    try:
        loadgen(s, READINGS, sensors=SENSORS, base=BASE)
        rnd = random.Random(SEED)
        # The active segments' indexes are built by the first reader of each partition after the
        # burst: 64 queries reach every partition; their slowest is that build.
        first = latencies(s, 64, rnd, worst=True)
        warm = [latencies(s, QUERIES, rnd) for _ in range(ROUNDS)]
        cold = []
        for _ in range(ROUNDS):
            drop_caches()
            cold.append(latencies(s, QUERIES, rnd))
        return {"slowest_of_the_first_64_queries_ms": first["max_ms"], "warm": warm, "cold": cold, "rss_mib": s.rss_mib()}
    finally:
        s.stop()


def index_bytes():
    """The same readings in 1 MiB segments, most of them closed: their .sensors files are written
    by the maintenance at the restart (a larger segment repeats each sensor's key less often)."""
    s = Sensorlogd("--segment-bytes", str(1 << 20))
    try:
        loadgen(s, READINGS, sensors=SENSORS, base=BASE)
        directory = s.dir
        s.proc.terminate()
        s.proc.wait(60)
        s2 = subprocess.Popen([os.path.join(BIN, "sensorlogd"), "--data-dir", directory, "--tcp-port", str(s.tcp),
                               "--http-port", str(s.http), "--log-level", "warning", "--segment-bytes", str(1 << 20)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bench_ingest.wait_healthy(s.http)
        deadline = time.time() + 300
        while time.time() < deadline and not all_indexed(directory):
            time.sleep(0.2)
        log, index, readings = sizes(directory)
        s2.terminate()
        s2.wait(60)
        return {"closed_segment_readings": readings, "log_bytes_per_reading": round(log / readings, 3),
                "index_bytes_per_reading": round(index / readings, 3)}
    finally:
        s.stop()


def append_ab(before):
    """Ingest rate of `before` and this build's sensorlogd, alternating."""
    rates = {"before": [], "after": []}
    for _ in range(ROUNDS):
        for name, binary in (("before", before), ("after", os.path.join(BIN, "sensorlogd"))):
            s = Sensorlogd(binary=binary)
            try:
                rates[name].append(loadgen(s, READINGS, sensors=SENSORS, base=BASE)["readings_per_second"])
            finally:
                s.stop()
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return {"rates": rates, "median_before": med["before"], "median_after": med["after"], "ratio": round(med["after"] / med["before"], 3)}


def main():
    results = {"readings": READINGS, "sensors": SENSORS, "queries": QUERIES, "rounds": ROUNDS, "date": time.strftime("%Y-%m-%d %H:%M")}
    if os.environ.get("ONLY") in (None, "queries"):
        results["queries"] = queries()
        if os.environ.get("BEFORE"):
            results["queries_before"] = queries(os.environ["BEFORE"])
    if os.environ.get("ONLY") in (None, "bytes"):
        results["index"] = index_bytes()
    if os.environ.get("BEFORE"):
        results["append"] = append_ab(os.environ["BEFORE"])
    write_results("sensor-index", results)


if __name__ == "__main__":
    main()
