"""TLS on both listeners (--tls-cert, --tls-key, --tls-client-ca) against a CA this test makes
with openssl: `openssl s_client`, QuestDB's Sender over tcps:: and https::, influxdb-client over
https; client certificates; a certificate renewed on SIGHUP while connections stay open; bad
files refused at start-up and kept out at reload; plain text and silent handshakes closed."""
import http.client, os, signal, socket, ssl, subprocess, time
from collections import Counter

import pytest
from conftest import Server, dump_all

T0 = 1763978400  # 2025-11-24T10:00:00Z


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.pem", "-days", "3", "-subj", f"/CN={name}", cwd=d)
    return d / f"{name}.pem"


def make_leaf(d, ca, name, usage, days=2):
    """A certificate `name`.pem with its key, signed by `ca`, for a server (serverAuth, names
    localhost and 127.0.0.1) or a client (clientAuth)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if usage == "server" else "extendedKeyUsage=clientAuth\n"
    (d / f"{name}.ext").write_text(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture
def pki(tmp_path):
    make_ca(tmp_path, "ca")
    make_ca(tmp_path, "rogue-ca")
    for name in ("first", "second"):
        make_leaf(tmp_path, "ca", name, "server", days=1 if name == "first" else 2)
    make_leaf(tmp_path, "ca", "client", "client")
    make_leaf(tmp_path, "rogue-ca", "rogue-client", "client")
    # What the server is pointed at; renewing replaces these files as certbot does (a rename).
    os.link(tmp_path / "first.pem", tmp_path / "cert.pem")
    os.link(tmp_path / "first.key", tmp_path / "key.pem")
    return tmp_path


def tls_server(data_dir, pki, extra=(), client_ca=False):
    flags = ["--tls-cert", str(pki / "cert.pem"), "--tls-key", str(pki / "key.pem")]
    if client_ca:
        flags += ["--tls-client-ca", str(pki / "ca.pem")]
    s = Server(data_dir, extra=flags + list(extra))
    s.scheme, s.ssl = "https", client_context(pki, "client" if client_ca else None)
    return s.start()


def client_context(pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return ctx


def peer_name(sock):
    return dict(x[0] for x in sock.getpeercert()["subject"])["commonName"]


def s_client(port, pki, request, *extra):
    """`openssl s_client` as an operator runs it: the chain checked against the CA, `request` sent
    (an HTTP request waits for the answer; line protocol has none)."""
    wait = ["-ign_eof"] if request.startswith(b"GET ") else []
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-CAfile", str(pki / "ca.pem"),
                        "-verify_return_error", *wait, *extra], input=request, capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def line(sensor, i):
    return f"temperature,sensor_id={sensor},location=dock value={20 + i / 8} {(T0 + i) * 10**9}\n"


def wait_ingested(s, n, timeout=30):
    s.wait_metric("sensorlog_readings_ingested_total", n, timeout=timeout)


def stored(data_dir):
    return Counter(r["sensor_id"] for r in dump_all(data_dir))


def closed_by_server(sock, within):
    """True once the server closes `sock` (after a TLS alert, if it sends one) within `within` s."""
    deadline = time.time() + within
    try:
        while time.time() < deadline:
            sock.settimeout(max(0.01, deadline - time.time()))
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def test_real_clients_over_tls(data_dir, pki):
    from influxdb_client import InfluxDBClient, Point
    from influxdb_client.client.write_api import SYNCHRONOUS
    from questdb import Sender, TimestampNanos
    s = tls_server(data_dir, pki)
    try:
        code, out = s_client(s.http, pki, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert code == 0 and "Verify return code: 0 (ok)" in out and "HTTP/1.1 200" in out, out
        code, out = s_client(s.tcp, pki, "".join(line("sclient", i) for i in range(10)).encode())
        assert code == 0 and "Verify return code: 0 (ok)" in out, out
        # TLS 1.1 is refused by the server (the client's own security level lowered so that it
        # would offer it): the server's protocol_version alert.
        code, out = s_client(s.http, pki, b"", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert code != 0 and "alert protocol version" in out, out

        for conf in (f"tcps::addr=127.0.0.1:{s.tcp};tls_roots={pki / 'ca.pem'};",
                     f"https::addr=127.0.0.1:{s.http};tls_roots={pki / 'ca.pem'};"):
            with Sender.from_conf(conf) as sender:
                kind = conf.split(":")[0]
                for i in range(500):
                    sender.row("temperature", symbols={"sensor_id": f"qdb-{kind}", "location": "dock"},
                               columns={"value": 1.5 + i}, at=TimestampNanos((T0 + i) * 10**9))
                sender.flush()
        for gz in (False, True):
            with InfluxDBClient(url=f"https://127.0.0.1:{s.http}", token="unused", org="acme", ssl_ca_cert=str(pki / "ca.pem"),
                                enable_gzip=gz) as client:
                points = [Point("temperature").tag("sensor_id", f"influx-{gz}").tag("location", "dock").field("value", i / 4)
                          .time((T0 + i) * 10**9) for i in range(300)]
                client.write_api(write_options=SYNCHRONOUS).write(bucket="readings", record=points)
        assert s.post({"sensor_id": "json", "type": "temperature", "value": 1.0, "location": "dock",
                       "timestamp": "2025-11-24T10:00:00Z"})[0] == 201
        wait_ingested(s, 10 + 1000 + 600 + 1)

        # Plain text on either TLS port: closed, nothing stored, counted once.
        for port, listener, text in ((s.tcp, "line_protocol", line("plain", 0).encode() * 50),
                                     (s.http, "http", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")):
            before = failures(s, listener)
            plain = socket.create_connection(("127.0.0.1", port))
            plain.sendall(text)
            assert closed_by_server(plain, 15)
            s.wait_metric("sensorlog_tls_handshake_failures_total", before + 1, listener=listener)
            assert failures(s, listener) == before + 1
    finally:
        s.stop()
    assert stored(data_dir) == Counter({"sclient": 10, "qdb-tcps": 500, "qdb-https": 500, "influx-False": 300,
                                        "influx-True": 300, "json": 1})


def failures(s, listener):
    return s.metric("sensorlog_tls_handshake_failures_total", listener=listener)


def test_a_silent_client_is_closed_at_the_handshake_deadline(data_dir, pki):
    s = tls_server(data_dir, pki)
    try:
        silent = [socket.create_connection(("127.0.0.1", port)) for port in (s.tcp, s.http)]
        since = time.time()
        for sock in silent:
            assert closed_by_server(sock, 30)
        # 10 s (Limits.tlsHandshakeTimeout; on HTTP the header timeout is 10 s as well).
        assert 9 <= time.time() - since < 30
        s.wait_metric("sensorlog_tls_handshake_failures_total", 1, listener="line_protocol")
    finally:
        s.stop()


def test_shutdown_with_tls_producers_connected_drains_quickly(data_dir, pki):
    """Line-protocol producers never read their socket, so never answer a close_notify: the
    connections close together and the wait for each is short, not 5 s one after another."""
    s = tls_server(data_dir, pki)
    ctx = client_context(pki)
    producers = []
    for p in range(20):
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.tcp)), server_hostname="localhost")
        sock.sendall("".join(line(f"open-{p}", i) for i in range(50)).encode())
        producers.append(sock)
    wait_ingested(s, 1000)
    started = time.time()
    assert s.stop() == 0
    assert time.time() - started < 10
    assert stored(data_dir) == Counter({f"open-{p}": 50 for p in range(20)})


def test_client_certificates_required(data_dir, pki, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k1 ingest,read,admin\n")
    # Beyond loopback with API keys: client certificates authenticate the line protocol, so it
    # listens on --bind too (without them it would stay on loopback).
    s = tls_server(data_dir, pki, extra=["--bind", "0.0.0.0", "--api-keys-file", str(keys)], client_ca=True)
    try:
        log = open(s.log_path).read()
        assert f'"address":"0.0.0.0:{s.tcp}"' in log and "require a client certificate" in log
        assert "without TLS" not in log
        assert s.get("/sensors", headers={"X-API-Key": "k1"})[0] == 200
        before = failures(s, "http")
        for cert in (None, "rogue-client"):
            ctx = client_context(pki, cert)
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                conn = http.client.HTTPSConnection("127.0.0.1", s.http, context=ctx, timeout=10)
                conn.request("GET", "/health")
                conn.getresponse().read()
        code, out = s_client(s.tcp, pki, line("mtls", 0).encode(), "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"))
        assert code == 0, out
        code, out = s_client(s.tcp, pki, line("refused", 0).encode())
        wait_ingested(s, 1)
        s.wait_metric("sensorlog_tls_handshake_failures_total", before + 2, listener="http")
        s.wait_metric("sensorlog_tls_handshake_failures_total", 1, listener="line_protocol")
    finally:
        s.stop()
    assert stored(data_dir) == Counter({"mtls": 1})


def test_sighup_renews_the_certificate_and_keeps_connections(data_dir, pki):
    s = tls_server(data_dir, pki)
    try:
        ctx = client_context(pki)
        kept = http.client.HTTPSConnection("127.0.0.1", s.http, context=ctx, timeout=10)
        kept.request("GET", "/health")
        assert kept.getresponse().read() and peer_name(kept.sock) == "first"
        lp = ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.tcp)), server_hostname="localhost")
        lp.sendall(line("kept", 0).encode())
        first_expiry = s.metric("sensorlog_tls_certificate_expiry_timestamp_seconds")

        for name in ("cert", "key"):  # renewed as certbot does: new files renamed into place
            os.link(pki / f"second.{'pem' if name == 'cert' else 'key'}", pki / f"{name}.new")
            os.rename(pki / f"{name}.new", pki / f"{name}.pem")
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while True:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.http)), server_hostname="localhost") as fresh:
                if peer_name(fresh) == "second":
                    break
            assert time.time() < deadline, "the renewed certificate was not served"
            time.sleep(0.05)
        s.wait_metric("sensorlog_tls_reloads_total", 1, result="ok")
        assert s.metric("sensorlog_tls_certificate_expiry_timestamp_seconds") > first_expiry

        # The connections opened before go on with the certificate they began with.
        kept.request("GET", "/health")
        assert kept.getresponse().status == 200 and peer_name(kept.sock) == "first"
        lp.sendall(line("kept", 1).encode())
        wait_ingested(s, 2)

        # A broken file at the next reload: refused, counted, and the certificate in use stays.
        (pki / "cert.new").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        os.rename(pki / "cert.new", pki / "cert.pem")
        s.proc.send_signal(signal.SIGHUP)
        s.wait_metric("sensorlog_tls_reloads_total", 1, result="failed", timeout=10)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.tcp)), server_hostname="localhost") as fresh:
            assert peer_name(fresh) == "second"
            fresh.sendall(line("after-bad-reload", 0).encode())
        wait_ingested(s, 3)
        assert "TLS certificate not reloaded; the old one stays" in open(s.log_path).read()
        lp.close()
    finally:
        assert s.stop() == 0
    assert stored(data_dir) == Counter({"kept": 2, "after-bad-reload": 1})


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{pki}/cert.pem"], "--tls-cert and --tls-key"),
    (["--tls-client-ca", "{pki}/ca.pem"], "--tls-client-ca (SENSORLOG_TLS_CLIENT_CA) needs --tls-cert"),
    (["--tls-cert", "{pki}/cert.pem", "--tls-key", "{pki}/missing.key"], "--tls-key {pki}/missing.key: not a readable PEM private key"),
    (["--tls-cert", "{pki}/first.ext", "--tls-key", "{pki}/key.pem"], "--tls-cert {pki}/first.ext: "),
    (["--tls-cert", "{pki}/cert.pem", "--tls-key", "{pki}/client.key"], "do not make a TLS context"),
    (["--tls-cert", "{pki}/cert.pem", "--tls-key", "{pki}/key.pem", "--tls-client-ca", "{pki}/first.ext"], "--tls-client-ca {pki}/first.ext"),
])
def test_bad_tls_files_stop_startup(data_dir, pki, flags, message):
    flags = [f.format(pki=pki) for f in flags]
    s = Server(data_dir, extra=flags)
    with pytest.raises(AssertionError, match="exited with 64"):
        s.start(timeout=30)
    assert message.format(pki=pki) in open(s.log_path).read()


def test_beyond_loopback_without_tls_warns(data_dir, tmp_path):
    s = Server(data_dir, extra=["--bind", "0.0.0.0"]).start()
    try:
        assert "listening beyond loopback without TLS" in open(s.log_path).read()
    finally:
        s.stop()
