"""`sensorlog compact --delete-sensor` deletes, everywhere the server looks, and leaves a log that
later compactions leave alone."""
import json

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
        # Its keys and its type went with it: a resend is stored again, once, and a new type binds.
        resend = {"sensor_id": "op-3", "type": "humidity", "value": 40.0, "location": "l", "timestamp": "2025-11-24T10:00:00.000000003Z"}
        assert s.post(resend)[0] == 201
        assert s.post(resend)[0] == 409
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
