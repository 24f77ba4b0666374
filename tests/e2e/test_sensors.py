"""The sensor catalogue: GET /sensors (filters, paging), GET /sensors/{id}, and `sensorlog sensors`
from the files, all from the aggregates, equal to what was written."""
import json, os, subprocess, time

from conftest import BIN, Server

T0 = 1763978400


def settled(s, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        groups = json.loads(s.get("/groups")[1])["groups"]
        if all(p["lag"] == 0 for g in groups if g["group"] == "aggregator" for p in g["partitions"]):
            return
        time.sleep(0.05)
    raise AssertionError("the aggregator did not catch up")


def test_the_catalogue_pages_filters_and_matches_the_tool(data_dir):
    s = Server(data_dir).start()
    try:
        lines, expected = [], {}
        for i in range(250):
            sensor, kind = f"cat-{i:03d}", ("temperature", "humidity", "pressure")[i % 3]
            n = 1 + i % 4
            for k in range(n):
                # The last reading moves hall-a sensors to hall-b: the catalogue shows the latest.
                location = "hall-b" if (i % 5 == 0 and k == n - 1) else "hall-a"
                lines.append(f"{kind},sensor_id={sensor},location={location} value={50 + k} {T0 + k * 1800 + i}")
            expected[sensor] = {"sensor_id": sensor, "type": kind, "location": "hall-b" if i % 5 == 0 else "hall-a", "count": n,
                                "first_reading": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + i)),
                                "last_reading": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + (n - 1) * 1800 + i))}
        assert s.request("POST", "/api/v2/write?precision=s", "\n".join(lines).encode())[0] == 204
        settled(s)
        # Every sensor, by id, 100 a page.
        got, cursor = [], None
        while True:
            page = json.loads(s.get("/sensors?limit=100" + (f"&cursor={cursor}" if cursor else ""))[1])
            got += page["sensors"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [g["sensor_id"] for g in got] == sorted(expected)
        assert {g["sensor_id"]: g for g in got} == expected
        humidity = json.loads(s.get("/sensors?type=humidity&limit=10000")[1])["sensors"]
        assert {g["sensor_id"] for g in humidity} == {k for k, v in expected.items() if v["type"] == "humidity"}
        moved = json.loads(s.get("/sensors?location=hall-b")[1])["sensors"]
        assert {g["sensor_id"] for g in moved} == {k for k, v in expected.items() if v["location"] == "hall-b"}
        prefixed = json.loads(s.get("/sensors?prefix=cat-01")[1])["sensors"]
        assert [g["sensor_id"] for g in prefixed] == [f"cat-{i:03d}" for i in range(10, 20)]
        assert json.loads(s.get("/sensors/cat-007")[1]) == expected["cat-007"]
        status, body, _ = s.get("/sensors/nobody")
        assert status == 404 and json.loads(body)["error"]["code"] == "unknown_sensor"
        assert s.get("/sensors?limit=0")[0] == 400 and s.get("/sensors?limit=10001")[0] == 400
        tool = subprocess.run([os.path.join(BIN, "sensorlog"), "sensors", "--data-dir", data_dir, "--json"], capture_output=True, text=True)
        assert tool.returncode == 0, tool.stderr
        assert json.loads(tool.stdout)["sensors"] == [expected[k] for k in sorted(expected)]
        tool = subprocess.run([os.path.join(BIN, "sensorlog"), "sensors", "--data-dir", data_dir, "--type", "pressure", "--limit", "3"],
                              capture_output=True, text=True)
        assert tool.returncode == 0 and len(tool.stdout.strip().splitlines()) == 4, tool.stdout
    finally:
        s.stop()
