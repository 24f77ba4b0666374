"""What TLS costs (issue 20): the same sensorlogd binary, plain then TLS, interleaved ROUNDS times,
each run against a fresh server and data directory:
  post    POST /sensor/data, one reading a request over keep-alive connections (wrk -t2 -c16)
  connect a new connection for every request (wrk with Connection: close): the handshake's cost
  lines  2 000 000 line-protocol lines over one connection (plain socket or TLS), until ingested
Prints each run and the median ratio TLS/plain per workload, with server CPU per request or line.

usage: .venv/bin/python tools/bench_tls.py .build/release/sensorlogd   (env: ROUNDS=5, SECONDS_PER_RUN=6)"""
import os, re, socket, ssl, statistics, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, POST_SCRIPT

ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "6"))
LINES = 2_000_000
BASE = 1_763_978_400 * 10**9


def make_pki(d):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=bench CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
            "-days", "1", "-extfile", "san.ext")


class Server:
    def __init__(self, binary, pki, tls):
        # No wait for a quiet disk (bench_ingest's settle_disk): what TLS costs is CPU, and
        # fsync is on its default interval, off the request path.
        self.data = tempfile.mkdtemp(prefix="bench-tls-")
        self.tcp, self.http = free_port(), free_port()
        extra = ["--tls-cert", f"{pki}/server.pem", "--tls-key", f"{pki}/server.key"] if tls else []
        self.ctx = ssl.create_default_context(cafile=f"{pki}/ca.pem") if tls else None
        self.scheme = "https" if tls else "http"
        self.proc = subprocess.Popen([binary, "--data-dir", self.data, "--tcp-port", str(self.tcp), "--http-port", str(self.http),
                                      "--log-level", "warning"] + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/health", context=self.ctx, timeout=2).status == 200:
                    break
            except OSError:
                assert time.time() < deadline, "sensorlogd did not start"
                time.sleep(0.1)

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.http}"

    def cpu(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def ingested(self):
        body = urllib.request.urlopen(f"{self.url}/metrics", context=self.ctx).read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith("sensorlog_readings_ingested_total"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["rm", "-rf", self.data])


def wrk(server, lua, close):
    args = ["wrk", "-t2", "-c16", f"-d{SECONDS}s", "-s", lua]
    if close:
        args += ["-H", "Connection: close"]
    c0 = server.cpu()
    out = subprocess.run(args + [f"{server.url}/"], capture_output=True, text=True, check=True).stdout
    c1 = server.cpu()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), (c1 - c0) * 1e6 / max(1, requests)


def lines(server, payload):
    c0, t0 = server.cpu(), time.time()
    sock = socket.create_connection(("127.0.0.1", server.tcp))
    if server.ctx:
        sock = server.ctx.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(payload)
    while server.ingested() < LINES:
        time.sleep(0.01)
    seconds = time.time() - t0
    sock.close()
    return LINES / seconds, (server.cpu() - c0) * 1e6 / LINES


def main():
    binary = sys.argv[1]
    pki = tempfile.mkdtemp(prefix="bench-tls-pki-")
    make_pki(pki)
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(POST_SCRIPT)
    lua.close()
    payload = b"".join(f"temperature,sensor_id=s{i % 10_000},location=hall value={i % 1000 / 10} {BASE + i * 1_000_000}\n".encode()
                       for i in range(LINES))
    ratios = {"post": [], "connect": [], "lines": []}
    for r in range(ROUNDS):
        for workload in ratios:
            got = {}
            for tls in (False, True):
                server = Server(binary, pki, tls)
                try:
                    got[tls] = lines(server, payload) if workload == "lines" else wrk(server, lua.name, workload == "connect")
                finally:
                    server.stop()
                unit = "lines/s" if workload == "lines" else "req/s"
                print(f"round {r + 1} {workload:7} {'tls  ' if tls else 'plain'}: {got[tls][0]:9.0f} {unit}, server CPU {got[tls][1]:6.1f} µs each",
                      flush=True)
            ratios[workload].append(got[True][0] / got[False][0])
    for workload, xs in ratios.items():
        print(f"{workload}: TLS/plain per round " + ", ".join(f"{x:.2f}" for x in xs) + f"; median {statistics.median(xs):.2f}")
    os.unlink(lua.name)


if __name__ == "__main__":
    main()
