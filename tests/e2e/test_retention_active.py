"""The disk-full runbook as written: with the default 64 MiB segments a small log has no closed
segment, and `retention --older-than` must still free what is old."""
import json

from conftest import Server, stats
from test_operator import fill, tool


def test_retention_closes_and_deletes_an_active_segment_that_is_all_old(data_dir):
    s = Server(data_dir).start()
    fill(s, n=20_000, sensors=200)   # a year old, and far below 64 MiB: every segment is active
    dry = tool("retention", "--data-dir", data_dir, "--older-than", "30d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr   # beside the running server
    planned = json.loads(dry.stdout)
    assert planned["segments"] and all(seg["active"] for seg in planned["segments"]), planned
    s.stop()
    r = tool("retention", "--data-dir", data_dir, "--older-than", "30d")
    assert r.returncode == 0, r.stderr
    assert stats(data_dir)["readings"] == 0
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    s = Server(data_dir).start()
    try:
        old = {"sensor_id": "op-1", "type": "temperature", "value": 1.0, "location": "l", "timestamp": "2025-11-24T10:00:00.000000001Z"}
        status, body, _ = s.post(old)
        assert status == 400 and b"too_old" in body, (status, body)
    finally:
        s.stop()


def test_max_bytes_never_takes_the_active_segment(data_dir):
    s = Server(data_dir).start()
    fill(s, n=5_000, sensors=100)
    s.stop()
    r = tool("retention", "--data-dir", data_dir, "--max-bytes", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["segments"] == []
    assert stats(data_dir)["readings"] == 5_000
