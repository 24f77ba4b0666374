"""`sensorlog compact --delete-sensor` deletes, everywhere the server looks, and leaves a log that
later compactions leave alone."""
import json
import socket

from conftest import Server, stats
from test_operator import BASE, fill, tool


def test_a_deleted_sensor_is_gone_from_the_active_segment_too(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=60_000, sensors=200)
    s.stop()
    assert len(tool("dump", "--data-dir", data_dir, "--sensor", "op-3").stdout.splitlines()) == 300
    r = tool("compact", "--data-dir", data_dir, "--delete-sensor", "op-3")
    assert r.returncode == 0, r.stderr
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    assert tool("dump", "--data-dir", data_dir, "--sensor", "op-3").stdout.strip() == ""
    assert len(tool("dump", "--data-dir", data_dir, "--sensor", "op-4").stdout.splitlines()) == 300

    s = Server(data_dir).start()
    try:
        assert json.loads(s.get(f"/sensors/op-3/readings?from={BASE}&to={BASE + 10**12}")[1]).get("readings", []) == []
        # A resend of a deleted reading is refused (deleted readings never come back); a newer
        # reading starts the sensor afresh, with a new type, once.
        resend = {"sensor_id": "op-3", "type": "temperature", "value": 40.0, "location": "l", "timestamp": "2025-11-24T10:00:00.000000003Z"}
        refused = s.post(resend)
        assert refused[0] == 409 and json.loads(refused[1])["error"]["code"] == "deleted", refused
        assert s.post(dict(resend, timestamp="2025-11-24T10:04:59.000000003Z"))[0] == 409  # its last deleted reading
        newer = dict(resend, type="humidity", timestamp="2025-11-24T10:05:00.000000003Z")
        assert s.post(newer)[0] == 201
        again = s.post(newer)
        assert again[0] == 409 and json.loads(again[1])["error"]["code"] == "duplicate"
        assert s.metric("sensorlog_readings_rejected_total", transport="http", reason="deleted") == 2
        live = s.post(dict(resend, sensor_id="op-4", type="humidity"))  # a live sensor keeps its type
        assert live[0] == 400 and b"type_mismatch" in live[1], live
    finally:
        s.stop()


def test_an_unknown_sensor_is_refused_and_nothing_changes(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=20_000, sensors=200)
    s.stop()
    before = stats(data_dir)
    r = tool("compact", "--data-dir", data_dir, "--delete-sensor", "op-3", "--delete-sensor", "no-such-sensor")
    assert r.returncode == 64 and "no-such-sensor" in r.stderr, r.stderr
    assert stats(data_dir) == before
    assert len(tool("dump", "--data-dir", data_dir, "--sensor", "op-3").stdout.splitlines()) == 100


def test_compaction_after_a_deletion_leaves_what_it_already_rewrote(data_dir):
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=60_000, sensors=200)
    s.stop()
    assert tool("compact", "--data-dir", data_dir, "--delete-sensor", "op-5").returncode == 0
    again = tool("compact", "--data-dir", data_dir, "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["records"] == 0 and doc["segments_before"] == doc["segments_after"], doc
    assert "nothing to compact" in tool("compact", "--data-dir", data_dir).stdout


def batches_and_bytes(data_dir):
    doc = json.loads(tool("verify", "--data-dir", data_dir, "--json").stdout)
    return sum(p["batches"] for p in doc["partitions"]), sum(p["bytes"] for p in doc["partitions"])


def test_deletion_does_not_fragment_the_log(data_dir):
    # Issue 14: each deleted reading split its batch (6 -> 168 batches in the report). Now the
    # readings stay in one sparse batch and the log shrinks; the other sensors keep their offsets.
    s = Server(data_dir, extra=["--segment-bytes", "65536"]).start()
    fill(s, n=60_000, sensors=200)
    s.stop()
    assert tool("compact", "--data-dir", data_dir).returncode == 0
    batches, nbytes = batches_and_bytes(data_dir)
    kept = tool("dump", "--data-dir", data_dir, "--sensor", "op-4").stdout

    def others():  # every record of the other sensors, with its partition and offset
        lines = [tool("dump", "--data-dir", data_dir, "--partition", str(p), "--json").stdout.splitlines() for p in range(8)]
        return [l for part in lines for l in part if '"op-3"' not in l]

    before = others()
    r = tool("compact", "--data-dir", data_dir, "--delete-sensor", "op-3")
    assert r.returncode == 0, r.stderr
    after_batches, after_bytes = batches_and_bytes(data_dir)
    assert after_batches <= batches and after_bytes < nbytes, (batches, after_batches, nbytes, after_bytes)
    assert tool("dump", "--data-dir", data_dir, "--sensor", "op-4").stdout == kept
    assert others() == before and len(before) == 59_700
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    # The server reads the sparse batches: the same readings at the same offsets, and the
    # aggregates rebuilt from the log agree with the ones it kept.
    s = Server(data_dir).start()
    try:
        got = json.loads(s.get(f"/sensors/op-4/readings?from={BASE}&to={BASE + 10**12}")[1])["readings"]
        dumped = [line.split() for line in kept.splitlines()]
        assert len(got) == len(dumped) == 300
        # Exactly-once reads the sparse batches too: resending the first 1 000 lines refuses
        # op-3's 5 as deleted (deleted readings never come back) and the other 995 as duplicates.
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(b"".join(f"temperature,sensor_id=op-{i % 200},location=l value={(i * 7919) % 100003 / 1000} {BASE + (i // 200) * 10**9 + i % 200}\n".encode()
                           for i in range(1000)))
        c.close()
        s.wait_metric("sensorlog_readings_rejected_total", 995, reason="duplicate")
        s.wait_metric("sensorlog_readings_rejected_total", 5, reason="deleted")
        assert s.metric("sensorlog_readings_ingested_total") == 0
    finally:
        s.stop()
    assert tool("rebuild-aggregates", "--data-dir", data_dir).returncode == 0
