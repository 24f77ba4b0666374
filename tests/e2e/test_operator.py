"""The operator tool against a real data directory written by a real sensorlogd."""
import json, os, shutil, signal, socket, sqlite3, subprocess, tempfile, time
from conftest import Server, BIN, stats

BASE = 1_763_978_400_000_000_000


def tool(*args):
    return subprocess.run([os.path.join(BIN, "sensorlog"), *args], capture_output=True, text=True, timeout=300)


def fill(s, n=20_000, sensors=200, base=BASE):
    # Values that do not compress to nothing, so that 64 KiB segments really roll.
    lines = b"".join(f"temperature,sensor_id=op-{i % sensors},location=l value={(i * 7919) % 100003 / 1000} {base + (i // sensors) * 10**9 + i % sensors}\n".encode()
                     for i in range(n))
    c = socket.create_connection(("127.0.0.1", s.tcp))
    c.sendall(lines)
    c.close()
    s.wait_metric("sensorlog_readings_ingested_total", n)
    deadline = time.time() + 30
    while time.time() < deadline:
        groups = json.loads(s.get("/groups")[1])["groups"]
        if sum(p["lag"] for g in groups for p in g["partitions"]) == 0:
            return
        time.sleep(0.05)


def test_read_commands_while_running_and_a_flipped_byte(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    try:
        fill(s)
        st = json.loads(tool("stats", "--data-dir", data_dir, "--json").stdout)
        assert st["readings"] == 20_000 and len(st["partitions"]) == 8
        assert tool("verify", "--data-dir", data_dir).returncode == 0
        groups = json.loads(tool("groups", "--data-dir", data_dir, "--json").stdout)["groups"]
        assert groups[0]["group"] == "aggregator" and sum(p["lag"] for p in groups[0]["partitions"]) == 0
        lines = tool("dump", "--data-dir", data_dir, "--partition", "0", "--limit", "5", "--format", "json").stdout.splitlines()
        assert len(lines) == 5 and json.loads(lines[0])["offset"] == 0
        one = tool("dump", "--data-dir", data_dir, "--sensor", "op-7", "--from", "2025-11-24T10:00:00Z", "--to", "2025-11-24T10:00:10Z").stdout
        assert len(one.splitlines()) == 10
        # Mutating commands run inside the server while it runs (its jobs), with the exit codes
        # and output of the offline commands.
        for args, says in ((["compact"], " segments"), (["retention", "--older-than", "1000d"], "nothing to delete"),
                           (["verify", "--repair"], "after the repair: no problems"), (["rebuild-aggregates"], "rebuilt 20000 readings"),
                           (["reset-offsets", "--group", "g", "--to-earliest", "--execute", "--create"], "offsets written")):
            r = tool(*args, "--data-dir", data_dir)
            assert r.returncode == 0 and says in r.stdout and "runs inside it as job" in r.stderr, (args, r.stdout, r.stderr)
        r = tool("reset-offsets", "--group", "nope", "--to-earliest", "--execute", "--data-dir", data_dir)
        assert r.returncode == 64 and "no consumer group 'nope'" in r.stderr, r.stderr
        assert tool("reset-offsets", "--data-dir", data_dir, "--group", "aggregator", "--to-earliest").returncode == 64
        # Exit 75 only when the running server cannot be reached (its socket gone).
        os.rename(os.path.join(data_dir, "admin.sock"), os.path.join(data_dir, "admin.sock.away"))
        r = tool("compact", "--data-dir", data_dir)
        assert r.returncode == 75 and f"pid {s.proc.pid}" in r.stderr and "does not answer" in r.stderr, r.stderr
        os.rename(os.path.join(data_dir, "admin.sock.away"), os.path.join(data_dir, "admin.sock"))
    finally:
        assert s.stop() == 0
    # A flipped byte in any segment is caught and its file named.
    segs = sorted((os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if f.endswith(".log")), key=os.path.getsize)
    for victim in (segs[-1], segs[0] if os.path.getsize(segs[0]) > 100 else segs[-2]):
        data = bytearray(open(victim, "rb").read())
        data[len(data) // 3] ^= 0x10
        open(victim, "wb").write(bytes(data))
        r = tool("verify", "--data-dir", data_dir)
        assert r.returncode == 1 and os.path.relpath(victim, data_dir) in r.stdout, r.stdout[-300:]
        data[len(data) // 3] ^= 0x10
        open(victim, "wb").write(bytes(data))
    assert tool("verify", "--data-dir", data_dir).returncode == 0


def test_dump_ilp_migrates_to_another_server(data_dir):
    s = Server(data_dir).start()
    fill(s, n=5000, sensors=50)
    s.stop()
    other = tempfile.mkdtemp(prefix="sensorlog-e2e-other-")
    t = Server(other).start()
    try:
        c = socket.create_connection(("127.0.0.1", t.tcp))
        for p in range(8):
            c.sendall(tool("dump", "--data-dir", data_dir, "--partition", str(p), "--format", "ilp").stdout.encode())
        c.close()
        t.wait_metric("sensorlog_readings_ingested_total", 5000)
    finally:
        t.stop()
    a = tool("dump", "--data-dir", data_dir, "--sensor", "op-3", "--format", "json").stdout.splitlines()
    b = tool("dump", "--data-dir", other, "--sensor", "op-3", "--format", "json").stdout.splitlines()
    strip = lambda xs: [{k: v for k, v in json.loads(x).items() if k not in ("offset", "partition")} for x in xs]
    assert strip(a) == strip(b) and len(a) == 100


def test_groups_reset_and_retention_refuses_under_a_lagging_group(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=300_000, sensors=1000)
    s.stop()
    assert "dry run" in tool("reset-offsets", "--data-dir", data_dir, "--group", "exporter", "--to-earliest", "--create").stdout
    assert tool("reset-offsets", "--data-dir", data_dir, "--group", "exporter", "--to-earliest", "--create", "--execute").returncode == 0
    r = tool("retention", "--data-dir", data_dir, "--older-than", "1s")
    assert r.returncode == 1 and "exporter" in r.stderr
    assert tool("reset-offsets", "--data-dir", data_dir, "--group", "exporter", "--to-latest", "--execute").returncode == 0
    before = stats(data_dir)["readings"]
    r = tool("retention", "--data-dir", data_dir, "--older-than", "1s")
    assert r.returncode == 0, r.stderr
    after = stats(data_dir)["readings"]
    assert after < before   # every reading is older than 1 s: the active segments went too
    # A resend of removed readings is refused as too old, never counted again.
    s = Server(data_dir).start()
    try:
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(f"temperature,sensor_id=op-1,location=l value=1 {BASE + 1}\n".encode())
        c.close()
        s.wait_metric("sensorlog_readings_rejected_total", 1, reason="too_old")
    finally:
        s.stop()
    out = data_dir + "-after-retention.sqlite"
    r = tool("rebuild-aggregates", "--data-dir", data_dir, "--output", out)
    assert r.returncode == 0 and "kept" in r.stderr
    live = sqlite3.connect(os.path.join(data_dir, "aggregates.sqlite")).execute(
        "SELECT sensor_id, hour_bucket, count, sum FROM aggregates ORDER BY 1, 2").fetchall()
    rebuilt = sqlite3.connect(out).execute("SELECT sensor_id, hour_bucket, count, sum FROM aggregates ORDER BY 1, 2").fetchall()
    assert live == rebuilt


def test_backup_while_running_then_restore(data_dir):
    s = Server(data_dir).start()
    try:
        fill(s, n=10_000, sensors=100)
        target = tempfile.mkdtemp(prefix="sensorlog-backup-") + "/b"
        r = tool("backup", "--data-dir", data_dir, "--to", target)
        assert r.returncode == 0, r.stderr
    finally:
        s.stop()
    restored = tempfile.mkdtemp(prefix="sensorlog-restored-") + "/d"
    assert tool("restore", "--from", target, "--data-dir", restored).returncode == 0
    assert stats(restored)["readings"] == 10_000
    assert tool("verify", "--data-dir", restored).returncode == 0
    t = Server(restored).start()
    try:
        assert json.loads(t.get("/sensors/op-5/aggregates")[1])["aggregates"][0]["count"] == 100
    finally:
        t.stop()


def test_delete_sensor_drops_its_readings_and_aggregates(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=300_000, sensors=1000)
    s.stop()
    before = stats(data_dir)["readings"]
    r = tool("compact", "--data-dir", data_dir, "--delete-sensor", "op-3", "--delete-sensor", "op-4")
    assert r.returncode == 0, r.stderr
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    left = len(tool("dump", "--data-dir", data_dir, "--sensor", "op-3").stdout.splitlines())
    assert left < 300                       # dropped from closed segments (the active one keeps its own)
    assert stats(data_dir)["readings"] == before - (600 - left - len(tool("dump", "--data-dir", data_dir, "--sensor", "op-4").stdout.splitlines()))
    s = Server(data_dir).start()
    try:
        deadline = time.time() + 30
        while json.loads(s.get("/sensors/op-3/aggregates")[1])["aggregates"] and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads(s.get("/sensors/op-3/aggregates")[1])["aggregates"] == []
        assert json.loads(s.get("/sensors/op-5/aggregates")[1])["aggregates"][0]["count"] == 300
    finally:
        s.stop()
    out = data_dir + "-deleted.sqlite"
    assert tool("rebuild-aggregates", "--data-dir", data_dir, "--output", out).returncode == 0
    assert sqlite3.connect(out).execute("SELECT count(*) FROM aggregates WHERE sensor_id IN ('op-3', 'op-4')").fetchone()[0] == 0


def test_repair_quarantines_a_corrupt_closed_segment_and_keeps_every_offset(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=300_000, sensors=1000)
    s.stop()
    part = os.path.join(data_dir, "log", "partition-002")
    segs = sorted(f for f in os.listdir(part) if f.endswith(".log"))
    assert len(segs) >= 2
    victim = os.path.join(part, segs[0])                      # a closed segment
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    r = tool("verify", "--data-dir", data_dir)
    assert r.returncode == 1 and "partition-002/" + segs[0] in r.stdout
    r = tool("verify", "--data-dir", data_dir, "--repair")
    assert r.returncode == 0 and "REPAIRED" in r.stdout, r.stdout + r.stderr
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    quarantined = os.listdir(os.path.join(data_dir, "quarantine", "partition-002"))
    assert any(f.endswith(".report.txt") for f in quarantined) and len(quarantined) == 2
    # Offsets are intact: the partition's end did not move, and the server opens and serves.
    s = Server(data_dir).start()
    try:
        groups = json.loads(s.get("/groups")[1])["groups"][0]["partitions"]
        assert groups[2]["end"] == groups[2]["committed"]
    finally:
        assert s.stop() == 0
