"""Cluster mode end to end (issue 21): three real nats-servers (`sync_interval: always`) and three
sensorlogd nodes on loopback; producers over TCP and HTTP (`/write`) to random nodes and over MQTT
through a real mosquitto (the nodes share one subscription), a fifth of the readings resent, half
of those after the streams' duplicate window (2 s here); faults at scripted points: kill -9 of an
owning node, an owner stopped past its lease (the zombie) and woken, kill -9 of a stream's
leader (a nats-server), another nats-server stopped and woken. Separately: retention on the
streams, with a node that joins after the purge.

At the end, every node holds every reading exactly once, the nodes' logs are equal, every node's
aggregates equal a reference fold of the distinct readings, and a fresh empty node catches up from
the streams alone and rebuilds the same aggregates from offset zero.

The seed comes from SENSORLOG_CLUSTER_SEED (else two fixed ones) and is printed."""
import calendar, json, os, random, signal, socket, subprocess, threading, time
import pytest
from conftest import BIN, dump_all, stats
from cluster import NATSCluster, node, status, wait_owned
from test_exactly_once import workload, line, reference, stored, check, wait_settled
from test_mqtt import Broker, publisher

SEEDS = [int(os.environ["SENSORLOG_CLUSTER_SEED"])] if os.environ.get("SENSORLOG_CLUSTER_SEED") else [21, 22]
LEASE_SECONDS = 3  # --cluster-lease-seconds: shorter than the default 6, to keep the test short
DUP_WINDOW = 2  # --cluster-duplicate-window-seconds: short, so that resends come after it
MQTT_TOPIC = "$share/sensorlog/sensors/#"  # one shared subscription: the broker spreads messages over the nodes


def key(r):
    return (r[0], r[4])


def by_mqtt(r):
    """A fifth of the sensors publish over MQTT only (their resends too), so that a reading the
    broker took and no node stored cannot be healed by a resend through another door."""
    return sum(r[0].encode()) % 5 == 0


class Producer:
    """Sends readings to random live nodes and remembers which the cluster acknowledged: a
    `/write` answered 204. TCP has no acknowledgement: what went that way is sent again over HTTP
    until acknowledged, as a careful producer does. The MQTT sensors' readings are acknowledged
    by the broker (QoS 1) and must reach the log from there alone."""

    def __init__(self, nodes, rnd, broker):
        self.nodes, self.rnd = nodes, rnd
        self.acked, self.sent, self.checked = set(), [], 0
        self.sent_at, self.late_resends, self.early_resends = {}, 0, 0
        self.mqtt_sent, self.published = [], 0
        self.mqtt = publisher(broker.port, client_id="cluster-test-devices")

    def live(self):
        return [n for n in self.nodes if n.proc and n.proc.poll() is None and not getattr(n, "stopped", False)]

    def resends(self, pool, rows, n):
        """`n` readings to send again: half sent more than the duplicate window ago, half from
        `rows` (sent moments before, well within it)."""
        now = time.time()
        old = [r for r in pool if now - self.sent_at[key(r)] > DUP_WINDOW + 1]
        late = self.rnd.sample(old, min(len(old), n // 2))
        early = self.rnd.sample(rows, min(len(rows), n - len(late)))
        self.late_resends += len(late)
        self.early_resends += len(early)
        return late, early

    def record(self, rows):
        """Readings sent outside `send` (to be acknowledged by `settle`)."""
        self.sent += rows
        self.sent_at.update((key(r), time.time()) for r in rows)

    def send(self, rows, resend_fraction=0.2):
        over_mqtt = [r for r in rows if by_mqtt(r)]
        rows = [r for r in rows if not by_mqtt(r)]
        self.publish(over_mqtt, resend_fraction)
        late, early = self.resends(self.sent, rows, int(len(rows) * resend_fraction))
        # Half the late resends of readings the cluster acknowledged go as JSON, whose answer says
        # reading by reading whether it was stored again: an acknowledged reading lost (and so
        # stored again by the resend) fails here instead of being healed unseen.
        acked = [r for r in late if key(r) in self.acked]
        as_json = acked[:len(acked) // 2]
        self.check_acked(as_json)
        skip = {key(r) for r in as_json}
        self.record(rows)
        batch = rows + early + [r for r in late if key(r) not in skip]
        for i in range(0, len(batch), 200):
            chunk = batch[i:i + 200]
            target = self.rnd.choice(self.live())
            if self.rnd.random() < 0.3:
                started = time.time()
                try:
                    c = socket.create_connection(("127.0.0.1", target.tcp), timeout=5)
                    c.sendall(b"".join(line(r) for r in chunk))
                    c.close()
                except OSError as e:
                    print(f"    TCP send to {name(target)} failed after {time.time() - started:.1f} s: {e}", flush=True)
            else:
                self.write(target, chunk)

    def publish(self, rows, resend_fraction):
        """Over MQTT, QoS 1, 50 readings a message; resends are published again the same way."""
        late, early = self.resends(self.mqtt_sent, rows, int(len(rows) * resend_fraction))
        self.mqtt_sent += rows
        self.sent_at.update((key(r), time.time()) for r in rows)
        batch = rows + early + late
        for i in range(0, len(batch), 50):
            info = self.mqtt.publish(f"sensors/cluster/{i}", b"".join(line(r) for r in batch[i:i + 50]), qos=1)
            started = time.time()
            info.wait_for_publish(timeout=30)
            if time.time() - started > 2:
                print(f"    slow MQTT publish: {time.time() - started:.1f} s", flush=True)
            assert info.is_published(), "mosquitto did not acknowledge a publish"
            self.published += 1

    def write(self, target, chunk):
        started = time.time()
        try:
            code, body, _ = target.request("POST", "/write?precision=ns", b"".join(line(r) for r in chunk), timeout=30)
        except OSError:
            return False
        finally:
            if time.time() - started > 2:
                print(f"    slow write: {time.time() - started:.1f} s to {name(target)}", flush=True)
        if code == 204:
            self.acked |= {(r[0], r[4]) for r in chunk}
            return True
        assert code == 503, (code, body)  # the owner is changing: retried later
        return False

    def check_acked(self, rows):
        for i in range(0, len(rows), 200):
            chunk = rows[i:i + 200]
            doc = [{"sensor_id": r[0], "type": r[1], "value": r[2], "location": r[3], "timestamp": iso(r[4])} for r in chunk]
            while True:
                target = self.rnd.choice(self.live())
                started = time.time()
                try:
                    code, body, _ = target.request("POST", "/sensor/data", json.dumps(doc).encode(),
                                                   {"Content-Type": "application/json"}, timeout=30)
                except OSError as e:
                    print(f"    resend as JSON to {name(target)} failed after {time.time() - started:.1f} s: {e}", flush=True)
                    continue
                if code == 503:
                    print(f"    resend as JSON to {name(target)}: 503 after {time.time() - started:.1f} s", flush=True)
                    time.sleep(0.2)
                    continue
                assert code in (200, 201), (code, body)
                answer = json.loads(body)
                assert answer["accepted"] == 0, f"acknowledged readings stored again (lost before?): {answer}"
                self.checked += len(chunk)
                break

    def settle(self, deadline_seconds=120):
        """Until every reading sent has been acknowledged once over HTTP."""
        deadline = time.time() + deadline_seconds
        pending = [r for r in self.sent if key(r) not in self.acked]
        while pending:
            assert time.time() < deadline, f"{len(pending)} readings never acknowledged"
            chunk, pending = pending[:500], pending[500:]
            if not self.write(self.rnd.choice(self.live()), chunk):
                pending += chunk
                time.sleep(0.2)


def paced(connection, rows):
    """Sends `rows` ten at a time with a pause between, until done or the connection fails."""
    try:
        for i in range(0, len(rows), 10):
            connection.sendall(b"".join(line(r) for r in rows[i:i + 10]))
            time.sleep(0.002)
    except OSError:
        pass


def name(server):
    return server.extra[server.extra.index("--node-id") + 1]


def owner_of(nodes, partition):
    for n in nodes:
        if n.proc and n.proc.poll() is None and not getattr(n, "stopped", False):
            for p in status(n)["partitions"]:
                if p["partition"] == partition and p.get("owner"):
                    return next(m for m in nodes if name(m) == p["owner"])
    raise AssertionError(f"no owner of partition {partition}")


def settled(nodes, distinct, timeout=120):
    deadline = time.time() + timeout
    for n in nodes:
        while True:
            parts = status(n)["partitions"]
            if all(p.get("lag") == 0 for p in parts) and sum(p["local_end"] for p in parts) >= distinct:
                break
            assert time.time() < deadline, f"{n.data_dir} did not catch up: {parts}"
            time.sleep(0.1)
        wait_settled(n, distinct, timeout=max(1, deadline - time.time()))


def iso(ns):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def nanoseconds(iso):
    """`2025-11-24T09:00:23.122861238Z` (as `sensorlog dump --json` writes) in Unix nanoseconds."""
    whole, _, fraction = iso.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int((fraction + "000000000")[:9])


def readings(data_dir):
    return sorted((r["sensor_id"], nanoseconds(r["timestamp"]), r["value"]) for r in dump_all(data_dir) if "value" in r)


@pytest.mark.parametrize("seed", SEEDS)
def test_faults_then_every_node_holds_every_reading_once(seed, tmp_path):
    print(f"seed {seed} (SENSORLOG_CLUSTER_SEED)")
    t0 = time.time()
    def phase(name):
        print(f"  {time.time() - t0:6.1f} s  {name}", flush=True)
    rnd = random.Random(seed)
    nats = NATSCluster(root=str(tmp_path / "nats"))
    broker = Broker()
    lease = ["--cluster-lease-seconds", str(LEASE_SECONDS), "--cluster-duplicate-window-seconds", str(DUP_WINDOW)]
    mqtt = lambda i: ["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-topic", MQTT_TOPIC, "--mqtt-client-id", f"sensorlogd-s{i}"]
    nodes = [node(nats, f"s{i}", data_dir=str(tmp_path / f"s{i}"), extra=lease + mqtt(i)) for i in range(3)]
    producer = None
    try:
        for n in nodes:
            n.start()
        wait_owned(nodes)
        phase("owned")
        # The operator's view, from any node: every member, an owner for every partition.
        r = subprocess.run([os.path.join(BIN, "sensorlog"), "cluster", "status", "--url", f"http://127.0.0.1:{nodes[1].http}"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "members: s0, s1, s2" in r.stdout and "(none)" not in r.stdout, r.stdout
        # One value per (sensor, timestamp): which of two values lands first is up to the race
        # between nodes, so the workload has no such pair (resends repeat a reading whole).
        rows = list({(r[0], r[4]): r for r in reversed(workload(9_000, sensors=300, seed=seed))}.values())[::-1]
        k = len(rows) // 3
        thirds = [rows[:k], rows[k:2 * k], rows[2 * k:]]
        producer = Producer(nodes, rnd, broker)
        producer.send(thirds[0][:k // 2])

        # kill -9 an owning node: its partitions are taken over once its leases expire.
        victim = owner_of(nodes, rnd.randrange(8))
        victim.stop(signal.SIGKILL)
        phase("victim killed")
        producer.send(thirds[0][k // 2:])
        victim.start()
        phase("victim restarted")

        # The zombie: an owner stopped past its lease while its appends are in flight, then woken.
        # Its readings are paced over TCP, and the stop comes once its log is seen growing: the
        # node is stopped in the middle of a stream of appends, not before the first.
        zombie = owner_of(nodes, rnd.randrange(8))
        first = thirds[1][:k // 3]
        producer.record([r for r in first if not by_mqtt(r)])
        c = socket.create_connection(("127.0.0.1", zombie.tcp))
        before = sum(p["local_end"] for p in status(zombie)["partitions"])
        pacer = threading.Thread(target=paced, args=(c, [r for r in first if not by_mqtt(r)]))
        pacer.start()
        deadline = time.time() + 30
        while sum(p["local_end"] for p in status(zombie)["partitions"]) < before + 50:
            assert time.time() < deadline, "the zombie's log did not grow"
        zombie.proc.send_signal(signal.SIGSTOP)
        zombie.stopped = True
        producer.publish([r for r in first if by_mqtt(r)], 0.2)
        producer.send(thirds[1][k // 3:2 * k // 3])
        time.sleep(max(0, LEASE_SECONDS + 2 - 0))  # past its lease on the servers' clocks
        zombie.proc.send_signal(signal.SIGCONT)
        phase("zombie woken")
        zombie.stopped = False
        pacer.join()
        c.close()

        # kill -9 the leader of a partition's stream, and stop another nats-server for a while.
        leader = status(nodes[0])["partitions"][rnd.randrange(8)]["stream_leader"]
        dead = int(leader.lstrip("n")) - 1  # server_name n1..n3
        nats.signal(dead, signal.SIGKILL)
        producer.send(thirds[1][2 * k // 3:])
        nats.start(dead)
        phase("nats restarted")
        paused = (dead + 1) % 3
        nats.signal(paused, signal.SIGSTOP)
        producer.send(thirds[2][:k // 6])  # few requests: each may wait out a forward's 10 s
        phase("sent while a nats-server is stopped")
        nats.signal(paused, signal.SIGCONT)
        producer.send(thirds[2][k // 6:])
        phase("sent the rest")

        producer.settle()
        phase("settled")
        assert producer.checked > 50, producer.checked  # acknowledged readings resent and found stored once
        assert producer.late_resends > 300 and producer.early_resends > 300, (producer.late_resends, producer.early_resends)
        assert producer.published > 20 and len(producer.mqtt_sent) > 1000, (producer.published, len(producer.mqtt_sent))
        print(f"  resends: {producer.late_resends} after the duplicate window, {producer.early_resends} within it; "
              f"{len(producer.mqtt_sent)} readings in {producer.published} MQTT messages", flush=True)
        distinct = len({key(r) for r in rows})
        assert producer.acked == {key(r) for r in rows if not by_mqtt(r)}
        settled(nodes, distinct)
        phase("caught up")
        # Every node's own report (a second old at most) comes to lag 0 on every partition.
        deadline = time.time() + 15
        while True:
            view = status(nodes[0])
            if {n["node"] for n in view["nodes"]} == {"s0", "s1", "s2"} and all(max(n["lag"]) == 0 for n in view["nodes"]):
                break
            assert time.time() < deadline, view["nodes"]
            time.sleep(0.2)
        # The broker spread the shared subscription's messages: more than one node ingested some.
        over_mqtt = [n.metric("sensorlog_readings_ingested_total", transport="mqtt") or 0 for n in nodes]
        assert sum(1 for m in over_mqtt if m > 0) >= 2, over_mqtt
        for n in nodes:
            assert n.stop() == 0
        ref = reference(rows)
        expected = sorted({(r[0], r[4]): (r[0], r[4], r[2]) for r in rows}.values())
        logs = [readings(n.data_dir) for n in nodes]
        for got in logs:
            assert len(got) == len(set((g[0], g[1]) for g in got)), "a reading stored twice"
            assert got == expected
        phase("checked")
        aggregates = [stored(os.path.join(n.data_dir, "aggregates.sqlite")) for n in nodes]
        for a in aggregates:
            check(a, ref)

        # A fresh node catches up from the streams alone; its rebuild equals the live rows.
        fresh = node(nats, "s3", data_dir=str(tmp_path / "s3"), extra=lease).start()
        settled([fresh], distinct)
        assert fresh.stop() == 0
        assert readings(fresh.data_dir) == expected
        out = str(tmp_path / "rebuilt.sqlite")
        r = subprocess.run([os.path.join(BIN, "sensorlog"), "rebuild-aggregates", "--data-dir", fresh.data_dir, "--output", out],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rebuilt = stored(out)
        check(rebuilt, ref)
        assert {k: v[:4] for k, v in rebuilt.items()} == {k: v[:4] for k, v in aggregates[0].items()}
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.stop(signal.SIGKILL)
        nats.stop()
        if producer:
            producer.mqtt.loop_stop()
            producer.mqtt.disconnect()
        broker.stop()


def test_retention_purges_the_streams_and_a_late_node_starts_at_their_floor(tmp_path):
    """Retention acts on the streams too: readings older than --retention-time leave every node's
    log, and each partition's owner purges its stream below its log's start. A node that joins
    afterwards starts its copy at the stream's floor, holds what the others hold at the same
    offsets, and refuses a resend of a purged reading as too old wherever it owns the partition;
    a node killed and restarted (which reads its streams from their start again) goes on too."""
    nats = NATSCluster(root=str(tmp_path / "nats"))
    extra = ["--cluster-lease-seconds", str(LEASE_SECONDS), "--partitions", "4", "--retention-time", "1h",
             "--maintenance-interval-seconds", "1", "--segment-bytes", "65536"]
    nodes = [node(nats, f"r{i}", data_dir=str(tmp_path / f"r{i}"), extra=extra) for i in range(2)]
    now = time.time_ns()
    old = [(f"ret-{i % 40}", "temperature", float(i % 50), "yard", now - 3 * 3600 * 10**9 + i * 10**6) for i in range(6_000)]
    # Then enough readings 2 h old to fill closed segments, and recent ones after them: retention
    # removes the closed segments and keeps the active one, so each stream is purged part way.
    # (Values at random: regular ones compress to 2 bytes a reading, and would fill no segment.)
    values = random.Random(5)
    mid = [(f"ret-{i % 40}", "temperature", round(values.uniform(-40, 60), 6), "yard", now - 2 * 3600 * 10**9 + i * 10**6)
           for i in range(80_000)]
    recent = [(f"ret-{i % 40}", "temperature", float(i % 50), "yard", now - 60 * 10**9 + i * 10**6) for i in range(3_000)]

    def write(rows):
        for i in range(0, len(rows), 500):
            while True:
                code, body, _ = nodes[i // 500 % 2].request("POST", "/write?precision=ns", b"".join(line(r) for r in rows[i:i + 500]), timeout=30)
                if code == 204:
                    break
                assert code == 503, (code, body)
                time.sleep(0.2)

    def purged_to_end(server):
        parts = status(server)["partitions"]
        return all(p["stream_first_sequence"] > 1 and p["stream_first_sequence"] == p["stream_last_sequence"] + 1 for p in parts)

    def purged_past(server, firsts):
        """A stream purged again, part way (it still holds batches). Not every one: whether a
        partition's segment rolls before the recent readings come depends on its share of sensors."""
        parts = status(server)["partitions"]
        return any(firsts[p["partition"]] < p["stream_first_sequence"] <= p["stream_last_sequence"] for p in parts)

    late = None
    try:
        for n in nodes:
            n.start()
        wait_owned(nodes)
        write(old)
        deadline = time.time() + 90
        while not purged_to_end(nodes[0]):  # every old reading gone from the logs, then from the streams
            assert time.time() < deadline, status(nodes[0])["partitions"]
            time.sleep(0.2)
        firsts = {p["partition"]: p["stream_first_sequence"] for p in status(nodes[0])["partitions"]}
        write(mid + recent)
        deadline = time.time() + 90
        while not purged_past(nodes[0], firsts):
            assert time.time() < deadline, (status(nodes[0])["partitions"], firsts)
            time.sleep(0.2)
        late = node(nats, "r2", data_dir=str(tmp_path / "r2"), extra=extra).start()
        nodes.append(late)
        wait_owned(nodes)
        settled(nodes, 0)
        ends = [[p["local_end"] for p in status(n)["partitions"]] for n in nodes]
        assert ends[0] == ends[1] == ends[2], ends
        # The purged readings, resent: too old on every owner, the late node's partitions included.
        owned_late = [p["partition"] for p in status(late)["partitions"] if p["owned_here"]]
        assert owned_late, status(late)
        for i in range(0, 1_000, 200):
            doc = [{"sensor_id": r[0], "type": r[1], "value": r[2], "location": r[3], "timestamp": iso(r[4])} for r in old[i:i + 200]]
            code, body, _ = late.request("POST", "/sensor/data", json.dumps(doc).encode(), {"Content-Type": "application/json"}, timeout=30)
            assert code in (200, 201), (code, body)
            answer = json.loads(body)
            assert answer["accepted"] == 0 and len(answer["too_old"]) == len(doc), answer
        # A node killed and restarted reads its streams from their start, which is the floor now.
        nodes[1].stop(signal.SIGKILL)
        nodes[1].start()
        write(recent[:500])  # resends: duplicates
        settled(nodes, 0)
        ends = [[p["local_end"] for p in status(n)["partitions"]] for n in nodes]
        assert ends[0] == ends[1] == ends[2], ends
        for n in nodes:
            assert n.stop() == 0
        # Every node holds every recent reading, and no reading twice.
        starts = [p["start_offset"] for p in stats(late.data_dir)["partitions"]]
        held = [{(r["partition"], r["offset"]): (r["sensor_id"], nanoseconds(r["timestamp"]), r["value"]) for r in dump_all(n.data_dir)
                 if "value" in r} for n in nodes]
        for h in held:
            assert {key(r) for r in recent} <= {(v[0], v[1]) for v in h.values()}
            assert len({(v[0], v[1]) for v in h.values()}) == len(h), "a reading stored twice"
        # Each node's retention acts on its own copy, so they may start at different offsets;
        # where two hold an offset, they hold the same reading, and the late node holds every
        # offset from its start to the end.
        for a in held:
            for b in held:
                assert all(a[k] == b[k] for k in a.keys() & b.keys())
        ends = [p["end_offset"] for p in stats(late.data_dir)["partitions"]]
        assert all(s > 0 for s in starts), starts
        assert sorted(held[2]) == sorted((p, o) for p in range(len(starts)) for o in range(starts[p], ends[p])), (starts, ends)
        # With the retention floor the owner had: at least the newest old reading's timestamp.
        with open(os.path.join(late.data_dir, "retention.json")) as f:
            assert all(t is not None and t >= old[-1][4] for t in json.load(f)["floors"])
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.stop(signal.SIGKILL)
        nats.stop()


def test_a_stopped_node_hands_its_partitions_over_at_once_and_a_new_one_joins(tmp_path):
    """operations.md, "Adding and removing a node": a node stopped with SIGTERM releases its
    leases, so writes to its partitions through another node are accepted within seconds, not
    after its lease (30 s here) runs out; a node that joins with an empty data directory copies
    every stream, takes its share of the partitions, and holds what the others hold."""
    from soak import fnv1a64
    nats = NATSCluster(root=str(tmp_path / "nats"))
    extra = ["--cluster-lease-seconds", "30"]
    nodes = [node(nats, n, data_dir=str(tmp_path / n), extra=extra) for n in "abc"]

    def spread(members, timeout=60):
        """Until every member owns its even share of the partitions (⌊P/N⌋ or ⌈P/N⌉), once the
        owners have handed over what the assignment asks of them."""
        deadline = time.time() + timeout
        while True:
            views = wait_owned(members, timeout=timeout)
            owners = [p["owner"] for p in views[0]["partitions"]]
            counts = [owners.count(name(m)) for m in members]
            if min(counts) >= len(owners) // len(members) and max(counts) <= -(-len(owners) // len(members)):
                return dict(enumerate(owners))
            assert time.time() < deadline, (counts, views[0]["partitions"])
            time.sleep(0.2)

    def post(server, sensor, value, ns):
        try:
            return server.post({"sensor_id": sensor, "type": "temperature", "location": "hall", "value": value, "timestamp": iso(ns)})[0]
        except OSError:  # a forward waiting for an owner outlasted the client's 10 s
            return None

    joining = None
    try:
        for n in nodes:
            n.start()
        owners = spread(nodes)
        now = time.time_ns()
        rows = [(f"move-{i % 300}", "temperature", float(i % 70), "hall", now - 10**9 * 600 + i * 10**6) for i in range(6_000)]
        for i in range(0, len(rows), 1_000):
            code, body, _ = nodes[0].request("POST", "/write?precision=ns", b"".join(line(r) for r in rows[i:i + 1_000]), timeout=30)
            assert code == 204, (code, body)
        leaving = nodes[2]
        partitions = len(owners)
        mine = sorted(p for p, o in owners.items() if o == name(leaving))
        probes = {}
        for i in range(10_000):
            p = fnv1a64(f"probe-{i}") % partitions
            if p in mine and p not in probes:
                probes[p] = f"probe-{i}"
        assert sorted(probes) == mine
        started, accepted = time.time(), {}  # from the SIGTERM: the leases run 30 s from the last renewal before it
        assert leaving.stop() == 0
        while len(accepted) < len(probes):
            for p, sensor in probes.items():
                # 409: stored by a try whose answer the client gave up on (10 s) while the forward waited
                if p not in accepted and post(nodes[0], sensor, 1.0, now) in (200, 201, 409):
                    accepted[p] = time.time() - started
            assert time.time() - started < 30, f"only {accepted} of {mine} took writes again: {status(nodes[0])['partitions']}"
            time.sleep(0.05)
        print(f"partitions of the stopped node writable again after {accepted} s")
        assert max(accepted.values()) < 15, accepted
        joining = node(nats, "d", data_dir=str(tmp_path / "d"), extra=extra)
        joining.start()
        members = [nodes[0], nodes[1], joining]
        spread(members)
        for p, sensor in probes.items():  # resends through the new node: duplicates
            assert post(joining, sensor, 1.0, now) == 409
        distinct = len(rows) + len(probes)
        settled(members, distinct)
        for n in members:
            assert n.stop() == 0
        held = [readings(n.data_dir) for n in members]
        assert held[0] == held[1] == held[2]
        assert len(held[0]) == distinct and len(set((r[0], r[1]) for r in held[0])) == distinct
    finally:
        for n in nodes + ([joining] if joining else []):
            if n.proc and n.proc.poll() is None:
                n.stop(signal.SIGKILL)
        nats.stop()
