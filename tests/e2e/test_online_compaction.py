"""Background compaction inside the running server: producers write small batches over TCP and HTTP while
compaction rewrites closed segments (slowly, so kill -9 lands in the middle of it), the server is
killed ten times and producers resend what they cannot confirm; then the aggregates equal the
reference, a rebuild from offset zero gives the same rows, and the directory verifies clean."""
import os, random, signal, socket, subprocess, time

from conftest import Server, BIN, stats
from test_exactly_once import workload, line, reference, stored, check, wait_settled
from test_online_admin import produce

FLAGS = ["--segment-bytes", "65536", "--maintenance-interval-seconds", "1", "--compaction-bytes-per-second", "1M",
         "--partitions", "2"]


def send_small(port, rows):
    # Twenty lines a write, each write its own batch: the real-time pattern compaction is for.
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(rows), 20):
        c.sendall(b"".join(line(r) for r in rows[i:i + 20]))
        time.sleep(0.001)
    c.close()


def judged(s, count, timeout=60):
    deadline = time.time() + timeout
    while s.metric("sensorlog_readings_ingested_total") + s.metric("sensorlog_readings_rejected_total", reason="duplicate") < count:
        assert time.time() < deadline, "resent readings not judged"
        time.sleep(0.02)


def test_kill_nine_during_background_compaction_loses_and_doubles_nothing(data_dir):
    rows = workload(24_000, sensors=300, seed=21)
    chunks = [rows[i:i + 2400] for i in range(0, len(rows), 2400)]
    rnd = random.Random(22)
    s = Server(data_dir, extra=FLAGS).start()
    compactions = 0
    for i, chunk in enumerate(chunks):
        send_small(s.tcp, chunk)
        judged(s, len(chunk))
        time.sleep(rnd.uniform(0.5, 2.0))               # let a compaction pass start
        compactions += s.metric("sensorlog_compaction_segments_rewritten_total")
        # The next chunk in flight over both doors when the kill comes.
        following = chunks[i + 1] if i + 1 < len(chunks) else []
        threads = produce(s, following)
        time.sleep(rnd.uniform(0.0, 0.2))
        s.stop(signal.SIGKILL)
        for t in threads:
            t.join()
        s = Server(data_dir, extra=FLAGS).start()
        resent = chunk + chunks[max(0, i - 1)] + following
        for t in produce(s, resent):
            t.join()
        judged(s, len(resent))
    distinct = len({(r[0], r[4]) for r in rows})
    wait_settled(s, distinct)
    assert s.stop() == 0
    assert compactions > 0, "no compaction ran before a kill"
    assert stats(data_dir)["readings"] == distinct
    live = stored(os.path.join(data_dir, "aggregates.sqlite"))
    check(live, reference(rows))
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "verify", "--data-dir", data_dir], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = data_dir + "-rebuilt.sqlite"
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", data_dir, "--output", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stored(out) == live
