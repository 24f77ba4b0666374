"""tools/loadgen as a user runs it: back-to-back runs do not collide, and --timeout fires even
when the server stops reading the socket."""
import os, socket, subprocess, threading, time

from conftest import BIN, Server


def loadgen(*args, timeout=120):
    return subprocess.run([os.path.join(BIN, "sensorlog-loadgen"), *args], capture_output=True, text=True, timeout=timeout)


def test_a_second_run_right_after_the_first_sends_no_duplicate(data_dir):
    s = Server(data_dir).start()
    try:
        for _ in range(2):
            r = loadgen("--tcp-port", str(s.tcp), "--http-port", str(s.http), "--readings", "30000", "--sensors", "1000")
            assert r.returncode == 0, r.stderr
        assert s.metric("sensorlog_readings_ingested_total") == 60000
        assert s.metric("sensorlog_readings_rejected_total", reason="duplicate") == 0
    finally:
        s.stop()


def test_timeout_fires_while_the_server_does_not_read(data_dir):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    started = time.time()
    r = loadgen("--tcp-port", str(listener.getsockname()[1]), "--http-port", "0", "--readings", "400000", "--connections", "1",
                "--timeout", "2", timeout=60)
    assert r.returncode != 0 and "timed out sending" in r.stderr, (r.returncode, r.stderr)
    assert time.time() - started < 30
    listener.close()
