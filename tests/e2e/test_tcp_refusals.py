"""Readings the line protocol parses but refuses (duplicates, type mismatches) are counted and
logged, as docs/operations.md promises for every refused line."""
import json, socket

from conftest import Server


def test_duplicates_and_type_mismatches_over_tcp_are_logged(data_dir):
    s = Server(data_dir).start()
    try:
        lines = b"temperature,sensor_id=dup-1,location=l value=1 1763978400000000000\n"
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(lines)
        c.close()
        s.wait_metric("sensorlog_readings_ingested_total", 1)
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(lines + b"humidity,sensor_id=dup-1,location=l value=2 1763978401000000000\n")
        c.close()
        s.wait_metric("sensorlog_readings_rejected_total", 2)
        refused = []
        for _ in range(200):
            refused = [json.loads(l) for l in open(s.log_path) if '"readings refused"' in l]
            if refused:
                break
            s.get("/health")
        assert refused, "no log line for refused readings"
        line = refused[0]
        assert line["sensor_id"] == "dup-1" and line["duplicate"] == 1 and line["type_mismatch"] == 1, line
        assert line["reason"] in ("duplicate", "type_mismatch")
    finally:
        s.stop()
