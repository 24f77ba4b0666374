"""sensorlogd's start-up as an operator meets it: flags and environment, ports in use, API keys
and the line protocol, --version."""
import os, socket, subprocess

import pytest

from conftest import BIN, Server, free_port


def run_daemon(args, env=None, timeout=60):
    return subprocess.run([os.path.join(BIN, "sensorlogd")] + args, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize("name,value", [("FSYNC", "Always"), ("TCP_PORT", "abc"), ("FSYNC_INTERVAL_MS", "abc"),
                                        ("RATE_LIMIT", "fast"), ("LOG_LEVEL", "loud"), ("PARTITIONS", "eight")])
def test_an_unparsable_environment_value_stops_start_up_with_64_and_its_name(data_dir, name, value):
    # No flags beside the data directory: a flag would win over the variable.
    r = run_daemon(["--data-dir", data_dir], env={"SENSORLOG_" + name: value}, timeout=20)
    assert r.returncode == 64, r.stdout[-500:] + r.stderr
    assert f"SENSORLOG_{name}='{value}'" in r.stderr
    assert not os.path.exists(os.path.join(data_dir, "meta.json")), "nothing opens before the settings parse"


def test_a_flag_and_its_variable_are_parsed_alike(data_dir):
    flag = run_daemon(["--data-dir", data_dir, "--fsync", "Always"])
    assert flag.returncode == 64 and "Always" in flag.stderr


def test_a_valid_environment_value_is_used(data_dir):
    s = Server(data_dir, env={"SENSORLOG_FSYNC": "always"}).start()
    try:
        assert b'"fsync":"always"' in s.get("/health")[1]
    finally:
        assert s.stop() == 0


def held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


@pytest.mark.parametrize("listener", ["line protocol", "http"])
def test_a_port_in_use_names_the_port_and_exits_69_without_saying_ready(data_dir, listener):
    holder, port = held_port()
    try:
        args = ["--tcp-port", str(port), "--http-port", "0"] if listener == "line protocol" else ["--tcp-port", "0", "--http-port", str(port)]
        r = run_daemon(["--data-dir", data_dir] + args)
    finally:
        holder.close()
    assert r.returncode == 69, r.stdout[-800:] + r.stderr
    assert f"cannot listen: {listener} port {port}" in r.stdout
    assert "sensorlogd ready" not in r.stdout
    assert "Error:" not in r.stderr, "no second, non-JSON error"


def test_both_binaries_answer_version():
    for name in ["sensorlogd", "sensorlog"]:
        r = subprocess.run([os.path.join(BIN, name), "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip()[0].isdigit(), (name, r.stdout, r.stderr)


def startup_log(s):
    return open(s.log_path).read()


def test_with_api_keys_beyond_loopback_the_line_protocol_stays_on_loopback(data_dir):
    s = Server(data_dir, extra=["--bind", "0.0.0.0"], env={"SENSORLOG_API_KEYS": "k1"})
    s.start()
    try:
        log = startup_log(s)
        assert f'"line_protocol":"127.0.0.1:{s.tcp}"' in log and "loopback only" in log
        # Bound to loopback, not to every address: the listening socket's own address says so.
        out = subprocess.run(["ss", "-ltnH", f"sport = :{s.tcp}"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            assert line.split()[3] == f"127.0.0.1:{s.tcp}", out
    finally:
        s.stop()


def test_opening_the_line_protocol_beyond_loopback_with_keys_is_explicit_and_warned(data_dir):
    s = Server(data_dir, extra=["--bind", "0.0.0.0", "--tcp-beyond-loopback"], env={"SENSORLOG_API_KEYS": "k1"})
    s.start()
    try:
        log = startup_log(s)
        assert f'"line_protocol":"0.0.0.0:{s.tcp}"' in log and "WITHOUT authentication" in log
    finally:
        s.stop()
