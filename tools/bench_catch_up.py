#!/usr/bin/env python3
"""The live aggregator after a burst (issue 18): READINGS standard-workload readings flat out over
TCP, then how long until the aggregator's lag is 0, and consume + aggregate as bench-peers counts
it (readings / (until durable + catch-up)). Alternates the sensorlogd binaries given, ROUNDS
rounds: python3 tools/bench_catch_up.py A_BINARY B_BINARY ..."""
import os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import Sensorlogd, loadgen, wait_aggregated, write_results

READINGS = int(os.environ.get("READINGS", "1000000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def one(binary):
    s = Sensorlogd(binary=binary)
    try:
        out = loadgen(s, READINGS)
        sent = time.time()
        wait_aggregated(s)
        catch_up = time.time() - sent
        return {"catch_up_seconds": catch_up, "consume_per_second": READINGS / (out["durable_seconds"] + catch_up)}
    finally:
        s.stop()


def main():
    runs = {b: [] for b in sys.argv[1:]}
    for _ in range(ROUNDS):
        for b in runs:
            runs[b].append(one(b))
    results = {"readings": READINGS, "rounds": ROUNDS, "binaries": {
        b: {"runs": r, "median_catch_up_seconds": statistics.median(x["catch_up_seconds"] for x in r),
            "median_consume_per_second": statistics.median(x["consume_per_second"] for x in r)} for b, r in runs.items()}}
    write_results("catch-up", results)


if __name__ == "__main__":
    main()
