"""API keys stored hashed (`sensorlog keys add`) and reloaded on SIGHUP without a restart."""
import os, signal, stat, subprocess, time

from conftest import BIN, Server


def add_key(keys, role, comment=None):
    args = [os.path.join(BIN, "sensorlog"), "keys", "add", "--keys-file", str(keys), "--role", role]
    if comment:
        args += ["--comment", comment]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def status(server, key, path="/sensors"):
    return server.get(path, headers={"X-API-Key": key} if key else {})[0]


def until(condition, what, timeout=10):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_hashed_keys_and_sighup_reload(data_dir, tmp_path):
    keys = tmp_path / "keys"
    reader = add_key(keys, "read", comment="the dashboard")
    text = keys.read_text()
    assert reader.startswith("sl_") and len(reader) == 46 and reader not in text
    assert text.startswith("# the dashboard\nsha256:") and text.rstrip().endswith(" read")
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o640
    with open(keys, "a") as f:
        f.write("plain-old-key ingest,read\n")  # keys kept as themselves still work beside hashed ones

    server = Server(data_dir, extra=["--api-keys-file", str(keys)]).start()
    try:
        assert status(server, reader) == 200
        assert status(server, "plain-old-key") == 200
        assert status(server, reader + "x") == 401 and status(server, reader[:-1]) == 401
        assert status(server, "sha256:" + text.split("sha256:")[1].split()[0]) == 401  # the hash is not the key
        assert status(server, reader, "/admin/jobs") == 403

        # A new key is taken on SIGHUP, without a restart.
        admin = add_key(keys, "read,admin")
        assert status(server, admin) == 401
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: status(server, admin, "/admin/jobs") == 200, "the new key was not taken on SIGHUP")
        assert status(server, reader) == 200

        # A key taken out of the file stops working on the next SIGHUP.
        keys.write_text("\n".join(line for line in keys.read_text().splitlines() if "plain-old-key" not in line) + "\n")
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: status(server, "plain-old-key") == 401, "a removed key still works after SIGHUP")

        # A file that does not parse keeps the keys there were, and says why.
        good = keys.read_text()
        keys.write_text(good + "another-key superuser\n")
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: "API keys not reloaded" in open(server.log_path).read(), "a bad keys file was not reported")
        assert status(server, reader) == 200 and status(server, admin, "/admin/jobs") == 200
        assert server.get("/health")[0] == 200
    finally:
        server.stop()


def test_keys_add_refuses_bad_roles(tmp_path):
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "keys", "add", "--keys-file", str(tmp_path / "k"), "--role", "root"],
                       capture_output=True, text=True)
    assert r.returncode == 64 and "roles are ingest, read and admin" in r.stderr
    assert not (tmp_path / "k").exists()
