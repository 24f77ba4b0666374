"""Cluster benchmarks of docs/benchmarks.md ("Cluster mode"), the whole cluster on this machine:
three nats-servers (sync_interval: always) and three sensorlogd nodes (release build), beside one
sensorlogd on its own in the same run:
  1. takeover after kill -9 of an owner: from the kill until a write to one of its partitions
     (sent to another node) is acknowledged again; --takeovers times, the node restarted between
  2. POST /sensor/data of one reading, --fsync always: latency over one keep-alive connection,
     to each node in turn (two thirds forwarded), and to the single node
  3. line protocol over TCP to all three nodes at once (sensorlog-loadgen against each), and the
     same total to the single node; --fsync interval (the default) on the nodes
Results: Benchmarks/results/cluster.json."""
import argparse, http.client, json, os, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
os.environ.setdefault("SENSORLOG_BIN", os.path.join(ROOT, ".build", "release"))
from conftest import Server  # noqa: E402
from cluster import NATSCluster, node, status, wait_owned  # noqa: E402

BIN = os.environ["SENSORLOG_BIN"]


def post_one(conn, sensor, i):
    body = json.dumps({"sensor_id": sensor, "type": "temperature", "value": 20.5, "location": "lab",
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_780_000_000 + i)) + f".{i % 1000:03d}Z"})
    conn.request("POST", "/sensor/data", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def latencies(server, n, sensor_prefix):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=30)
    out = []
    for i in range(n):
        t = time.perf_counter()
        code, body = post_one(conn, f"{sensor_prefix}-{i % 100}", i)
        out.append((time.perf_counter() - t) * 1000)
        assert code == 201, (code, body)
    conn.close()
    return out


def summary(ms):
    ms = sorted(ms)
    return {"requests": len(ms), "p50_ms": round(ms[len(ms) // 2], 3), "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
            "max_ms": round(ms[-1], 3)}


def sensor_in(server, partition, salt):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=30)
    for i in range(1000):
        code, body = post_one(conn, f"probe-{salt}-{i}", i)
        if code == 201 and json.loads(body)["partition"] == partition:
            return f"probe-{salt}-{i}"
    raise AssertionError(f"no probe sensor in partition {partition}")


def takeover(nodes, rounds):
    out = []
    for k in range(rounds):
        wait_owned(nodes)
        view = status(nodes[0])
        p = k % len(view["partitions"])
        owner_name = next(x["owner"] for x in view["partitions"] if x["partition"] == p)
        owner = next(n for n in nodes if n.extra[n.extra.index("--node-id") + 1] == owner_name)
        other = next(n for n in nodes if n is not owner)
        sensor = sensor_in(other, p, k)
        owner.stop(signal.SIGKILL)
        killed = time.perf_counter()
        i = 10_000 + k * 1000
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", other.http, timeout=30)
            try:
                code, _ = post_one(conn, sensor, i)
            finally:
                conn.close()
            i += 1
            if code == 201:
                break
        out.append(round(time.perf_counter() - killed, 3))
        print(f"takeover {k + 1}: partition {p}, {out[-1]} s", file=sys.stderr, flush=True)
        owner.start()
        time.sleep(8)  # its partitions handed back to it (five renewals after they were taken), so the next round kills an owner
    return out


def loadgen(server, readings, base):
    r = subprocess.run([os.path.join(BIN, "sensorlog-loadgen"), "--tcp-port", str(server.tcp), "--http-port", str(server.http),
                        "--readings", str(readings), "--connections", "2", "--base-seconds", str(base), "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def tcp_throughput(servers, readings_each):
    procs = []
    # Every loadgen generates its lines first, then all send from the same moment: none generates
    # while another's clock runs.
    start_at = time.time() + 5
    for k, s in enumerate(servers):
        procs.append(subprocess.Popen([os.path.join(BIN, "sensorlog-loadgen"), "--tcp-port", str(s.tcp), "--http-port", str(s.http),
                                       "--readings", str(readings_each), "--connections", "2", "--sensors", "10000", "--sensor-prefix", f"n{k}-",
                                       "--base-seconds", str(1_700_000_000 + k * 10_000_000), "--start-at", str(start_at), "--json"],
                                      stdout=subprocess.PIPE, text=True))
    results = [json.loads(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # From the first line sent to the last reading durable, by each loadgen's clock (the lines
    # are generated before sending starts, which the wall clock here would count).
    seconds = max(r["durable_seconds"] for r in results)
    return {"readings": readings_each * len(servers), "seconds": round(seconds, 3),
            "readings_per_second": round(readings_each * len(servers) / seconds), "per_node": results}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=2000)
    ap.add_argument("--takeovers", type=int, default=3)
    ap.add_argument("--readings", type=int, default=1_000_000, help="line-protocol readings per node")
    ap.add_argument("--takeover-only", action="store_true", help="only the takeover rounds")
    args = ap.parse_args()
    results = {}
    work = tempfile.mkdtemp(prefix="sensorlog-bench-cluster-")
    # POST under --fsync always; line protocol under the default (interval): in a cluster the
    # stream is the synced copy (every server fsyncs each message), the local log a second one.
    for fsync in () if args.takeover_only else ("always", "interval"):
        single = Server(os.path.join(work, f"single-{fsync}"), extra=["--fsync", fsync]).start()
        try:
            if fsync == "always":
                results["single_post_always"] = summary(latencies(single, args.posts, "single"))
                print("single POST:", results["single_post_always"], file=sys.stderr, flush=True)
            else:
                results["single_tcp"] = tcp_throughput([single], args.readings * 3)
                print("single TCP:", results["single_tcp"]["readings_per_second"], file=sys.stderr, flush=True)
        finally:
            single.stop()
    nats = NATSCluster(root=os.path.join(work, "nats"))
    nodes = [node(nats, f"s{i}", data_dir=os.path.join(work, f"s{i}"), extra=["--fsync", "always"]) for i in range(3)]
    try:
        for n in nodes:
            n.start()
        wait_owned(nodes)
        if not args.takeover_only:
            ms = []
            for k, n in enumerate(nodes):
                ms += latencies(n, args.posts // 3, f"c{k}")
            results["cluster_post_always"] = summary(ms)
            print("cluster POST:", results["cluster_post_always"], file=sys.stderr, flush=True)
        for n in nodes:
            n.stop()
            n.extra[n.extra.index("--fsync") + 1] = "interval"
            n.start()
        wait_owned(nodes)
        if not args.takeover_only:
            results["cluster_tcp"] = tcp_throughput(nodes, args.readings)
            print("cluster TCP:", results["cluster_tcp"]["readings_per_second"], file=sys.stderr, flush=True)
        results["takeover_seconds"] = takeover(nodes, args.takeovers)
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL)
        nats.stop()
    os.makedirs(os.path.join(ROOT, "Benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "Benchmarks", "results", "cluster-takeover.json" if args.takeover_only else "cluster.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k not in ("single_tcp", "cluster_tcp")}, indent=2))
    if not args.takeover_only:
        print("TCP readings/s: single", results["single_tcp"]["readings_per_second"], "cluster", results["cluster_tcp"]["readings_per_second"])


if __name__ == "__main__":
    main()
