"""The web console in a real browser: Debian's chromium driven by selenium through the system
chromedriver (tools/lib.sh: ensure_browser), against a real sensorlogd with API keys on.

With SENSORLOG_SCREENSHOTS=DIR the screenshots docs/console.md shows are written to DIR."""
import calendar, json, os, threading, time, urllib.parse

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import Server

ADMIN, READER = "console-admin-key", "console-reader-key"
# The last id holds what a URL must escape (a space, "/", "#", "?", "%", non-ASCII).
ODD = "dock 4/ü#?%"
SENSORS = ["hall-temp-1", "hall-temp-2", "roof-hum-1", ODD]
HOURS = 6
START = 1_764_000_000  # 2025-11-24T16:00:00Z, an hour boundary


def readings():
    """Three sensors, twelve readings an hour for six hours, values that differ per hour."""
    out = []
    for h in range(HOURS):
        for i in range(12):
            for n, sensor in enumerate(SENSORS):
                t = START + h * 3600 + i * 300 + n
                kind = "humidity" if "hum" in sensor else "temperature"
                place = "roof" if "roof" in sensor else "Hall A" if sensor == ODD else "hall"
                out.append({"sensor_id": sensor, "type": kind, "value": round(20 + n + h * 0.5 + (i % 5) * 0.25, 2),
                            "location": place,
                            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))})
    return out


@pytest.fixture
def console(data_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{ADMIN} admin,read,ingest\n{READER} read\n")
    server = Server(data_dir, extra=["--api-keys-file", str(keys)]).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system chromedriver: Selenium Manager's download must never run (no network here).
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield server, browser
    finally:
        browser.quit()
        server.stop()


def shot(browser, name):
    folder = os.environ.get("SENSORLOG_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        browser.save_screenshot(os.path.join(folder, name + ".png"))


def wait(browser, condition, timeout=30):
    # A page redrawn while a condition reads it leaves stale elements: read again.
    return WebDriverWait(browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def go(browser, url):
    """Opens url and waits until the page it shows replaced the one before (a change of the
    address's fragment alone redraws without a reload)."""
    before = browser.find_elements(By.ID, "main")
    browser.get(url)
    if before:
        wait(browser, EC.staleness_of(before[0]))


def enter_key(browser, key):
    wait(browser, EC.visibility_of_element_located((By.ID, "key-input")))
    field = browser.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.ID, "key-save").click()
    wait(browser, lambda b: not b.find_element(By.ID, "key-dialog").get_attribute("open"))


def api(server, path, key=READER):
    status, body, _ = server.get(path, headers={"X-API-Key": key})
    assert status == 200, (path, status, body)
    return json.loads(body)


def console_errors(browser):
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_console_end_to_end(console):
    server, browser = console
    base = f"http://127.0.0.1:{server.http}"

    # Keys are on: the console asks for one before showing anything, and a read-only key sees
    # no Operations page.
    browser.get(base + "/")  # the first load
    enter_key(browser, READER)
    assert not browser.find_element(By.ID, "nav-operations").is_displayed()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "stat-status"), "ok"))

    # Readings arrive while the overview is open: the live rate climbs above zero.
    docs = readings()
    sender = threading.Thread(target=send_slowly, args=(server, docs))
    sender.start()
    try:
        wait(browser, lambda b: number(b.find_element(By.ID, "stat-rate").text) > 0)
        # Enough samples for a curve in the screenshot.
        wait(browser, lambda b: int(b.find_element(By.CSS_SELECTOR, "#chart-ingest path[data-series='http']").get_attribute("data-points")) >= 5)
    finally:
        sender.join()
    assert server.post(docs, headers={"X-API-Key": ADMIN})[0] in (200, 201)  # all of them again: duplicates
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#chart-rejected path[data-series='duplicate']"))
    shot(browser, "overview")

    # The aggregator catches up; the consumers page shows its group with zero lag.
    deadline = time.time() + 60
    while any(p["lag"] for g in api(server, "/groups")["groups"] for p in g["partitions"]):
        assert time.time() < deadline, "the aggregator did not catch up"
        time.sleep(0.1)
    browser.find_element(By.CSS_SELECTOR, "nav a[data-page='consumers']").click()
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "table[data-group='aggregator'] tbody tr"))
    wait(browser, lambda b: all(r.find_elements(By.TAG_NAME, "td")[3].text == "0"
                                for r in b.find_elements(By.CSS_SELECTOR, "table[data-group='aggregator'] tbody tr")))
    shot(browser, "consumers")

    # The sensor search finds sensors by id prefix, and by type.
    browser.find_element(By.CSS_SELECTOR, "nav a[data-page='sensors']").click()
    search = wait(browser, EC.element_to_be_clickable((By.CSS_SELECTOR, "#sensor-search input[name='prefix']")))
    search.send_keys("hall-")
    browser.find_element(By.CSS_SELECTOR, "#sensor-search button").click()
    wait(browser, lambda b: sorted(r.get_attribute("data-sensor") for r in b.find_elements(By.CSS_SELECTOR, "#sensor-results tr[data-sensor]"))
         == ["hall-temp-1", "hall-temp-2"])
    go(browser, base + "/#/sensors?type=humidity")
    wait(browser, lambda b: [r.get_attribute("data-sensor") for r in b.find_elements(By.CSS_SELECTOR, "#sensor-results tr[data-sensor]")]
         == ["roof-hum-1"])
    shot(browser, "sensors")
    go(browser, base + "/#/sensors?location=Hall%20A")
    wait(browser, lambda b: [r.get_attribute("data-sensor") for r in b.find_elements(By.CSS_SELECTOR, "#sensor-results tr[data-sensor]")]
         == [ODD])

    # Pages of two: "More" until the catalogue ends, in the API's order.
    go(browser, base + "/#/sensors?limit=2")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#sensor-results tr[data-sensor]")
         and not b.find_elements(By.CSS_SELECTOR, "#sensor-results[data-loading]"))
    every = [s["sensor_id"] for s in api(server, "/sensors")["sensors"]]
    while True:
        shown = [r.get_attribute("data-sensor") for r in browser.find_elements(By.CSS_SELECTOR, "#sensor-results tr[data-sensor]")]
        more = [b for b in browser.find_elements(By.CSS_SELECTOR, "#sensor-results button") if b.text == "More"]
        if not more:
            break
        more[0].click()
        wait(browser, EC.staleness_of(more[0]))
        wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "#sensor-results[data-loading]"))
    assert shown == every and len(every) == len(SENSORS)

    # A sensor: every point of the chart is a row of GET /sensors/{id}/aggregates.
    go(browser, base + "/#/sensors?prefix=hall-temp-2")
    wait(browser, EC.element_to_be_clickable((By.LINK_TEXT, "hall-temp-2"))).click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#chart-values circle.point")) == HOURS)
    values = browser.find_element(By.ID, "range")
    start = values.find_element(By.NAME, "from").get_attribute("value") + ":00Z"
    end = values.find_element(By.NAME, "to").get_attribute("value") + ":00Z"
    rows = api(server, "/sensors/hall-temp-2/aggregates?" + urllib.parse.urlencode({"from": start, "to": end}))["aggregates"]
    drawn = [{k: p.get_attribute("data-" + k) for k in ("hour", "avg", "min", "max", "count")}
             for p in browser.find_elements(By.CSS_SELECTOR, "#chart-values circle.point")]
    assert [(d["hour"], float(d["avg"]), float(d["min"]), float(d["max"]), int(d["count"])) for d in drawn] == \
        [(r["hour_bucket"], r["avg"], r["min"], r["max"], r["count"]) for r in rows]
    assert len(rows) == HOURS and all(r["count"] == 12 for r in rows)
    # Drawn where their values say: later hours to the right, higher averages higher up.
    points = browser.find_elements(By.CSS_SELECTOR, "#chart-values circle.point")
    xs = [float(p.get_attribute("cx")) for p in points]
    ys = [float(p.get_attribute("cy")) for p in points]
    assert xs == sorted(xs) and len(set(xs)) == HOURS
    by_avg = sorted(range(HOURS), key=lambda i: rows[i]["avg"])
    assert [ys[i] for i in by_avg] == sorted(ys, reverse=True)

    # The raw readings of a chosen hour, with partition and offset, equal the API's.
    hour = rows[2]["hour_bucket"]
    browser.find_element(By.CSS_SELECTOR, f"#chart-counts rect.bar[data-hour='{hour}']").click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "table.readings tbody tr")) == 12)
    shown = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in browser.find_elements(By.CSS_SELECTOR, "table.readings tbody tr")]
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(calendar.timegm(time.strptime(hour, "%Y-%m-%dT%H:%M:%SZ")) + 3600))
    expected = api(server, "/sensors/hall-temp-2/readings?" + urllib.parse.urlencode({"from": hour, "to": after}))["readings"]
    assert shown == [[r["timestamp"], str(r["value"]), str(r["partition"]), str(r["offset"])] for r in expected]
    shot(browser, "sensor")

    # The range form: three hours asked, three hours drawn, as the API answers them.
    form = browser.find_element(By.ID, "range")
    browser.execute_script("arguments[0].value = arguments[2]; arguments[1].value = arguments[3];",
                           form.find_element(By.NAME, "from"), form.find_element(By.NAME, "to"),
                           rows[1]["hour_bucket"][:16], rows[4]["hour_bucket"][:16])
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda b: [p.get_attribute("data-hour") for p in b.find_elements(By.CSS_SELECTOR, "#chart-values circle.point")]
         == [r["hour_bucket"] for r in rows[1:4]])

    # The sensor whose id a URL must escape, its readings in pages of five.
    go(browser, base + "/#/sensors?location=Hall%20A")
    wait(browser, EC.element_to_be_clickable((By.LINK_TEXT, ODD))).click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#chart-values circle.point")) == HOURS)
    go(browser, browser.current_url + "&limit=5" if "?" in browser.current_url else browser.current_url + "?limit=5")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#chart-counts rect.bar")) == HOURS)
    hour = rows[0]["hour_bucket"]
    browser.find_element(By.CSS_SELECTOR, f"#chart-counts rect.bar[data-hour='{hour}']").click()
    for count in (5, 10, 12):
        wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "table.readings tbody tr")) == count)
        more = [b for b in browser.find_elements(By.CSS_SELECTOR, "#readings button") if b.text == "More"]
        if count < 12:
            more[0].click()
    assert not [b for b in browser.find_elements(By.CSS_SELECTOR, "#readings button") if b.text == "More"]
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(calendar.timegm(time.strptime(hour, "%Y-%m-%dT%H:%M:%SZ")) + 3600))
    path = "/sensors/" + urllib.parse.quote(ODD, safe="") + "/readings?" + urllib.parse.urlencode({"from": hour, "to": after})
    expected = api(server, path)["readings"]
    shown = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in browser.find_elements(By.CSS_SELECTOR, "table.readings tbody tr")]
    assert shown == [[r["timestamp"], str(r["value"]), str(r["partition"]), str(r["offset"])] for r in expected]
    assert len(expected) == 12 and all(r["sensor_id"] == ODD for r in expected)

    # An admin key: the Operations page; a verify started from it runs, and its job shows its
    # progress and its end.
    browser.find_element(By.ID, "key-button").click()
    enter_key(browser, ADMIN)
    wait(browser, EC.visibility_of_element_located((By.ID, "nav-operations"))).click()
    form = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "form[data-operation='verify']")))
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm-run")))
    assert json.loads(browser.find_element(By.ID, "confirm-body").text) == {}
    browser.find_element(By.ID, "confirm-run").click()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "operation-message"), "started job"))
    # The jobs table is redrawn as it refreshes: a row found may be gone the next moment.
    def finished(b):
        try:
            rows = b.find_elements(By.CSS_SELECTOR, "#jobs tr[data-state='succeeded']")
            bar = rows[0].find_element(By.TAG_NAME, "progress") if rows else None
            return bar and (bar.get_attribute("max"), bar.get_attribute("value"))
        except StaleElementReferenceException:
            return False
    top, value = wait(browser, finished)
    assert int(top) > 0 and value == top
    jobs = api(server, "/admin/jobs", key=ADMIN)["jobs"]
    assert [j["operation"] for j in jobs] == ["verify"] and jobs[0]["state"] == "succeeded"
    shot(browser, "operations")

    # A cancelled confirmation runs nothing: the verify run after it is the next job.
    form = browser.find_element(By.CSS_SELECTOR, "form[data-operation='compact']")
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm-cancel"))).click()
    wait(browser, lambda b: not b.find_element(By.ID, "confirm-dialog").get_attribute("open"))
    browser.find_element(By.CSS_SELECTOR, "form[data-operation='verify'] button").click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm-run"))).click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#jobs tr[data-state='succeeded']")) == 2)
    assert [j["operation"] for j in api(server, "/admin/jobs", key=ADMIN)["jobs"]] == ["verify", "verify"]

    # A phone's screen: nothing wider than the viewport.
    browser.set_window_size(390, 844)
    go(browser, base + "/#/overview")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "stat-status"), "ok"))
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(browser, "phone")

    assert console_errors(browser) == []


def send_slowly(server, docs):
    """The readings in small posts spread over a few seconds, so that several samples see them."""
    for i in range(0, len(docs), 24):
        assert server.post(docs[i:i + 24], headers={"X-API-Key": ADMIN})[0] in (200, 201)
        time.sleep(0.5)


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def test_console_assets_are_served_without_a_key_and_with_a_strict_policy(console):
    server, _ = console
    for path in ("/", "/console/console.js", "/console/console.css", "/openapi.json"):
        status, body, headers = server.get(path)
        assert status == 200, (path, status)
        assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
        assert server.get(path, headers={"If-None-Match": headers["ETag"]})[0] == 304
    assert server.get("/console/nothing.js")[0] == 404
    assert server.get("/sensors")[0] == 401
    assert json.loads(server.get("/session")[1]) == {"keys_required": True, "roles": []}
    assert server.get("/session", headers={"X-API-Key": "not-a-key"})[0] == 401
    assert json.loads(server.get("/session", headers={"X-API-Key": READER})[1]) == {"keys_required": True, "roles": ["read"]}
    assert json.loads(server.get("/session", headers={"X-API-Key": ADMIN})[1])["roles"] == ["admin", "ingest", "read"]
