"""The docs' promises about error codes, exit codes and metrics (issue 14, items 11 and 12), checked
against the code (tools/check-docs) and against a live /metrics (promtool)."""
import os, re, shutil, socket, subprocess
import pytest

from conftest import ROOT

CHECK = os.path.join(ROOT, "tools", "check-docs")
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def series(text):
    """Every sample of an exposition: (name, {label: value}, value)."""
    out = []
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def sample(text, name, **labels):
    """The value of one series, or None when it is absent."""
    for n, l, v in series(text):
        if n == name and all(l.get(k) == str(want) for k, want in labels.items()):
            return v
    return None


def scrape(server):
    status, body, headers = server.get("/metrics")
    assert status == 200
    return body.decode()


def test_error_codes_exit_codes_and_metrics_are_documented():
    r = subprocess.run([CHECK], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_check_docs_finds_an_undocumented_metric(tmp_path):
    # The check is not vacuous: a scrape with a family the docs do not list fails it.
    scraped = tmp_path / "metrics.txt"
    scraped.write_text("# HELP sensorlog_made_up_total Made up.\n# TYPE sensorlog_made_up_total counter\nsensorlog_made_up_total 0\n")
    r = subprocess.run([CHECK, "--metrics", str(scraped)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "sensorlog_made_up_total" in r.stderr


def test_series_alerts_use_exist_from_start_up(server):
    text = scrape(server)
    for reason in ["syntax", "duplicate", "type_mismatch", "too_old", "invalid_timestamp", "lost_at_shutdown"]:
        assert sample(text, "sensorlog_readings_rejected_total", transport="tcp", reason=reason) == 0, reason
    for reason in ["invalid_json", "duplicate", "type_mismatch", "too_old", "disk_full", "rate_limited", "body_too_large"]:
        assert sample(text, "sensorlog_readings_rejected_total", transport="http", reason=reason) == 0, reason
    assert sample(text, "sensorlog_http_requests_total", route="/sensor/data", status="503") == 0
    assert sample(text, "sensorlog_http_requests_total", route="/sensor/data", status="500") == 0
    assert sample(text, "sensorlog_consumer_lag", group="aggregator", partition="0") == 0
    assert sample(text, "sensorlog_tcp_connections") == 0


def test_live_metrics_pass_promtool_and_are_documented(server, tmp_path):
    assert shutil.which("promtool"), "promtool is missing: run tools/test, or `source tools/lib.sh; ensure_promtool`"
    # A reading over each door, one bad request, one method a known path does not serve.
    with socket.create_connection(("127.0.0.1", server.tcp)) as s:
        s.sendall(b"temperature,sensor_id=m1,location=lab value=21.5 1764000000000000000\n")
    assert server.post({"sensor_id": "m2", "type": "humidity", "value": 40.5, "location": "lab",
                        "timestamp": "2026-11-24T10:00:00Z"})[0] == 201
    assert server.request("POST", "/sensor/data", b"{not json", {"Content-Type": "application/json"})[0] == 400
    status, _, headers = server.request("GET", "/sensor/data")
    assert status == 405 and headers.get("Allow") == "POST"
    server.wait_metric("sensorlog_readings_ingested_total", 1, transport="tcp")

    text = scrape(server)
    assert sample(text, "sensorlog_readings_ingested_total", transport="http") == 1
    assert sample(text, "sensorlog_readings_rejected_total", transport="http", reason="invalid_json") == 1
    # The 405 is counted under its route's template, not as NotFound.
    assert sample(text, "sensorlog_http_requests_total", route="/sensor/data", status="405") == 1
    assert not [l for n, l, _ in series(text) if l.get("route") == "NotFound"]

    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))
    assert families and families <= set(helps), f"no HELP for {sorted(families - set(helps))}"
    assert "sensorlog_consumer_lag" in families

    scraped = tmp_path / "metrics.txt"
    scraped.write_text(text)
    r = subprocess.run(["promtool", "check", "metrics"], stdin=open(scraped), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([CHECK, "--metrics", str(scraped)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
