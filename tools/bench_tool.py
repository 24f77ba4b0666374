"""Driver of tools/bench-tool (see there)."""
import json, os, statistics, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import BIN, ROOT, Sensorlogd, loadgen

READINGS = int(os.environ.get("READINGS", "2000000"))
RUNS = int(os.environ.get("RUNS", "3"))


def files_and_bytes(d):
    n = b = 0
    # Segments and their indexes only: the commit journal's two zero-filled files are a fixed 32 MiB.
    for root, _, fs in os.walk(os.path.join(d, "log")):
        if not os.path.basename(root).startswith("partition-"):
            continue
        for f in fs:
            n += 1
            b += os.path.getsize(os.path.join(root, f))
    return n, b


def timed(args, stdout=subprocess.DEVNULL):
    t0 = time.time()
    subprocess.run([os.path.join(BIN, "sensorlog"), *args], check=True, stdout=stdout, stderr=subprocess.DEVNULL)
    return time.time() - t0


def main():
    s = Sensorlogd("--fsync", "always", "--segment-bytes", "65536")
    loadgen(s, READINGS)
    data = s.dir
    s.proc.terminate()
    s.proc.wait(60)
    files0, bytes0 = files_and_bytes(data)
    results = {"readings": READINGS, "written_with": "--fsync always --segment-bytes 65536, tools/loadgen 4 connections",
               "files_before": files0, "bytes_before": bytes0}
    verify = [timed(["verify", "--data-dir", data]) for _ in range(RUNS)]
    dump = [timed(["dump", "--data-dir", data, "--partition", str(p), "--format", "ilp"]) for _ in range(RUNS) for p in [0]]
    # Whole-log dump: every partition, once per run, in each format.
    def dump_whole(fmt):
        t0 = time.time()
        for p in range(8):
            subprocess.run([os.path.join(BIN, "sensorlog"), "dump", "--data-dir", data, "--partition", str(p), "--format", fmt],
                           check=True, stdout=subprocess.DEVNULL)
        return time.time() - t0
    dump_all = [dump_whole("ilp") for _ in range(RUNS)]
    dump_json = [dump_whole("json") for _ in range(RUNS)]
    t_compact = timed(["compact", "--data-dir", data])
    files1, bytes1 = files_and_bytes(data)
    verify_after = statistics.median([timed(["verify", "--data-dir", data]) for _ in range(RUNS)])
    results.update({
        "verify_seconds": verify, "verify_mb_per_second": bytes0 / 1e6 / statistics.median(verify),
        "verify_readings_per_second": READINGS / statistics.median(verify),
        "compact_seconds": t_compact, "compact_mb_per_second": bytes0 / 1e6 / t_compact, "compact_readings_per_second": READINGS / t_compact,
        "files_after": files1, "bytes_after": bytes1,
        "dump_ilp_seconds": dump_all, "dump_ilp_readings_per_second": READINGS / statistics.median(dump_all),
        "dump_json_seconds": dump_json, "dump_json_readings_per_second": READINGS / statistics.median(dump_json),
        "verify_after_compact_readings_per_second": READINGS / verify_after,
    })
    s.stop()
    json.dump(results, open(os.path.join(ROOT, "Benchmarks", "results", "tool.json"), "w"), indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
