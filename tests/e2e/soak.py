"""The soak of issue 16: a steady ingest over TCP and HTTP into small segments while the server's
retention (by size) and background compaction cycle and an operator runs `sensorlog
rebuild-aggregates`, `compact` and `verify` against it now and then (jobs inside the server),
with a kill -9 every few seconds and the producers resending what they cannot confirm; then three equalities: the aggregates equal the
reference fold of every distinct reading sent (nothing lost, nothing counted twice), a clean
restart changes nothing, and a rebuild from offset zero equals the live rows; and verify is clean.

Run by tools/soak (--minutes N) and, for a minute, by the e2e suite."""
import json, os, random, signal, socket, subprocess, sys, tempfile, time

from conftest import Server, BIN
from test_exactly_once import line, reference, stored, check, wait_settled

FLAGS = ["--segment-bytes", "65536", "--partitions", "2", "--maintenance-interval-seconds", "1", "--retention-bytes", "120K",
         "--compaction-bytes-per-second", "4M"]
BASE = 1_763_978_400_000_000_000
OPERATOR = [["rebuild-aggregates"], ["compact", "--target-segment-bytes", "262144"], ["verify"]]
SENSORS = 500
TYPES = ["temperature", "humidity", "pressure"]


def readings(start, count, rnd):
    """`count` new readings from sequence number `start`: one a sensor in turn, 10 ms apart, so a
    few minutes of them span hours of simulated time."""
    return [(f"soak-{i % SENSORS:03d}", TYPES[i % SENSORS % 3], round(rnd.uniform(0, 100), 3), f"site-{i % 7}", BASE + i * 10_000_000)
            for i in range(start, start + count)]


def send_tcp(port, rows):
    # Writes of 25 lines: small batches, the pattern background compaction rewrites.
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(rows), 25):
        c.sendall(b"".join(line(r) for r in rows[i:i + 25]))
    c.close()


def post(s, r):
    doc = {"sensor_id": r[0], "type": r[1], "value": r[2], "location": r[3],
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r[4] // 10**9)) + f".{r[4] % 10**9:09d}Z"}
    status, body, _ = s.post(doc)
    assert status in (201, 200, 409), (status, body)


def judged(s):
    return (s.metric("sensorlog_readings_ingested_total") + s.metric("sensorlog_readings_rejected_total", reason="duplicate")
            + s.metric("sensorlog_readings_rejected_total", reason="too_old"))


def wait_judged(s, count, timeout=60):
    deadline = time.time() + timeout
    while judged(s) < count:
        assert time.time() < deadline, f"only {judged(s)} of {count} readings judged"
        time.sleep(0.02)


def soak(data_dir, seconds, seed=None):
    seed = seed if seed is not None else int(os.environ.get("SENSORLOG_TEST_SEED", random.randrange(1 << 30)))
    print(f"soak: seed {seed} (SENSORLOG_TEST_SEED={seed} repeats it), {seconds} s, data in {data_dir}", flush=True)
    rnd = random.Random(seed)
    sent = []
    s = Server(data_dir, extra=FLAGS).start()
    ended = time.time() + seconds
    kills, unconfirmed, jobs = 0, [], []
    while time.time() < ended:
        if rnd.random() < 0.05:                         # an operator's job, left running
            args = rnd.choice(OPERATOR)
            jobs.append((args, subprocess.Popen([os.path.join(BIN, "sensorlog"), *args, "--data-dir", data_dir],
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        chunk = readings(len(sent), 500, rnd)
        sent += chunk
        send_tcp(s.tcp, chunk[:450])
        for r in chunk[450:]:
            post(s, r)                                   # acknowledged: never lost, even by a kill
        unconfirmed = (unconfirmed + [chunk[:450]])[-2:]
        time.sleep(rnd.uniform(0, 0.2))
        if rnd.random() < 0.08:                         # about every 12 chunks
            s.stop(signal.SIGKILL)
            kills += 1
            s = Server(data_dir, extra=FLAGS).start()
            # TCP has no acks: resend what may not have landed, before anything newer (retention
            # must not raise a floor above a reading still to be resent).
            resend = [r for c in unconfirmed for r in c]
            send_tcp(s.tcp, resend)
            wait_judged(s, len(resend))
    done = 0
    for args, job in jobs:
        out, err = job.communicate(timeout=300)
        # Done (0); the server killed under it (75); or the same job already running (1, 409).
        assert job.returncode in (0, 75) or (job.returncode == 1 and "already running" in err), (args, job.returncode, out, err)
        done += job.returncode == 0
    distinct = len({(r[0], r[4]) for r in sent})
    deadline = time.time() + 120
    while s.metric("sensorlog_consumer_lag") > 0:    # the aggregator has folded everything
        assert time.time() < deadline, "the aggregator did not catch up"
        time.sleep(0.05)
    removed = s.metric("sensorlog_retention_segments_removed_total")
    assert s.stop() == 0
    live = stored(os.path.join(data_dir, "aggregates.sqlite"))
    check(live, reference(sent))
    s = Server(data_dir, extra=FLAGS).start()          # a clean restart must change nothing
    assert s.stop() == 0
    assert stored(os.path.join(data_dir, "aggregates.sqlite")) == live
    out = data_dir + "-rebuilt.sqlite"
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", data_dir, "--output", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stored(out) == live
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "verify", "--data-dir", data_dir], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"soak: {len(sent)} readings sent ({distinct} distinct), {kills} kill -9s, {done} of {len(jobs)} operator jobs done "
          f"(the rest met a kill), retention removed {removed:.0f} segments "
          f"since the last start; aggregates equal the reference, "
          f"the restart and the rebuild; verify clean", flush=True)
    return kills, removed


if __name__ == "__main__":
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 1
    soak(tempfile.mkdtemp(prefix="sensorlog-soak-"), minutes * 60)
