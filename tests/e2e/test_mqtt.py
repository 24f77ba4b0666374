"""sensorlogd as a subscriber of a real broker (Debian's mosquitto on a free loopback port),
published to by paho-mqtt at QoS 1: every reading stored exactly once across a kill -9, bad
payloads counted and acknowledged, the broker's absence survived."""
import json, os, shutil, signal, subprocess, tempfile, threading, time

import pytest
from conftest import Server, free_port, stats

T0 = 1763978400 * 10**9


class Broker:
    def __init__(self, port=None, tls=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sensorlog-mosquitto-")
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            # max_queued_messages 0: a persistent session keeps every message while sensorlogd is
            # away (the default, 1000, drops the rest: see docs/protocol.md).
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
            if tls:
                f.write(f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.stop()


def publisher(port, client_id="e2e-publisher"):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def payload(k, per=100):
    """Message k: 100 readings of sensor m-{k % 50}; line protocol or JSON by turns, the sensor id
    from the topic in every third."""
    sensor = f"m-{k % 50}"
    topic = f"sensors/yard/{sensor}"
    if k % 2 == 0:
        tag = "" if k % 3 == 0 else f",sensor_id={sensor}"
        body = "\n".join(f"temperature{tag},location=yard value={(k * per + i) % 40}.25 {T0 + (k * per + i) * 1000}" for i in range(per))
    else:
        items = [{"type": "temperature", "value": (k * per + i) % 40 + 0.25, "location": "yard",
                  "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((T0 + (k * per + i) * 1000) // 10**9))
                  + ".%09dZ" % ((T0 + (k * per + i) * 1000) % 10**9)} for i in range(per)]
        if k % 3:
            for item in items:
                item["sensor_id"] = sensor
        body = json.dumps(items)
    return topic, body


def mqtt_args(broker):
    return ["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-topic-template", "sensors/{location}/{sensor_id}",
            "--mqtt-client-id", "sensorlogd-e2e"]


def stored_total(data_dir):
    return sum(p["readings"] for p in stats(data_dir)["partitions"])


def test_a_kill_mid_stream_loses_and_duplicates_nothing(broker, data_dir):
    s = Server(data_dir, extra=mqtt_args(broker)).start()
    messages, per = 1000, 100
    pub = publisher(broker.port)
    killed = threading.Event()

    def publish_all():
        for k in range(messages):
            topic, body = payload(k, per)
            pub.publish(topic, body, qos=1).wait_for_publish(60)

    t = threading.Thread(target=publish_all)
    t.start()
    s.wait_metric("sensorlog_readings_ingested_total", 20_000, transport="mqtt")
    s.stop(signal.SIGKILL)
    killed.set()
    s.start()  # the broker kept the session: what was not acknowledged comes again
    t.join(300)
    assert not t.is_alive()
    deadline = time.time() + 120
    while time.time() < deadline and stored_total(data_dir) < messages * per:
        time.sleep(0.2)
    assert stored_total(data_dir) == messages * per
    from conftest import dump_all
    keys = [(r["sensor_id"], r["timestamp_ns"]) for r in dump_all(data_dir)]
    assert len(keys) == len(set(keys)) == messages * per
    assert set(keys) == {(f"m-{k % 50}", T0 + (k * per + i) * 1000) for k in range(messages) for i in range(per)}
    pub.loop_stop()
    s.stop()


def test_bad_payloads_are_counted_acknowledged_and_not_redelivered(broker, data_dir):
    s = Server(data_dir, extra=mqtt_args(broker)).start()
    pub = publisher(broker.port, "bad-publisher")
    for topic, body in [("sensors/yard/b1", "not line protocol"), ("sensors/yard/b1", "{\"value\": oops}"),
                        ("sensors/yard/b1", ""), ("sensors/b2", "temperature,location=l value=1 1")]:
        pub.publish(topic, body, qos=1).wait_for_publish(30)
    pub.publish("sensors/yard/marker", f"temperature value=1 {T0}", qos=1).wait_for_publish(30)
    s.wait_metric("sensorlog_readings_ingested_total", 1, transport="mqtt")
    assert s.metric("sensorlog_readings_rejected_total", transport="mqtt", reason="syntax") == 1
    assert s.metric("sensorlog_readings_rejected_total", transport="mqtt", reason="invalid_json") == 1
    assert s.metric("sensorlog_readings_rejected_total", transport="mqtt", reason="empty_payload") == 1
    assert s.metric("sensorlog_readings_rejected_total", transport="mqtt", reason="missing_sensor_id") == 1
    # Acknowledged: after a restart, only what is new arrives (the marker after it proves the order).
    s.stop()
    s.start()
    pub.publish("sensors/yard/marker", f"temperature value=2 {T0 + 1}", qos=1).wait_for_publish(30)
    s.wait_metric("sensorlog_readings_ingested_total", 1, transport="mqtt")
    assert s.metric("sensorlog_readings_rejected_total", transport="mqtt") == 0
    pub.loop_stop()
    s.stop()


def test_the_broker_away_at_start_and_later(data_dir):
    port = free_port()
    s = Server(data_dir, extra=["--mqtt-url", f"mqtt://127.0.0.1:{port}"]).start()
    try:
        # The other doors work while the broker is away.
        assert s.post({"sensor_id": "h1", "type": "temperature", "value": 1, "location": "l", "timestamp": "2025-11-24T10:00:00Z"})[0] == 201
        deadline = time.time() + 30
        while "cannot reach the MQTT broker" not in open(s.log_path).read():
            assert time.time() < deadline
            time.sleep(0.1)
        assert s.metric("sensorlog_mqtt_connected") == 0
        b = Broker(port)
        try:
            pub = publisher(port, "late-publisher")
            deadline = time.time() + 60
            while "MQTT subscribed" not in open(s.log_path).read():
                assert time.time() < deadline, "sensorlogd did not reach the broker once it came"
                time.sleep(0.1)
            pub.publish("sensors/late", f"temperature,sensor_id=late,location=l value=1 {T0}", qos=1).wait_for_publish(30)
            s.wait_metric("sensorlog_readings_ingested_total", 1, transport="mqtt")
            assert s.metric("sensorlog_mqtt_connected") == 1
            # The broker goes and comes back (without its sessions: persistence is off here), and
            # sensorlogd subscribes again by itself.
            b.stop()
            b = Broker(port)
            deadline = time.time() + 60
            while open(s.log_path).read().count("MQTT subscribed") < 2:
                assert time.time() < deadline, "sensorlogd did not subscribe again"
                time.sleep(0.1)
            pub2 = publisher(port, "late-publisher-2")
            pub2.publish("sensors/late", f"temperature,sensor_id=late,location=l value=2 {T0 + 1}", qos=1).wait_for_publish(30)
            s.wait_metric("sensorlog_readings_ingested_total", 2, transport="mqtt", timeout=90)
        finally:
            b.stop()
    finally:
        s.stop()


def make_ca_and_server_cert(directory):
    """A test CA and a certificate it signs for 127.0.0.1 and localhost (PEM files)."""
    import datetime, ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("sensorlog test CA")).issuer_name(name("sensorlog test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {k: os.path.join(directory, f"{k}.pem") for k in ("ca", "cert", "key")}
    open(paths["ca"], "wb").write(ca.public_bytes(serialization.Encoding.PEM))
    open(paths["cert"], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(paths["key"], "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                     serialization.NoEncryption()))
    # mosquitto started as root reads them as its own user: a test key, readable to it.
    os.chmod(directory, 0o755)
    for path in paths.values():
        os.chmod(path, 0o644)
    return paths


def test_tls_to_the_broker(data_dir):
    certs = make_ca_and_server_cert(tempfile.mkdtemp(prefix="sensorlog-mqtt-tls-"))
    b = Broker(tls=certs)
    try:
        # A broker whose certificate the system does not trust: refused, and said so.
        s = Server(data_dir, extra=["--mqtt-url", f"mqtts://127.0.0.1:{b.port}"]).start()
        deadline = time.time() + 30
        while "cannot reach the MQTT broker" not in open(s.log_path).read():
            assert time.time() < deadline
            time.sleep(0.1)
        s.stop()
        s = Server(data_dir, extra=["--mqtt-url", f"mqtts://127.0.0.1:{b.port}", "--mqtt-ca-file", certs["ca"]]).start()
        import paho.mqtt.client as mqtt
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-publisher")
        pub.tls_set(ca_certs=certs["ca"])
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        deadline = time.time() + 30
        while "MQTT subscribed" not in open(s.log_path).read():
            assert time.time() < deadline
            time.sleep(0.1)
        pub.publish("sensors/tls", f"temperature,sensor_id=tls-1,location=l value=1 {T0}", qos=1).wait_for_publish(30)
        s.wait_metric("sensorlog_readings_ingested_total", 1, transport="mqtt")
        pub.loop_stop()
        s.stop()
    finally:
        b.stop()
    # A CA file that cannot be read stops start-up with 64, before anything opens.
    r = subprocess.run([os.path.join(__import__("conftest").BIN, "sensorlogd"), "--data-dir", data_dir + "-x",
                        "--mqtt-url", "mqtts://127.0.0.1:1", "--mqtt-ca-file", "/nonexistent.pem"], capture_output=True, text=True)
    assert r.returncode == 64 and "mqtt-ca-file" in r.stderr
