"""Cluster mode's parts for tests and tools/cluster-test: three real nats-servers (JetStream, file
storage, `sync_interval: always`) on loopback, and sensorlogd nodes joined to them."""
import json, os, signal, subprocess, tempfile, time
from conftest import ROOT, Server, free_port

NATS_SERVER = os.environ.get("SENSORLOG_NATS_SERVER") or os.path.join(ROOT, ".venv", "bin", "nats-server")


class NATSCluster:
    def __init__(self, root=None, size=3):
        self.root = root or tempfile.mkdtemp(prefix="sensorlog-nats-")
        os.makedirs(self.root, exist_ok=True)
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.procs = [None] * size
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        for i in range(size):
            with open(self.config(i), "w") as f:
                f.write(f"server_name: n{i + 1}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                        f"jetstream {{ store_dir: \"{self.root}/n{i + 1}\", sync_interval: always }}\n"
                        f"cluster {{ name: sensorlog-test, listen: 127.0.0.1:{self.cluster_ports[i]}, routes: [{routes}] }}\n")
        for i in range(size):
            self.start(i)
        self.wait_ready()

    def config(self, i):
        return os.path.join(self.root, f"n{i + 1}.conf")

    @property
    def urls(self):
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, i):
        with open(os.path.join(self.root, f"n{i + 1}.log"), "ab") as log:
            self.procs[i] = subprocess.Popen([NATS_SERVER, "-c", self.config(i)], stdout=log, stderr=log)

    def signal(self, i, sig):
        self.procs[i].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[i].wait()

    def wait_ready(self, timeout=30):
        """Until every server listens and JetStream has a meta leader (a stream can be made)."""
        import socket
        deadline = time.time() + timeout
        for port in self.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.time() < deadline, f"nats-server on {port} did not listen"
                    time.sleep(0.05)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()


def node(nats, name, data_dir=None, extra=()):
    """A sensorlogd node of `nats`'s cluster (not started)."""
    d = data_dir or tempfile.mkdtemp(prefix=f"sensorlog-{name}-")
    return Server(d, extra=["--cluster", nats.urls, "--node-id", name] + list(extra))


def status(server):
    code, body, _ = server.get("/cluster")
    assert code == 200, body
    return json.loads(body)


def wait_owned(servers, timeout=60):
    """Until every partition has an owner that says so, as every live node sees it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            views = [status(s) for s in servers]
            owners = [{p["partition"]: p.get("owner") for p in v["partitions"]} for v in views]
            here = set()
            for v in views:
                here |= {p["partition"] for p in v["partitions"] if p["owned_here"]}
            members = all(len(v["members"]) == len(servers) for v in views)
            if members and all(o and all(o.values()) for o in owners) and len(here) == len(views[0]["partitions"]):
                return views
        except (OSError, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not every partition is owned: {[status(s) for s in servers]}")
