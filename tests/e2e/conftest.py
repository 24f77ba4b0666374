"""A real sensorlogd for each test: built by tools/test, on a scratch data dir and free ports."""
import json, os, signal, socket, subprocess, tempfile, time, urllib.request, urllib.error
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SENSORLOG_BIN") or subprocess.run(
    ["swift", "build", "--show-bin-path"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, data_dir, extra=(), env=None, preexec=None):
        self.data_dir = data_dir
        self.preexec = preexec  # run in the child before exec (e.g. lower its open-file limit)
        self.tcp, self.http = free_port(), free_port()
        self.extra, self.env = list(extra), env
        self.proc = None
        # With --tls-cert: "https" and a client context that trusts the test's CA.
        self.scheme, self.ssl = "http", None
        self.log_path = os.path.join(data_dir + "-sensorlogd.log")

    def start(self, timeout=60, poll_seconds=0.1):
        """Starts sensorlogd and waits for /health, asking every `poll_seconds` (the soak asks
        every 10 ms: it measures restart times with this)."""
        env = dict(os.environ, **(self.env or {}))
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([os.path.join(BIN, "sensorlogd"), "--data-dir", self.data_dir, "--tcp-port", str(self.tcp),
                                          "--http-port", str(self.http)] + self.extra, stdout=log, stderr=log, env=env,
                                         preexec_fn=self.preexec)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"sensorlogd exited with {self.proc.returncode}: {open(self.log_path).read()[-500:]}"
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(poll_seconds)
        raise AssertionError("sensorlogd did not become healthy")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def request(self, method, path, body=None, headers=None, timeout=10):
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.http}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def post(self, doc, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request("POST", "/sensor/data", json.dumps(doc).encode(), h)

    def metric(self, name, **labels):
        status, body, _ = self.get("/metrics")
        total, seen = 0.0, False
        for line in body.decode().splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                series, _, value = line.rpartition(" ")
                if series == name or series.startswith(name + "{"):
                    total += float(value)
                    seen = True
        return total if seen else 0.0

    def wait_metric(self, name, at_least, timeout=60, **labels):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.metric(name, **labels) >= at_least:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels} = {self.metric(name, **labels)}, expected >= {at_least}")


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="sensorlog-e2e-")
    yield d


@pytest.fixture
def server(data_dir):
    s = Server(data_dir).start()
    yield s
    s.stop()


def stats(data_dir):
    r = subprocess.run([os.path.join(BIN, "sensorlog"), "stats", "--data-dir", data_dir, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def dump_all(data_dir):
    """Every reading in the log, from the segment files (`sensorlog dump --json`), as dicts."""
    out = []
    for p in range(len(stats(data_dir)["partitions"])):
        r = subprocess.run([os.path.join(BIN, "sensorlog"), "dump", "--data-dir", data_dir, "--partition", str(p), "--json"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out += [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return out
