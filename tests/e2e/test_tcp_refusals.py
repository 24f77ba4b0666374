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


def test_a_silent_connection_is_closed_by_the_idle_timeout_and_a_talking_one_is_not(data_dir):
    s = Server(data_dir, extra=["--idle-timeout-seconds", "1"]).start()
    try:
        silent = socket.create_connection(("127.0.0.1", s.tcp))
        talking = socket.create_connection(("127.0.0.1", s.tcp))
        silent.settimeout(10)
        # Half-second lines keep one connection alive across the other's timeout; the silent one
        # sees the server's FIN (recv returns b"") within a few idle periods.
        talking.settimeout(0.5)
        closed_after = None
        for i in range(20):
            talking.sendall(f"temperature,sensor_id=idle-{i},location=l value=1 {1763978400000000000 + i}\n".encode())
            try:
                silent.settimeout(0.5)
                if silent.recv(1) == b"":
                    closed_after = i
                    break
            except socket.timeout:
                pass
        assert closed_after is not None, "a silent connection outlived 10 idle timeouts"
        talking.sendall(b"temperature,sensor_id=idle-last,location=l value=1 1763978500000000000\n")
        talking.close()
        s.wait_metric("sensorlog_readings_ingested_total", closed_after + 2)
        silent.close()
    finally:
        s.stop()
