"""The per-sensor index end to end: the server writes a .sensors file beside every closed segment
(at start and after each maintenance pass), the readings query and `sensorlog dump --sensor`
answer the same through it as the log holds, and `sensorlog verify` finds a bad file that
`verify --repair` writes anew."""
import glob, json, os, subprocess, time

from conftest import BIN, Server, dump_all

T0 = 1763978400


def lines(sensors, seconds, start=0):
    return "\n".join(f"temperature,sensor_id=ix-{s:03d},location=site-{s % 3} value={(s * 7919 + k * 104729) % 100003 / 7:.4f} {(T0 + k) * 10**9 + s}"
                     for k in range(start, start + seconds) for s in range(sensors))


def sensor_files(data_dir):
    return sorted(glob.glob(os.path.join(data_dir, "log", "partition-*", "*.sensors")))


def readings(s, sensor):
    body = json.loads(s.get(f"/sensors/{sensor}/readings?from=2025-11-24T00:00:00Z&to=2025-11-25T00:00:00Z&limit=10000")[1])
    return [(r["offset"], r["timestamp"], r["value"]) for r in body["readings"]]


def tool(*args):
    return subprocess.run([os.path.join(BIN, "sensorlog"), *args], capture_output=True, text=True)


def test_closed_segments_get_sensor_indexes_and_queries_read_through_them(data_dir):
    extra = ["--segment-bytes", "65536", "--maintenance-interval-seconds", "1", "--partitions", "2"]
    s = Server(data_dir, extra=extra).start()
    try:
        for chunk in range(6):
            body = lines(80, 250, start=chunk * 250)
            assert s.request("POST", "/api/v2/write?precision=ns", body.encode())[0] == 204
        # Every closed segment (all but each partition's last) gets its file from a pass.
        closed = len(glob.glob(os.path.join(data_dir, "log", "partition-*", "*.log"))) - 2
        assert closed > 2
        deadline = time.time() + 60
        while len(sensor_files(data_dir)) < closed and time.time() < deadline:
            time.sleep(0.05)
        assert len(sensor_files(data_dir)) == closed
        before = {f"ix-{i:03d}": readings(s, f"ix-{i:03d}") for i in (0, 7, 79)}
    finally:
        s.stop()
    expected = {}
    for r in dump_all(data_dir):
        if r["sensor_id"] in before:
            expected.setdefault(r["sensor_id"], []).append(r["offset"])
    for sensor, got in before.items():
        assert [o for o, _, _ in got] == sorted(expected[sensor]) and len(got) == 1500
        dumped = tool("dump", "--data-dir", data_dir, "--sensor", sensor, "--json")
        assert dumped.returncode == 0, dumped.stderr
        assert [json.loads(l)["offset"] for l in dumped.stdout.splitlines()] == [o for o, _, _ in got]
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    # A flipped byte and a file that belongs to another segment: verify names both, repair mends.
    files = sensor_files(data_dir)
    with open(files[0], "r+b") as f:
        f.seek(40)
        b = f.read(1)
        f.seek(40)
        f.write(bytes([b[0] ^ 1]))
    with open(files[2], "rb") as src, open(files[1], "wb") as dst:
        dst.write(src.read())
    check = tool("verify", "--data-dir", data_dir, "--json")
    assert check.returncode == 0, "a derived file: a warning, nothing is lost"
    bad = {p["path"] for p in json.loads(check.stdout)["problems"] if p["path"].endswith(".sensors")}
    assert {os.path.relpath(f, data_dir) for f in files[:2]} == bad, bad
    repaired = tool("verify", "--data-dir", data_dir, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    again = tool("verify", "--data-dir", data_dir, "--json")
    assert not [p for p in json.loads(again.stdout)["problems"] if p["path"].endswith(".sensors")]
    s = Server(data_dir, extra=extra).start()
    try:
        for sensor, got in before.items():
            assert readings(s, sensor) == got
    finally:
        s.stop()
