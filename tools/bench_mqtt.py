"""Driver of tools/bench-mqtt (see there)."""
import os, shutil, statistics, subprocess, sys, tempfile, threading, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, settle_disk, wait_healthy

SERVER = sys.argv[1]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
MESSAGES = int(os.environ.get("MESSAGES", "20000"))
PER = 100
SENSORS = 10_000
T0 = 1763978400 * 10**9


def payloads():
    """MESSAGES line-protocol payloads of 100 readings each, the standard workload's shape."""
    types = ["temperature", "humidity", "pressure"]
    out = []
    for m in range(MESSAGES):
        lines = []
        for j in range(PER):
            i = m * PER + j
            s, k = i % SENSORS, i // SENSORS
            lines.append(f"{types[s % 3]},sensor_id=sensor-{s:05d},location=site-{s % 50:02d} value={20 + i % 17}.5 {T0 + k * 10**9 + s * 1000}")
        out.append("\n".join(lines).encode())
    return out


def broker():
    d = tempfile.mkdtemp(prefix="bench-mosquitto-")
    port = free_port()
    with open(os.path.join(d, "m.conf"), "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
    p = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", os.path.join(d, "m.conf")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return p, port


def publish(port, bodies):
    """Publishes every body at QoS 1 as fast as the broker acknowledges (1 000 in flight)."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(f"sensors/site/bench", b, qos=1) for b in bodies]
    for info in infos:
        info.wait_for_publish(120)
    c.loop_stop()
    c.disconnect()


def ingested(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('sensorlog_readings_ingested_total{transport="mqtt"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_sensorlog(bodies):
    settle_disk()
    b, port = broker()
    d = tempfile.mkdtemp(prefix="bench-mqtt-")
    tcp, http_port = free_port(), free_port()
    p = subprocess.Popen([SERVER, "--data-dir", d, "--tcp-port", str(tcp), "--http-port", str(http_port),
                          "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--mqtt-client-id", "bench"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(http_port)
    time.sleep(0.5)  # subscribed (the log says so; the first message would wait in the session anyway)
    start = time.perf_counter()
    t = threading.Thread(target=publish, args=(port, bodies))
    t.start()
    while ingested(http_port) < len(bodies) * PER:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    t.join()
    p.terminate(); p.wait(); b.terminate(); b.wait()
    shutil.rmtree(d)
    return len(bodies) * PER / elapsed


def run_ceiling(bodies):
    """The same publisher into a subscriber that only acknowledges (mosquitto_sub, QoS 1)."""
    b, port = broker()
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-q", "1", "-t", "sensors/#", "-C", str(len(bodies)), "-i", "ceiling"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    start = time.perf_counter()
    t = threading.Thread(target=publish, args=(port, bodies))
    t.start()
    sub.wait(300)
    elapsed = time.perf_counter() - start
    t.join()
    b.terminate(); b.wait()
    return len(bodies) * PER / elapsed


bodies = payloads()
res = {"sensorlog": [], "ceiling": []}
for r in range(ROUNDS):
    for what in (("sensorlog", "ceiling") if r % 2 == 0 else ("ceiling", "sensorlog")):
        rate = run_sensorlog(bodies) if what == "sensorlog" else run_ceiling(bodies)
        res[what].append(rate)
        print(f"round {r} {what}: {rate / 1e3:.0f} k readings/s", flush=True)
ms, mc = statistics.median(res["sensorlog"]), statistics.median(res["ceiling"])
print(f"median sensorlog {ms / 1e3:.0f} k readings/s, broker ceiling {mc / 1e3:.0f} k readings/s, ratio {ms / mc:.2f}")
