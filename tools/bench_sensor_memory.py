#!/usr/bin/env python3
"""Memory per sensor: RSS growth of sensorlogd for 200 000 and 400 000 new sensor ids over TCP
(--max-sensors 0), the aggregator caught up; prints the marginal bytes per sensor.
usage: SENSORLOG_BIN=.build/release .venv/bin/python tools/bench_sensor_memory.py"""
import os, socket, subprocess, sys, time, tempfile, urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from conftest import Server
res = {}
for n in (200_000, 400_000):
    d = tempfile.mkdtemp()
    s = Server(d, extra=["--max-sensors", "0"]).start()
    rss = lambda: int(next(l.split()[1] for l in open(f"/proc/{s.proc.pid}/status") if l.startswith("VmRSS")))
    base = rss()
    with socket.create_connection(("127.0.0.1", s.tcp)) as c:
        buf = []
        for i in range(n):
            buf.append(b"temperature,sensor_id=sensor-%07d,location=x value=1 1764000000000000000\n" % i)
            if len(buf) == 10000: c.sendall(b"".join(buf)); buf = []
    s.wait_metric("sensorlog_readings_ingested_total", n, timeout=300)
    deadline=time.time()+120
    while any(l.startswith("sensorlog_consumer_lag") and not l.endswith(" 0.0") and not l.endswith(" 0") for l in urllib.request.urlopen(f"http://127.0.0.1:{s.http}/metrics").read().decode().splitlines() if 'aggregator' in l):
        time.sleep(0.2)
        if time.time()>deadline: break
    time.sleep(1)
    res[n] = rss() - base
    s.stop()
    print(n, res[n], "KiB")
print("marginal bytes/sensor:", (res[400_000]-res[200_000])*1024/200_000)
