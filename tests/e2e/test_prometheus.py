"""deploy/prometheus/sensorlog-rules.yml against a real Prometheus scraping a real sensorlogd: the
rules load and evaluate without error on the live exposition, every metric they name is one
sensorlogd exports under that name, and what Prometheus stores agrees with what was sent.
promtool's unit tests (tools/test) check when each alert fires; this checks they watch real series.
sensorlogd serves TLS here (the certificate alerts need its series), so Prometheus scrapes https."""
import json, os, re, shutil, signal, socket, ssl, subprocess, time, urllib.parse, urllib.request
import pytest

from conftest import ROOT, Server, free_port
from test_tls import client_context, make_ca, make_leaf

RULES = os.path.join(ROOT, "deploy", "prometheus", "sensorlog-rules.yml")
BASE = 1_764_000_000_000_000_000
TCP_READINGS, HTTP_READINGS = 500, 20


class Prometheus:
    def __init__(self, tmp_path, target, ca_file):
        self.port = free_port()
        self.dir = tmp_path
        config = tmp_path / "prometheus.yml"
        # 1 s scrapes and evaluations so the test waits seconds, not the production 15 s.
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(RULES)}\n"
            "scrape_configs:\n"
            # The job name the rules select `up` by (SensorlogDown).
            f"  - job_name: sensorlog\n    scheme: https\n    tls_config:\n      ca_file: {json.dumps(str(ca_file))}\n"
            f"    static_configs:\n      - targets: [\"{target}\"]\n")
        self.log_path = tmp_path / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log, cwd=tmp_path)

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def wait(self, what, check, timeout=90):
        """Polls `check` until it returns something truthy, which it returns; the last value and
        Prometheus's log tail otherwise."""
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}: {self.tail()}"
            try:
                last = check()
                if last:
                    return last
            except OSError as e:  # not listening yet
                last = e
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}; prometheus log: {self.tail()}")

    def tail(self):
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def scalar(result):
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def tls_server(data_dir, tmp_path):
    make_ca(tmp_path, "ca")
    cert, key = make_leaf(tmp_path, "ca", "server", "server")
    s = Server(data_dir, extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    s.scheme, s.ssl = "https", client_context(tmp_path)
    yield s.start()
    s.stop()


def test_rules_load_and_evaluate_on_a_live_server_scraped_by_prometheus(tls_server, tmp_path):
    assert shutil.which("prometheus"), "prometheus is missing: run tools/test, or `source tools/lib.sh; ensure_promtool`"
    server = tls_server
    prom = Prometheus(tmp_path, f"127.0.0.1:{server.http}", tmp_path / "ca.pem")
    try:
        with server.ssl.wrap_socket(socket.create_connection(("127.0.0.1", server.tcp)), server_hostname="localhost") as s:
            s.sendall(b"".join(f"temperature,sensor_id=p{i % 50},location=lab value=21.5 {BASE + i}\n".encode()
                               for i in range(TCP_READINGS)))
        assert server.post([{"sensor_id": f"h{i}", "type": "humidity", "value": 40.5, "location": "lab",
                             "timestamp": f"2026-11-24T10:00:00.{i:09d}Z"} for i in range(HTTP_READINGS)])[0] == 201
        server.wait_metric("sensorlog_readings_ingested_total", TCP_READINGS + HTTP_READINGS)

        total = TCP_READINGS + HTTP_READINGS
        prom.wait("every reading in Prometheus",
                  lambda: scalar(prom.query("sum(sensorlog_readings_ingested_total)")) == total)
        assert scalar(prom.query('sensorlog_readings_ingested_total{transport="tcp"}')) == TCP_READINGS
        assert scalar(prom.query('sensorlog_readings_ingested_total{transport="http"}')) == HTTP_READINGS

        targets = prom.api("targets")["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("sensorlog", "up")], targets
        assert scalar(prom.query('up{job="sensorlog"}')) == 1

        # Every group evaluated at least once (health "unknown" before), none with an error:
        # an expression that does not parse or a vector-matching error shows here.
        def evaluated():
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return groups if rules and all(r["health"] == "ok" for r in rules) else None
        groups = prom.wait("every rule evaluated with health ok", evaluated)
        assert {g["name"] for g in groups} == {
            "sensorlog-availability", "sensorlog-ingest", "sensorlog-log", "sensorlog-consumers", "sensorlog-http", "sensorlog-tls"}
        assert sorted(r["name"] for g in groups for r in g["rules"]) == sorted(re.findall(r"- alert: (\w+)", open(RULES).read()))
        assert not [r for g in groups for r in g["rules"] if r.get("lastError")]

        # The rules name metrics by hand: each must be a series sensorlogd exports, or its alert
        # could never fire. Two appear later: the MQTT gauge only with --mqtt-url, the skipped
        # counter at a group's first skip (its rule counts a series that new whole).
        later = {"sensorlog_mqtt_connected", "sensorlog_consumer_group_skipped_total"}
        names = set(re.findall(r"\bsensorlog_[a-z_]+", open(RULES).read())) - later
        missing = [n for n in sorted(names) if not prom.query(f"count({n})")]
        assert not missing, f"the rules name series Prometheus does not have: {missing}"
        # The metric's own `job` label arrives renamed, as SensorlogMaintenanceFailing expects.
        assert prom.query('sensorlog_maintenance_jobs_total{exported_job="retention", outcome="failed"}')
    finally:
        prom.stop()
