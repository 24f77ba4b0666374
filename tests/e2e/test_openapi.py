"""docs/openapi.yaml: a valid OpenAPI 3.1 document naming every route the server has, true of a live
sensorlogd (schemathesis with every check), with valid examples, as are the JSON examples of the
prose docs; and what GET /openapi.json serves.

The fuzzing is seeded: SENSORLOG_TEST_SEED picks the seed (else a random one, printed), and
SENSORLOG_OPENAPI_EXAMPLES the examples per operation (default 20: about 20 s on two cores).
A failure prints the schemathesis report, with a `curl` line for each failing request."""
import copy, json, os, random, re, subprocess, sys, tempfile, time
import urllib.request

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import ROOT, Server

SPEC = os.path.join(ROOT, "docs", "openapi.yaml")
KEY = "openapi-e2e-admin-key-0123456789"
READ_KEY = "openapi-e2e-read-key-0123456789"
SEED = int(os.environ.get("SENSORLOG_TEST_SEED") or random.randrange(1 << 32))
EXAMPLES = int(os.environ.get("SENSORLOG_OPENAPI_EXAMPLES") or 20)
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def document():
    with open(SPEC, encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- (a) the document ---------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)
    json.dumps(doc)  # what /openapi.json serves: no YAML-only values (dates) anywhere
    operation_ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds repeat"


def server_routes():
    """Every (method, path) the HTTP API registers, from the sources: `routes.get("/x")`,
    `router.post("/x/:id")`, …, and `POST /admin/{operation}` for each admin operation."""
    found = set()
    source_dir = os.path.join(ROOT, "Sources", "HTTPAPI")
    for name in os.listdir(source_dir):
        if name.endswith(".swift"):
            text = open(os.path.join(source_dir, name), encoding="utf-8").read()
            for method, path in re.findall(r'\brouter?s?\.(get|post|delete)\("(/[^"\\]*)"', text):
                found.add((method, re.sub(r":(\w+)", r"{\1}", path)))
    admin = open(os.path.join(ROOT, "Sources", "Daemon", "AdminService.swift"), encoding="utf-8").read()
    operations = re.search(r"let operations = \[([^\]]*)\]", admin).group(1)
    found |= {("post", "/admin/" + op) for op in re.findall(r'"([a-z-]+)"', operations)}
    return found


def test_every_route_of_the_server_is_documented_and_nothing_else():
    doc = document()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS and m != "head"}
    routes = server_routes()
    assert len(routes) >= 30, routes
    assert routes - documented == set(), "routes the document lacks"
    assert documented - routes == set(), "documented routes the server does not have"


# --- (c) examples ---------------------------------------------------------------------------------

def with_absolute_refs(value):
    """The document with every `#/…` reference made `urn:openapi#/…`, so that a schema taken out
    of it still resolves its references against the document."""
    if isinstance(value, dict):
        return {k: ("urn:openapi" + v if k == "$ref" and isinstance(v, str) and v.startswith("#/") else with_absolute_refs(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [with_absolute_refs(v) for v in value]
    return value


class Schemas:
    def __init__(self, doc):
        self.doc = with_absolute_refs(doc)
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:openapi", resource)

    def validator(self, schema):
        return Draft202012Validator(schema, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER)

    def named(self, name):
        return self.validator({"$ref": f"urn:openapi#/components/schemas/{name}"})

    def errors(self, schema, value):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in self.validator(schema).iter_errors(value)]

    def examples(self):
        """(where, schema, example) for every example of the document: of parameters, headers
        and media types (`example`, `examples.*.value`) and of schemas (`examples: [...]`)."""
        out = []

        def resolve(node):
            while isinstance(node, dict) and "$ref" in node:
                target = self.doc
                for part in node["$ref"].split("#/", 1)[1].split("/"):
                    target = target[part]
                node = target
            return node

        def walk(node, where):
            if isinstance(node, dict):
                if "schema" in node and isinstance(node["schema"], dict):
                    if "example" in node:
                        out.append((where + "/example", node["schema"], node["example"]))
                    for name, example in (node.get("examples") or {}).items():
                        example = resolve(example)
                        if "value" in example:
                            out.append((f"{where}/examples/{name}", node["schema"], example["value"]))
                elif isinstance(node.get("examples"), list) and where.split("/")[-2:-1] != ["properties"]:
                    for i, example in enumerate(node["examples"]):
                        out.append((f"{where}/examples/{i}", node, example))
                for k, v in node.items():
                    walk(v, f"{where}/{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{where}/{i}")

        walk(self.doc, "#")
        return out


def test_every_example_in_the_document_is_valid():
    schemas = Schemas(document())
    examples = schemas.examples()
    assert len(examples) >= 80, f"only {len(examples)} examples found: did the walk break?"
    bad = [f"{where}: {errors}" for where, schema, value in examples if (errors := schemas.errors(schema, value))]
    assert not bad, "\n".join(bad)


def doc_json_snippets(path):
    """The JSON of a prose doc: ```json blocks and inline code that parses as a JSON object or
    array (shapes such as `{"code","message"}` do not parse and are skipped)."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    candidates = re.findall(r"```json\n(.*?)```", text, re.S) + re.findall(r"(?<!`)`([\[{][^`]*)`(?!`)", text)
    out = []
    for candidate in candidates:
        try:
            out.append(json.loads(candidate))
        except ValueError:
            pass
    return out


# Snippets the docs show as what the server refuses (not a valid body): (doc, snippet, schema it must fail).
REFUSED = [("docs/protocol.md", [], "ReadingsRequest")]  # `empty_array`
# Snippets that must be valid against one named schema in particular.
EXPECTED = [
    ("docs/protocol.md", {"sensor_id": "sensor-001", "type": "temperature", "value": 23.5, "location": "warehouse_A",
                          "timestamp": "2026-11-24T10:00:00.123456789Z"}, "Reading"),
    ("docs/protocol.md", {"partition": 3, "offset": 1234}, "StoredReading"),
    ("docs/consumers.md", {"group": "exporter", "start": "earliest"}, "CreateGroup"),
]


def test_the_json_examples_of_the_docs_are_valid():
    doc = document()
    schemas = Schemas(doc)
    # Every JSON body schema of the document: the named ones and those written inline.
    candidates = [{"$ref": f"urn:openapi#/components/schemas/{name}"} for name in doc["components"]["schemas"]]
    for container in [*doc["paths"].values(), doc["components"]["responses"], doc["components"].get("requestBodies", {})]:
        for node in _nodes(container):
            media = node.get("content", {}).get("application/json") if isinstance(node, dict) else None
            if media and "schema" in media:
                candidates.append(with_absolute_refs(media["schema"]))
    validators = [schemas.validator(c) for c in candidates]
    checked = 0
    for path in ["docs/protocol.md", "docs/consumers.md", "docs/analysts.md"]:
        for snippet in doc_json_snippets(path):
            refused = [name for p, s, name in REFUSED if p == path and s == snippet]
            if refused:
                assert not schemas.named(refused[0]).is_valid(snippet), f"{path}: {snippet!r} is shown refused, yet valid"
                continue
            assert any(v.is_valid(snippet) for v in validators), f"{path}: {json.dumps(snippet)} matches no schema of docs/openapi.yaml"
            checked += 1
    assert checked >= 8, f"only {checked} JSON snippets found in the docs"
    for path, snippet, name in EXPECTED:
        assert snippet in doc_json_snippets(path), f"{path} no longer shows {snippet}"
        errors = list(schemas.named(name).iter_errors(snippet))
        assert not errors, f"{path}: {snippet} against {name}: {[e.message for e in errors]}"


def _nodes(value):
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _nodes(v)
    elif isinstance(value, list):
        for v in value:
            yield from _nodes(v)


# --- a live server ----------------------------------------------------------------------------

def call(server, method, path, body=None, headers=None, key=KEY):
    h = {"X-API-Key": key} if key else {}
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    return server.request(method, path, body, h)


def seed_readings(server):
    """Readings in every partition, by both doors, and the aggregates of them, so the queries
    have something to answer with; a consumer group `exporter` (the document's examples use it)."""
    readings = [{"sensor_id": f"sensor-{i:03}", "type": "temperature", "value": 20 + i / 4, "location": "warehouse_A",
                 "timestamp": f"2026-11-24T10:{i:02}:00Z"} for i in range(1, 40)]
    readings += [{"sensor_id": "h-7", "type": "humidity", "value": 41, "location": "hall B", "timestamp": "2026-11-24T11:00:00Z"},
                 {"sensor_id": "dock 4/east", "type": "pressure", "value": 1013.2, "location": "dock", "timestamp": "2026-11-24T11:00:00Z"}]
    status, body, _ = call(server, "POST", "/sensor/data", readings)
    assert status == 201 and json.loads(body)["accepted"] == len(readings), body
    status, body, _ = call(server, "POST", "/write?db=telegraf",
                           "temperature,sensor_id=sensor-001,location=warehouse_A value=23.5 1700000000123456789\n")
    assert status == 204, body
    status, body, _ = call(server, "POST", "/groups", {"group": "exporter", "start": "earliest"})
    assert status == 201, body
    deadline = time.time() + 30
    while time.time() < deadline:
        groups = json.loads(call(server, "GET", "/groups")[1])["groups"]
        aggregator = next(g for g in groups if g["group"] == "aggregator")
        if all(p["lag"] == 0 for p in aggregator["partitions"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"the aggregator did not catch up: {groups}")


@pytest.fixture(scope="module")
def keyed_server():
    """sensorlogd with API keys on: one key with every role (what the fuzzing sends) and a
    read-only one."""
    data_dir = tempfile.mkdtemp(prefix="sensorlog-e2e-openapi-")
    keys = data_dir + "-keys"
    with open(keys, "w") as f:
        f.write(f"{KEY} ingest,read,admin\n{READ_KEY} read\n")
    server = Server(data_dir, extra=["--api-keys-file", keys]).start()
    try:
        seed_readings(server)
        yield server
    finally:
        server.stop()


def test_get_openapi_json_is_the_document_and_needs_no_key(keyed_server):
    status, body, headers = call(keyed_server, "GET", "/openapi.json", key=None)
    assert status == 200, body[:300]
    assert headers["Content-Type"].split(";")[0] == "application/json"
    assert json.loads(body) == document(), "GET /openapi.json is not docs/openapi.yaml: run tools/embed-assets and rebuild"


def test_head_answers_as_get_without_a_body_and_path_ids_are_percent_decoded(keyed_server):
    # Both found by the fuzzing: HEAD of every GET route answered 405 with `Allow: GET, HEAD`, and
    # `/sensors/{id}` looked up the id still percent-encoded, so `dock 4/east` could not be named.
    for path in ["/ping", "/health", "/sensors", "/sensors/h-7/readings"]:
        get = call(keyed_server, "GET", path)
        head = call(keyed_server, "HEAD", path)
        assert head[0] == get[0] and head[1] == b"", (path, head)
    assert call(keyed_server, "HEAD", "/sensors", key=None)[0] == 401
    status, body, _ = call(keyed_server, "GET", "/sensors/dock%204%2Feast")
    assert status == 200 and json.loads(body)["sensor_id"] == "dock 4/east", body
    status, body, _ = call(keyed_server, "GET", "/sensors/dock%204%2Feast/readings")
    assert status == 200 and [r["value"] for r in json.loads(body)["readings"]] == [1013.2], body
    status, body, _ = call(keyed_server, "GET", "/sensors/dock%ZZ/readings")
    assert status == 400 and json.loads(body)["error"]["field"] == "id", body
    # The read-only key: the document's 403 with its error body.
    status, body, _ = call(keyed_server, "POST", "/sensor/data", [], key=READ_KEY)
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden", body


# Where a request the schema allows is still refused: a constraint between parameters, or one on
# the server's state, that OpenAPI cannot state. `positive_data_acceptance` accepts 400 there (413
# for an array the schema allows but the body limit does not). Every other check applies as is.
SCHEMATHESIS_CONFIG = """
[[operations]]
# the type a sensor's first reading fixed, a reading older than the retained log, an id of
# 128 characters but more than 128 bytes; an array of 10 000 readings over 1 MiB
include-operation-id = ["postReadings"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "429"]
# an invalid body over 1 MiB is refused for its size before it is parsed (seed 1369846836)
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[[operations]]
# a line-protocol body is any text: whether its lines are valid is the parser's to say; POST
# /query needs `q` in the query or the body; `to` before `from`; `from` or `committed` past the
# partition's end; `until` once a retention (fuzzed too) has cut the log
include-operation-id = ["writeLineProtocol", "writeLineProtocolV2", "influxQueryPost", "getSensorAggregates",
                        "getSensorReadings", "listAggregates", "readRecords", "commitOffsets", "startRebuildAggregates"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def test_a_live_server_answers_as_documented(keyed_server):
    """Every operation, the admin jobs included (a fresh server: they may compact, delete and
    rebuild what they like), through schemathesis's phases: the document's examples, coverage
    of bounds and of methods not served, fuzzing, and stateful sequences along the links it
    infers. Checks: all (no 5xx, status codes, content types, headers and bodies as documented,
    invalid input refused, valid input accepted, auth enforced, 405 with Allow)."""
    print(f"schemathesis seed {SEED} (SENSORLOG_TEST_SEED={SEED} repeats this run), {EXAMPLES} examples per operation")
    work = tempfile.mkdtemp(prefix="sensorlog-openapi-st-")
    config = os.path.join(work, "schemathesis.toml")
    with open(config, "w") as f:
        f.write(SCHEMATHESIS_CONFIG)
    st = os.path.join(os.path.dirname(sys.executable), "st")
    command = [st, "--config-file", config, "run", SPEC, "--url", f"http://127.0.0.1:{keyed_server.http}",
               "--header", f"X-API-Key: {KEY}", "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES),
               "--workers", "2", "--request-timeout", "30", "--no-color", "--generation-database", "none"]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="openapi_hooks",
               PYTHONPATH=os.path.dirname(os.path.abspath(__file__)) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.time()
    r = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    report = r.stdout + r.stderr
    # The whole report (a failing body can be megabytes): the assertion shows its tail only.
    with open(os.path.join(work, "report.txt"), "w") as f:
        f.write(report)
    assert r.returncode == 0, f"seed {SEED}: schemathesis found what the document does not say (whole report: {work}/report.txt):\n{report[-20000:]}"
    assert re.search(r"Operations:\s+(\d+) selected", report).group(1) == str(sum(
        1 for item in document()["paths"].values() for m in item if m in METHODS)), report[:2000]
    print(report[-1500:], f"({time.time() - started:.1f} s)")
    # The server logged no unexpected error meanwhile (a 500 `internal_error` is logged so).
    log = open(keyed_server.log_path, encoding="utf-8", errors="replace").read()
    assert "unexpected error" not in log, [line for line in log.splitlines() if "unexpected error" in line][:5]
