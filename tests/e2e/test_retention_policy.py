"""The retention policy inside the running server (--retention-time, --retention-bytes): it
deletes what is old while the server ingests, a resend of a deleted reading is refused too_old,
newer readings keep coming in, and the directory verifies clean afterwards."""
import json, socket, time

from conftest import Server, stats
from test_operator import fill, tool


def test_the_server_deletes_old_segments_by_itself_and_refuses_their_resend(data_dir):
    s = Server(data_dir, extra=["--retention-time", "30d", "--maintenance-interval-seconds", "1", "--segment-bytes", "65536",
                                "--partitions", "2"]).start()
    try:
        fill(s, n=40_000, sensors=200)   # a year old: every segment, the active ones too, must go
        s.wait_metric("sensorlog_retention_segments_removed_total", 1)
        s.wait_metric("sensorlog_maintenance_jobs_total", 1, job="retention", outcome="ok")
        lines = [json.loads(l) for l in open(s.log_path) if '"retention deleted segments"' in l]
        assert lines and all(int(l["segments"]) > 0 and int(l["bytes"]) > 0 for l in lines), lines
        # Every old reading goes, the active segments included (closed first).
        deadline = time.time() + 60
        while stats(data_dir)["readings"] > 0:
            assert time.time() < deadline, stats(data_dir)
            time.sleep(0.2)
        # The same lines again: refused as too old, counted, nothing stored.
        before = s.metric("sensorlog_readings_ingested_total")
        fill_again = b"temperature,sensor_id=op-0,location=l value=1 1763978400000000000\n"
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(fill_again)
        c.close()
        s.wait_metric("sensorlog_readings_rejected_total", 1, reason="too_old")
        assert s.metric("sensorlog_readings_ingested_total") == before
        # New readings are taken.
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status, body, _ = s.post({"sensor_id": "fresh-1", "type": "temperature", "value": 1.0, "location": "l", "timestamp": now})
        assert status == 201, (status, body)
        assert s.metric("sensorlog_retention_blocked", partition="0") == 0
    finally:
        s.stop()
    assert tool("verify", "--data-dir", data_dir).returncode == 0
    assert stats(data_dir)["readings"] == 1
