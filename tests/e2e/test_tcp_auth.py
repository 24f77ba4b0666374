"""The line protocol with QuestDB's TCP authentication, driven by the questdb client's own
username/token settings: a key pair made here, its public half in sensorlogd's keys file."""
import base64, socket, time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from questdb import Sender, TimestampNanos

from conftest import Server


def b64url(n):
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


def key_pair():
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.private_numbers()
    return b64url(numbers.private_value), b64url(numbers.public_numbers.x), b64url(numbers.public_numbers.y)


@pytest.fixture
def keys(data_dir):
    d, x, y = key_pair()
    other_d, _, _ = key_pair()
    path = data_dir + "-tcp-keys"
    with open(path, "w") as f:
        f.write(f"# producers, CRLF as an editor on another system may save it\r\nplant1 ec-p-256-sha256 {x} {y}\r\n")
    return path, d, x, y, other_d


def conf(s, user, d, x, y):
    return f"tcp::addr=127.0.0.1:{s.tcp};username={user};token={d};token_x={x};token_y={y};"


def send(s, user, d, x, y, n, first=0):
    with Sender.from_conf(conf(s, user, d, x, y)) as sender:
        for i in range(first, first + n):
            sender.row("temperature", symbols={"sensor_id": f"auth-{i % 10}", "location": "lab"},
                       columns={"value": 20.0 + i % 7}, at=TimestampNanos(1_763_978_400_000_000_000 + i))


def test_the_questdb_client_authenticates_and_its_rows_are_stored(data_dir, keys):
    path, d, x, y, _ = keys
    s = Server(data_dir, extra=["--tcp-auth-file", path, "--bind", "0.0.0.0"], env={"SENSORLOG_API_KEYS": "k1"}).start()
    try:
        log = open(s.log_path).read()
        assert f'"line_protocol":"0.0.0.0:{s.tcp}"' in log and "authenticates every connection" in log
        send(s, "plant1", d, x, y, 1000)
        s.wait_metric("sensorlog_readings_ingested_total", 1000)
    finally:
        s.stop()


def test_a_wrong_key_or_no_handshake_stores_nothing(data_dir, keys):
    path, d, x, y, other_d = keys
    s = Server(data_dir, extra=["--tcp-auth-file", path]).start()
    try:
        # The right key id signed with another private key: the client cannot even build the
        # pair (its public half does not match), so sign with a matching pair of another key id.
        od, ox, oy = key_pair()
        for user in ["plant1", "stranger"]:
            try:
                send(s, user, od, ox, oy, 100)
            except Exception:  # the client reports the closed connection its own way
                pass
        # Plain line protocol with no handshake: the first line is taken as a key id and refused.
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.sendall(b"temperature,sensor_id=sneaky value=1 1763978400000000000\n" * 100)
        c.settimeout(10)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        c.close()
        # A good producer afterwards proves the listener still serves, and that nothing else landed.
        send(s, "plant1", d, x, y, 10, first=0)
        s.wait_metric("sensorlog_readings_ingested_total", 10)
        assert s.metric("sensorlog_readings_ingested_total") == 10
        log = open(s.log_path).read()
        assert "signature does not verify" in log and "unknown key id" in log
    finally:
        s.stop()


def test_a_bad_keys_file_stops_start_up_with_64(data_dir):
    path = data_dir + "-bad-keys"
    with open(path, "w") as f:
        f.write("plant1 ec-p-256-sha256 not-base64!! AAAA\n")
    s = Server(data_dir, extra=["--tcp-auth-file", path])
    with pytest.raises(AssertionError, match="exited with 64"):
        s.start(timeout=20)


def test_a_peer_that_never_finishes_the_handshake_is_closed(data_dir, keys):
    # The idle timeout restarts on every byte; the handshake has a deadline of its own (10 s).
    path = keys[0]
    s = Server(data_dir, extra=["--tcp-auth-file", path]).start()
    try:
        c = socket.create_connection(("127.0.0.1", s.tcp))
        c.settimeout(1)
        started = time.time()
        closed = False
        while time.time() - started < 30:
            try:
                c.sendall(b"p")          # a key id that never ends
                if c.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the server kept a connection that never authenticated"
        assert time.time() - started < 25
        assert "no authentication within" in open(s.log_path).read()
    finally:
        s.stop()
