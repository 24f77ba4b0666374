"""Driver of tools/bench-compaction (see there)."""
import json, os, re, shutil, statistics, subprocess, sys, tempfile, threading, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, settle_disk, wait_healthy, POST_SCRIPT

SERVER, LOADGEN, TOOL = sys.argv[1], sys.argv[2], sys.argv[3]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PREPARED = int(os.environ.get("PREPARED", "10000000"))
READINGS = os.environ.get("READINGS", "4000000")
TYPES = ["temperature", "humidity", "pressure"]
BASE = (int(time.time()) - 86_400) * 10**9


class Server:
    def __init__(self, data, *flags):
        self.tcp, self.http = free_port(), free_port()
        self.p = subprocess.Popen([SERVER, "--data-dir", data, "--tcp-port", str(self.tcp), "--http-port", str(self.http),
                                   "--log-level", "warning", "--segment-bytes", str(1 << 20), *flags],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.http)

    def metric(self, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5).read().decode()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def peak_rss_mib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0

    def stop(self):
        self.p.terminate(); self.p.wait()


def prepare():
    """PREPARED readings of 10 000 sensors written at the real-time pattern: 1000-line writes (about
    125 readings a partition batch), compaction off."""
    d = tempfile.mkdtemp(prefix="bench-compaction-")
    s = Server(d, "--compaction", "off")
    per = PREPARED // 8

    def producer(k):
        import socket
        c = socket.create_connection(("127.0.0.1", s.tcp))
        # Chunks dealt round-robin: the eight producers advance through time together, as
        # devices reporting every second do.
        for start in range(k * 1000, per * 8, 8000):
            # The sensors, types and locations of sensorlog-loadgen's standard workload, an hour
            # earlier than it starts, so that its readings are new ones of the same sensors.
            lines = "".join(f"{TYPES[i % 10000 % 3]},sensor_id=sensor-{i % 10000:05d},location=site-{i % 10000 % 50:02d} "
                            f"value={20 + (i * 7919 % 10001) / 1000} {BASE + (i // 10000) * 10**9 + (i % 10000) * 1000}\n"
                            for i in range(start, min(start + 1000, per * 8)))
            c.sendall(lines.encode())
            time.sleep(0.02)
        c.close()
    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    while s.metric("sensorlog_readings_ingested_total") < per * 8:
        time.sleep(0.1)
    s.stop()
    return d, per * 8


def stats(d):
    return json.loads(subprocess.run([TOOL, "stats", "--data-dir", d, "--json"], capture_output=True, text=True, check=True).stdout)


def run(prepared, compaction, post):
    settle_disk()
    d = prepared + f"-{compaction}"
    shutil.copytree(prepared, d)
    flags = ["--compaction", compaction, "--maintenance-interval-seconds", "1"] + (["--fsync", "always"] if post else [])
    s = Server(d, *flags)
    if compaction == "on":
        while s.metric("sensorlog_compaction_bytes_read_total") == 0 and s.metric("sensorlog_maintenance_jobs_total") < 1:
            time.sleep(0.02)
    read_before = s.metric("sensorlog_compaction_bytes_read_total")
    if post:
        lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False); lua.write(POST_SCRIPT); lua.close()
        out = subprocess.run(["wrk", "-t2", "-c16", "-d4s", "--latency", "-s", lua.name, f"http://127.0.0.1:{s.http}"],
                             capture_output=True, text=True).stdout
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        value = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    else:
        out = subprocess.run([LOADGEN, "--tcp-port", str(s.tcp), "--http-port", str(s.http), "--readings", READINGS,
                              "--sensors", "10000", "--connections", "4", "--json"], capture_output=True, text=True, check=True).stdout
        value = json.loads(out)["readings_per_second"]
    during = s.metric("sensorlog_compaction_bytes_read_total") - read_before
    rss = s.peak_rss_mib()
    s.stop()
    shutil.rmtree(d)
    return value, during, rss


def finish(prepared, readings):
    """Compaction of the whole prepared log, unpaced: its throughput, bytes per reading before and after."""
    settle_disk()
    d = prepared + "-full"
    shutil.copytree(prepared, d)
    before = stats(d)["bytes"]
    s = Server(d, "--compaction", "on", "--maintenance-interval-seconds", "1", "--compaction-bytes-per-second", "100G")
    if os.environ.get("KEEP"):
        print(f"kept: {d}", flush=True)
    started = time.time()
    while s.metric("sensorlog_maintenance_jobs_total") < 1:   # the first pass, over every partition
        time.sleep(0.05)
    seconds = time.time() - started - 1                       # it starts a second after start-up
    read = s.metric("sensorlog_compaction_bytes_read_total")
    rss = s.peak_rss_mib()
    s.stop()
    after = stats(d)["bytes"]
    if not os.environ.get("KEEP"):
        shutil.rmtree(d)
    return before / readings, after / readings, read / max(seconds, 0.001) / 2**20, rss


def retention(prepared, readings):
    """One retention pass deleting every closed segment of the prepared log (`--retention-bytes 1`,
    compaction off): its duration and bytes from the server's log line, and the peak RSS against
    the same server without retention."""
    settle_disk()
    rss = {}
    for mode in ("off", "on"):
        d = prepared + f"-retention-{mode}"
        shutil.copytree(prepared, d)
        flags = ["--compaction", "off", "--maintenance-interval-seconds", "1"]
        s = Server(d, *(flags + (["--retention-bytes", "1"] if mode == "on" else [])))
        deadline = time.time() + 60
        while mode == "on" and s.metric("sensorlog_retention_segments_removed_total") == 0 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.5 if mode == "off" else 0)
        rss[mode] = s.peak_rss_mib()
        removed = (s.metric("sensorlog_retention_segments_removed_total"), s.metric("sensorlog_retention_bytes_removed_total"))
        seconds = s.metric("sensorlog_maintenance_job_duration_seconds_sum")
        s.stop()
        shutil.rmtree(d)
    return removed, seconds, rss


prepared, readings = prepare()
print(f"prepared {readings} readings at the real-time pattern: {stats(prepared)['bytes'] / readings:.2f} B/reading", flush=True)
phases = (("line protocol over TCP, readings/s", False), ("POST under always, p99 ms", True))
for label, post in (phases if not os.environ.get("ONLY") else ()):
    res = {"off": [], "on": []}
    for r in range(ROUNDS):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            value, during, rss = run(prepared, mode, post)
            res[mode].append(value)
            print(f"{label} round {r} compaction {mode}: {value:,.2f} (compaction read {during / 2**20:.1f} MiB meanwhile, peak RSS {rss:.0f} MiB)", flush=True)
    ratio = statistics.median(res["on"]) / statistics.median(res["off"])
    print(f"{label}: median off {statistics.median(res['off']):,.2f}, on {statistics.median(res['on']):,.2f}, on/off {ratio:.2f}", flush=True)
if os.environ.get("ONLY") == "retention":
    (segments, deleted), seconds, rss = retention(prepared, readings)
    print(f"retention pass: {segments:.0f} segments, {deleted / 2**20:.1f} MiB deleted in {seconds * 1000:.1f} ms "
          f"({deleted / 2**20 / max(seconds, 1e-6):.0f} MiB/s); server peak RSS {rss['on']:.0f} MiB with it, {rss['off']:.0f} MiB without")
    shutil.rmtree(prepared)
    sys.exit(0)
b, a, mibs, rss = finish(prepared, readings)
print(f"whole log compacted unpaced: {b:.2f} -> {a:.2f} B/reading (indexes included), {mibs:.0f} MiB/s read, server peak RSS {rss:.0f} MiB")
shutil.rmtree(prepared)
