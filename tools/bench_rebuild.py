#!/usr/bin/env python3
"""The rebuild of the aggregates (issue 18): `sensorlog rebuild-aggregates --output` of READINGS
readings from SENSORS sensors, this build against BEFORE (a sensorlog built before the parallel
fold) when given, and PostgreSQL's INSERT ... SELECT ... GROUP BY of the same readings, the three
in alternating rounds of the same run. Results in Benchmarks/results/rebuild.json."""
import json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import BIN, Postgres, Sensorlogd, loadgen, postgres_aggregate, workload_rows, write_results

READINGS = int(os.environ.get("READINGS", "10000000"))
SENSORS = int(os.environ.get("SENSORS", "100000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def rebuild(binary, data_dir):
    target = tempfile.mktemp(suffix=".sqlite")
    t0 = time.time()
    subprocess.run([binary, "rebuild-aggregates", "--data-dir", data_dir, "--output", target, "--json"],
                   capture_output=True, text=True, check=True)
    rate = READINGS / (time.time() - t0)
    os.unlink(target)
    return rate


def main():
    server = Sensorlogd()
    loadgen(server, READINGS, sensors=SENSORS)
    data_dir = server.dir
    server.proc.terminate()
    server.proc.wait(60)
    csv = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    for row in workload_rows(READINGS, sensors=SENSORS):
        csv.write(",".join(str(x) for x in row) + "\n")
    csv.close()
    os.chmod(csv.name, 0o644)
    pg = Postgres()
    rates = {"after": [], "before": [], "postgres": []}
    try:
        pg.psql("CREATE TABLE events (sensor_id text, type text, value double precision, location text, ts bigint)")
        pg.psql(f"\\copy events FROM '{csv.name}' WITH (FORMAT csv)")
        pg.psql("VACUUM ANALYZE events")
        for _ in range(ROUNDS):
            if os.environ.get("BEFORE"):
                rates["before"].append(rebuild(os.environ["BEFORE"], data_dir))
            rates["after"].append(rebuild(os.path.join(BIN, "sensorlog"), data_dir))
            rates["postgres"].append(READINGS / postgres_aggregate(pg))
    finally:
        pg.stop()
        os.unlink(csv.name)
        server.stop()
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    results = {"readings": READINGS, "sensors": SENSORS, "rounds": ROUNDS, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "rates": rates, "medians": med, "ratio_vs_postgres": med["after"] / med["postgres"]}
    if "before" in med:
        results["ratio_vs_before"] = med["after"] / med["before"]
    write_results("rebuild", results)


if __name__ == "__main__":
    main()
