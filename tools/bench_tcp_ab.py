"""Driver of tools/bench-tcp-ab (see there)."""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, settle_disk, wait_healthy
A, B, LOADGEN = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(os.environ.get("ROUNDS", "3"))
readings = os.environ.get("READINGS", "2000000")
# Whichever binary runs first in a round finds the disk quieter: alternate the order (A B, B A,
# ...) so that the bias cancels in the median.
alternate = os.environ.get("ORDER", "abba") == "abba"
res = {"A": [], "B": []}
for r in range(rounds):
    order = (("A", A), ("B", B))
    for label, binary in (order[::-1] if alternate and r % 2 else order):
        settle_disk()
        d = tempfile.mkdtemp(prefix="ab-tcp-")
        tcp, http = free_port(), free_port()
        p = subprocess.Popen([binary, "--data-dir", d, "--tcp-port", str(tcp), "--http-port", str(http)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(http)
        out = subprocess.run([LOADGEN, "--tcp-port", str(tcp), "--http-port", str(http), "--readings", readings,
                              "--sensors", "10000", "--connections", "4", "--json"], capture_output=True, text=True, check=True).stdout
        rate = json.loads(out)["readings_per_second"]
        res[label].append(rate)
        print(f"round {r} {label}: {rate/1e6:.2f} M readings/s", flush=True)
        p.terminate(); p.wait()
        shutil.rmtree(d)
ma, mb = statistics.median(res["A"]), statistics.median(res["B"])
print(f"median A {ma/1e6:.2f} M/s, B {mb/1e6:.2f} M/s, B/A {mb/ma:.3f}")
print("per-round ratios", [round(b / a, 3) for a, b in zip(res["A"], res["B"])])
