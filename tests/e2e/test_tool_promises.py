"""What docs/cli.md promises of the operator tool (issue 14): backups independent of the data,
exit codes as the table lists them, --json everywhere, --version, dump's time range and JSON,
reset-offsets refusing unknown groups, stats naming a bad partition, retention's dry run."""
import json, os, tempfile, time
from conftest import Server
from test_operator import BASE, fill, tool


def filled(data_dir, n=300_000, sensors=1000):
    """A stopped server's data directory, 64 KiB segments, several closed in every partition."""
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    try:
        fill(s, n, sensors)
    finally:
        assert s.stop() == 0
    return data_dir


def closed_segment(data_dir, partition=2):
    part = os.path.join(data_dir, "log", f"partition-{partition:03d}")
    segs = sorted(f for f in os.listdir(part) if f.endswith(".log"))
    assert len(segs) >= 2
    return os.path.join(part, segs[0])


def flip_byte_in_place(path):
    # In place, as a bad disk or a stray write would: a new file would spare a hard link.
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x10]))


def test_a_backup_survives_a_flipped_byte_in_the_data(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    try:
        fill(s, 300_000, 1000)
        target = tempfile.mkdtemp(prefix="sensorlog-backup-") + "/b"
        r = tool("backup", "--data-dir", data_dir, "--to", target, "--json")
        assert r.returncode == 0, r.stderr
    finally:
        assert s.stop() == 0
    flip_byte_in_place(closed_segment(data_dir))
    assert tool("verify", "--data-dir", data_dir).returncode == 1
    v = tool("verify", "--data-dir", target)
    assert v.returncode == 0, v.stdout[-500:]
    doc = json.loads(r.stdout)
    assert doc["hard_links"] == 0 and doc["reflinked"] + doc["copied"] == doc["files"], doc


def test_hard_links_only_behind_a_flag_that_says_what_it_risks(data_dir):
    filled(data_dir)
    help_text = " ".join(tool("backup", "--help").stdout.split())
    assert "--hard-link" in help_text and "damaged in both" in help_text
    target = tempfile.mkdtemp(prefix="sensorlog-backup-") + "/b"
    r = tool("backup", "--data-dir", data_dir, "--to", target, "--hard-link", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["hard_links"] > 0, r.stderr


def test_backup_and_restore_exit_codes_match_the_table(data_dir):
    filled(data_dir, n=2000, sensors=20)
    full = tempfile.mkdtemp(prefix="sensorlog-full-")
    open(os.path.join(full, "something"), "w").write("x")
    empty = tempfile.mkdtemp(prefix="sensorlog-empty-")
    assert tool("backup", "--data-dir", data_dir, "--to", full).returncode == 64
    assert tool("backup", "--data-dir", empty, "--to", empty + "/b").returncode == 66
    assert tool("restore", "--from", data_dir, "--data-dir", full).returncode == 64
    assert tool("restore", "--from", empty, "--data-dir", empty + "/d").returncode == 66
    table = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cli.md")).read()
    for code in ("64", "66"):
        assert f"| {code} |" in table and "restore" in table.split(f"| {code} |")[1].split("\n")[0]


def test_version():
    r = tool("--version")
    assert r.returncode == 0 and r.stdout.strip().count(".") == 2, r.stdout + r.stderr


def test_dump_json_is_fast_escaped_and_honours_json_and_from(data_dir):
    s = Server(data_dir).start()
    try:
        fill(s, 400_000, 100)
        odd = {"sensor_id": 'q"u\\o/te', "type": "humidity", "value": 40.5, "location": "Zürich \"Süd\"",
               "timestamp": "2026-11-24T10:00:00Z"}
        assert s.post(odd)[0] == 201
    finally:
        assert s.stop() == 0
    started = time.time()
    text = tool("dump", "--data-dir", data_dir, "--partition", "0")
    text_seconds = time.time() - started
    started = time.time()
    js = tool("dump", "--data-dir", data_dir, "--partition", "0", "--format", "json")
    json_seconds = time.time() - started
    assert js.returncode == 0 and len(js.stdout.splitlines()) == len(text.stdout.splitlines()) > 5000
    # JSONSerialization per record made this 70 times slower than text.
    assert json_seconds < 3 * text_seconds, (json_seconds, text_seconds)
    assert tool("dump", "--data-dir", data_dir, "--partition", "0", "--json").stdout == js.stdout
    got = [json.loads(line) for line in tool("dump", "--data-dir", data_dir, "--sensor", odd["sensor_id"], "--json").stdout.splitlines()]
    assert [(g["sensor_id"], g["location"], g["value"]) for g in got] == [(odd["sensor_id"], odd["location"], 40.5)]
    # --from with --partition: only readings at or after it.
    cut = BASE + 500 * 10**9
    rows = [json.loads(line) for line in tool("dump", "--data-dir", data_dir, "--partition", "1", "--from", str(cut),
                                                 "--to", str(cut + 10 * 10**9), "--json").stdout.splitlines()]
    every = [json.loads(line) for line in tool("dump", "--data-dir", data_dir, "--partition", "1", "--json").stdout.splitlines()]
    expected = [r for r in every if cut <= r["timestamp_ns"] < cut + 10 * 10**9]
    assert rows == expected and 0 < len(rows) < len(every)
    assert tool("dump", "--data-dir", data_dir, "--partition", "1", "--json", "--format", "ilp").returncode == 64


def test_reset_offsets_refuses_an_unknown_group(data_dir):
    filled(data_dir, n=2000, sensors=20)
    groups = os.path.join(data_dir, "groups")
    for args in ([], ["--execute"]):
        r = tool("reset-offsets", "--data-dir", data_dir, "--group", "exportr", "--to-earliest", *args)
        assert r.returncode == 64 and "--create" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(groups, "exportr.json"))
    r = tool("reset-offsets", "--data-dir", data_dir, "--group", "exporter", "--to-earliest", "--create", "--execute")
    assert r.returncode == 0, r.stderr
    r = tool("reset-offsets", "--data-dir", data_dir, "--group", "exporter", "--to-latest", "--execute")
    assert r.returncode == 0, r.stderr
    r = tool("reset-offsets", "--data-dir", data_dir, "--group", "exportr", "--to-earliest")
    assert r.returncode == 64 and "exporter" in r.stderr


def test_stats_names_a_corrupt_partition_and_shows_the_others(data_dir):
    filled(data_dir)
    healthy = json.loads(tool("stats", "--data-dir", data_dir, "--json").stdout)
    flip_byte_in_place(closed_segment(data_dir, partition=2))
    r = tool("stats", "--data-dir", data_dir, "--json")
    assert r.returncode == 65, r.stderr
    doc = json.loads(r.stdout)
    assert "partition-002" in doc["partitions"][2]["error"]
    assert [p for i, p in enumerate(doc["partitions"]) if i != 2] == [p for i, p in enumerate(healthy["partitions"]) if i != 2]
    r = tool("stats", "--data-dir", data_dir)
    assert r.returncode == 65 and "UNREADABLE" in r.stdout and "verify" in r.stderr


def test_retention_dry_run_while_the_server_runs_and_json(data_dir):
    filled(data_dir)
    s = Server(data_dir).start()
    try:
        r = tool("retention", "--data-dir", data_dir, "--older-than", "1s", "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["dry_run"] and not doc["deleted"] and len(doc["segments"]) > 0 and doc["refused"] == []
    finally:
        assert s.stop() == 0
    r = tool("retention", "--data-dir", data_dir, "--older-than", "1s", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["deleted"] and doc["bytes"] == sum(x["bytes"] for x in doc["segments"]) > 0
