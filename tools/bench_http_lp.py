"""Driver of tools/bench-http-lp (see there)."""
import gzip, http.client, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, settle_disk, wait_healthy

SERVER, LOADGEN = sys.argv[1], sys.argv[2]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
READINGS = int(os.environ.get("READINGS", "2000000"))
LINES = int(os.environ.get("LINES", "5000"))
CLIENTS = 4
SENSORS = 10_000


def bodies(base_ns):
    """The standard workload as sensorlog-loadgen splits it over its connections (client c sends
    the sensors s with s % 4 == c, each sensor's readings in time order, as a producer sends its
    own), 5 000 lines a body, gzipped before the clock starts: a producer compresses in its own
    process. Returns each client's bodies."""
    types, bases = ["temperature", "humidity", "pressure"], [20_000, 50_000, 1_013_000]
    seed, lines, out = 7, [[] for _ in range(CLIENTS)], [[] for _ in range(CLIENTS)]
    for i in range(READINGS):
        s, k = i % SENSORS, i // SENSORS
        seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
        milli = bases[s % 3] + (seed >> 33) % 10001 - 5000
        c = s % CLIENTS
        lines[c].append(f"{types[s % 3]},sensor_id=sensor-{s:05d},location=site-{s % 50:02d} value={milli // 1000}.{milli % 1000:03d} "
                        f"{base_ns + k * 10**9 + s * 1000}\n")
        if len(lines[c]) == LINES:
            out[c].append(gzip.compress("".join(lines[c]).encode()))
            lines[c] = []
    for c in range(CLIENTS):
        if lines[c]:
            out[c].append(gzip.compress("".join(lines[c]).encode()))
    return out


def run_http(http_port, payloads):
    errors = []

    def client(mine):
        c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=120)
        for body in mine:
            c.request("POST", "/api/v2/write?org=bench&bucket=bench&precision=ns", body,
                      {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"})
            r = c.getresponse()
            r.read()
            if r.status != 204:
                errors.append(r.status)
        c.close()

    threads = [threading.Thread(target=client, args=(payloads[i],)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert not errors, errors[:5]
    return READINGS / elapsed


def serve():
    settle_disk()
    d = tempfile.mkdtemp(prefix="bench-http-lp-")
    tcp, http_port = free_port(), free_port()
    p = subprocess.Popen([SERVER, "--data-dir", d, "--tcp-port", str(tcp), "--http-port", str(http_port), "--fsync", "interval"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(http_port)
    return p, d, tcp, http_port


base = 1763978400 * 10**9
payloads = bodies(base)
sizes = [len(b) for mine in payloads for b in mine]
print(f"{len(sizes)} bodies of {LINES} lines, {sum(sizes) / len(sizes) / 1024:.0f} KiB gzipped on average", flush=True)
res = {"http": [], "tcp": []}
for r in range(ROUNDS):
    order = ["tcp", "http"] if r % 2 == 0 else ["http", "tcp"]
    for door in order:
        p, d, tcp, http_port = serve()
        if door == "http":
            rate = run_http(http_port, payloads)
        else:
            out = subprocess.run([LOADGEN, "--tcp-port", str(tcp), "--http-port", str(http_port), "--readings", str(READINGS),
                                  "--sensors", str(SENSORS), "--connections", str(CLIENTS), "--base-seconds", str(base // 10**9), "--json"],
                                 capture_output=True, text=True, check=True).stdout
            rate = json.loads(out)["readings_per_second"]
        res[door].append(rate)
        print(f"round {r} {door}: {rate / 1e6:.2f} M readings/s", flush=True)
        p.terminate()
        p.wait()
        shutil.rmtree(d)
mh, mt = statistics.median(res["http"]), statistics.median(res["tcp"])
print(f"median http_lp {mh / 1e6:.2f} M/s, tcp {mt / 1e6:.2f} M/s, http_lp/tcp {mh / mt:.2f}")
print("per-round ratios", [round(h / t, 2) for h, t in zip(res["http"], res["tcp"])])
