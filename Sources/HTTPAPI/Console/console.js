// The sensorlog console: one page, no dependencies, charts drawn as SVG. Everything it shows
// comes from the public HTTP API (/health, /metrics, /groups, /sensors, /admin/), so the console
// can do nothing a client with the same key could not.
"use strict";

const POLL_MS = 2000;          // how often the live views sample /metrics, /health and /groups
const HISTORY_MS = 10 * 60e3;  // how much live history the charts keep (in this tab only)
const REQUEST_TIMEOUT_MS = 10e3;
const SENSORS_PAGE = 50, READINGS_PAGE = 500;  // rows a page asks for; "More" asks for the next
// The metric families the charts read: a sample keeps these only, not the whole exposition.
const CHARTED = new Set(["sensorlog_readings_ingested_total", "sensorlog_readings_rejected_total",
  "sensorlog_fsync_duration_seconds_bucket", "sensorlog_log_end_offset", "sensorlog_log_bytes", "sensorlog_log_segments",
  "sensorlog_retention_blocked", "sensorlog_retention_segments_removed_total", "sensorlog_retention_bytes_removed_total",
  "sensorlog_compaction_segments_rewritten_total", "sensorlog_maintenance_jobs_total"]);
const KEY_STORAGE = "sensorlog.key";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const SVGNS = "http://www.w3.org/2000/svg";

const state = {
  session: { keys_required: false, roles: [] },
  samples: [],   // [{t, metrics: Map(series -> value), health}]
  lags: [],      // [{t, groups: {group: total lag}}]
  groups: [],
  timer: null,
};

// ---- HTTP ------------------------------------------------------------------------------------

class APIError extends Error {
  constructor(status, body) {
    super(body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, Object.assign({ signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }, options, { headers }));
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) askForKey("The key was refused.");
    throw new APIError(response.status, body);
  }
  return body;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  // URLSearchParams writes a space as "+", which the server reads as a plus sign.
  const text = q.toString().replace(/\+/g, "%20");
  return text ? "?" + text : "";
};

// ---- DOM helpers -----------------------------------------------------------------------------

// Builds an element; text is always set as text, never parsed as HTML (ids are user data).
function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const fmt = (n, digits = 0) => Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–";
const bytes = (n) => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return fmt(n, i ? 1 : 0) + " " + units[i];
};
const duration = (s) => {
  if (!Number.isFinite(s)) return "–";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s` : `${fmt(s, 1)}s`;
};

function table(columns, rows, attrs = {}) {
  return el("div", { class: "scroll" }, el("table", attrs,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.title)))),
    el("tbody", {}, rows.length ? rows.map((row) => el("tr", row.attrs || {}, columns.map((c) =>
      el("td", { class: c.num ? "num" : null }, c.value(row))))) :
      el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, "none")))));
}

function card(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, title), ...children);
}

// ---- Charts (SVG) ----------------------------------------------------------------------------

const CHART = { width: 640, height: 220, left: 56, right: 12, top: 10, bottom: 26 };

function scale(domain, range) {
  const [d0, d1] = domain[0] === domain[1] ? [domain[0] - 1, domain[1] + 1] : domain;
  return (v) => range[0] + (v - d0) / (d1 - d0) * (range[1] - range[0]);
}

function axes(svg, x, y, xDomain, yDomain, xLabel) {
  const { width, height, left, right, top, bottom } = CHART;
  svg.append(el("svg:line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  svg.append(el("svg:line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  for (const v of [yDomain[0], (yDomain[0] + yDomain[1]) / 2, yDomain[1]]) {
    svg.append(el("svg:text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, compact(v)));
  }
  svg.append(el("svg:text", { x: left, y: height - 6 }, xLabel(xDomain[0])));
  svg.append(el("svg:text", { x: width - right, y: height - 6, "text-anchor": "end" }, xLabel(xDomain[1])));
}

function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return fmt(v / 1e9, 1) + "G";
  if (a >= 1e6) return fmt(v / 1e6, 1) + "M";
  if (a >= 1e4) return fmt(v / 1e3, 0) + "k";
  return fmt(v, a < 10 ? 2 : 0);
}

const seconds = (iso) => iso ? iso.slice(0, 19).replace("T", " ") + "Z" : "";
const clock = (t) => new Date(t).toISOString().slice(11, 19);

// Lines of [t, v] points. series: [{name, points}].
function lineChart(series, { xLabel = clock, yMin = 0, id } = {}) {
  const all = series.flatMap((s) => s.points);
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img", id });
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const xDomain = all.length ? [Math.min(...xs), Math.max(...xs)] : [Date.now() - 60e3, Date.now()];
  const yDomain = [Math.min(yMin, ...ys), Math.max(1e-9, ...ys)];
  const x = scale(xDomain, [CHART.left, CHART.width - CHART.right]);
  const y = scale(yDomain, [CHART.height - CHART.bottom, CHART.top]);
  axes(svg, x, y, xDomain, yDomain, xLabel);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(el("svg:path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-series": s.name, "data-points": s.points.length }));
  });
  const legend = el("ul", { class: "legend" }, series.map((s, i) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : NaN;
    return el("li", {}, el("span", { style: null, "data-color": i }), `${s.name} ${compact(last)}`);
  }));
  colorLegend(legend);
  return el("div", {}, all.length ? svg : el("p", { class: "muted" }, "waiting for samples…"), legend);
}

// The legend's swatches are coloured from script: the style-src policy forbids inline styles
// in markup, but not CSSOM writes.
function colorLegend(legend) {
  legend.querySelectorAll("span[data-color]").forEach((s) => { s.style.background = COLORS[+s.dataset.color % COLORS.length]; });
}

// Hourly aggregates: the average as a line with a point per hour, min–max as a band, and the
// count per hour as bars below. Each point carries its row's values (data-*), so what is drawn
// can be checked against GET /sensors/{id}/aggregates.
function aggregateCharts(rows, onPick, picked) {
  const hours = rows.map((r) => Date.parse(r.hour_bucket));
  const xDomain = rows.length ? [Math.min(...hours), Math.max(...hours) + 3600e3] : [0, 1];
  const x = scale(xDomain, [CHART.left, CHART.width - CHART.right]);
  const yDomain = [Math.min(...rows.map((r) => r.min)), Math.max(...rows.map((r) => r.max))];
  const y = scale(yDomain, [CHART.height - CHART.bottom, CHART.top]);
  const label = (t) => new Date(t).toISOString().slice(0, 13).replace("T", " ") + "h";
  const mid = (r) => x(Date.parse(r.hour_bucket) + 1800e3);

  const values = el("svg:svg", { class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`, id: "chart-values", role: "img" });
  axes(values, x, y, xDomain, yDomain, label);
  const band = rows.map((r) => `${mid(r).toFixed(1)},${y(r.max).toFixed(1)}`)
    .concat(rows.slice().reverse().map((r) => `${mid(r).toFixed(1)},${y(r.min).toFixed(1)}`));
  values.append(el("svg:polygon", { class: "band", points: band.join(" "), fill: COLORS[0] }));
  values.append(el("svg:path", {
    d: rows.map((r, i) => `${i ? "L" : "M"}${mid(r).toFixed(1)},${y(r.avg).toFixed(1)}`).join(""),
    fill: "none", stroke: COLORS[0], "stroke-width": 2,
  }));
  for (const r of rows) {
    values.append(el("svg:circle", {
      class: "point", cx: mid(r).toFixed(1), cy: y(r.avg).toFixed(1), r: 3, fill: COLORS[0],
      "data-hour": r.hour_bucket, "data-avg": r.avg, "data-min": r.min, "data-max": r.max, "data-count": r.count,
    }, el("svg:title", {}, `${r.hour_bucket}: avg ${r.avg} (min ${r.min}, max ${r.max}), ${r.count} readings`)));
  }

  const counts = el("svg:svg", { class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`, id: "chart-counts", role: "img" });
  const cDomain = [0, Math.max(1, ...rows.map((r) => r.count))];
  const cy = scale(cDomain, [CHART.height - CHART.bottom, CHART.top]);
  axes(counts, x, cy, xDomain, cDomain, label);
  const w = Math.max(2, (CHART.width - CHART.left - CHART.right) / Math.max(1, (xDomain[1] - xDomain[0]) / 3600e3) - 2);
  for (const r of rows) {
    const bar = el("svg:rect", {
      class: "bar" + (r.hour_bucket === picked ? " selected" : ""), x: (mid(r) - w / 2).toFixed(1), y: cy(r.count).toFixed(1),
      width: w.toFixed(1), height: (cy(0) - cy(r.count)).toFixed(1), fill: COLORS[2], "data-hour": r.hour_bucket, "data-count": r.count,
      onclick: () => onPick(r.hour_bucket),
    }, el("svg:title", {}, `${r.hour_bucket}: ${r.count} readings (click for the readings)`));
    counts.append(bar);
  }
  return { values, counts };
}

// ---- Live samples ----------------------------------------------------------------------------

// Prometheus text exposition: `name{labels} value` lines; comments skipped.
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || !CHARTED.has(m[1])) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[4]) });
  }
  return out;
}

async function sample() {
  const t = Date.now();
  try {
    const [text, health] = await Promise.all([
      fetch("/metrics", { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }).then((r) => r.text()),
      fetch("/health", { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }).then((r) => r.json()),
    ]);
    state.samples.push({ t, metrics: parseMetrics(text), health });
    showHealth(health);
  } catch (error) {
    showHealth(null, error);
  }
  if (canRead()) {
    try {
      state.groups = (await api("/groups")).groups;
      const totals = {};
      for (const g of state.groups) totals[g.group] = g.partitions.reduce((s, p) => s + p.lag, 0);
      state.lags.push({ t, groups: totals });
    } catch (_) { /* shown on the consumers page */ }
  }
  const cutoff = t - HISTORY_MS;
  while (state.samples.length && state.samples[0].t < cutoff) state.samples.shift();
  while (state.lags.length && state.lags[0].t < cutoff) state.lags.shift();
}

function showHealth(health, error) {
  const badge = $("health");
  badge.className = "badge " + (health && health.status === "ok" ? "ok" : "bad");
  badge.textContent = health ? health.status : "unreachable";
  badge.title = health ? (health.error || `up ${duration(health.uptime_seconds)}`) : String(error);
}

const series = (metrics, name) => (metrics && metrics.get(name)) || [];
const labelKey = (labels, keys) => keys.map((k) => labels[k]).join(" ");

// Per-second rates of a counter between consecutive samples, one series per value of the labels
// kept (summed over the others), sorted by name so that a series keeps its colour. A counter
// that went down (a restart) counts from zero.
function rates(name, keys) {
  const totals = (sample) => {
    const out = new Map();
    for (const s of series(sample.metrics, name)) out.set(labelKey(s.labels, keys), (out.get(labelKey(s.labels, keys)) || 0) + s.value);
    return out;
  };
  const byKey = new Map();
  let before = state.samples.length ? totals(state.samples[0]) : new Map();
  for (let i = 1; i < state.samples.length; i++) {
    const now = totals(state.samples[i]), seconds = (state.samples[i].t - state.samples[i - 1].t) / 1000;
    for (const [k, v] of now) {
      if (!byKey.has(k)) byKey.set(k, []);
      const delta = before.has(k) && v >= before.get(k) ? v - before.get(k) : v;
      byKey.get(k).push([state.samples[i].t, delta / seconds]);
    }
    before = now;
  }
  return [...byKey].sort((a, b) => a[0].localeCompare(b[0])).map(([name, points]) => ({ name, points }));
}

// Quantiles of a histogram over each interval between samples, interpolated within the bucket
// as Prometheus's histogram_quantile does (buckets are cumulative; the +Inf bucket answers the
// highest finite bound).
function quantiles(name, qs) {
  const out = qs.map((q) => ({ name: `p${Math.round(q * 100)}`, points: [] }));
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1], b = state.samples[i];
    const old = new Map(series(a.metrics, name + "_bucket").map((s) => [s.labels.le, s.value]));
    const buckets = series(b.metrics, name + "_bucket")
      .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), n: s.value - (old.get(s.labels.le) || 0) }))
      .sort((x, y) => x.le - y.le);
    const total = buckets.length ? buckets[buckets.length - 1].n : 0;
    if (total <= 0) continue;
    qs.forEach((q, j) => out[j].points.push([b.t, 1000 * quantile(buckets, q * total)]));
  }
  return out;
}

function quantile(buckets, rank) {
  let lower = 0, below = 0;
  for (const { le, n } of buckets) {
    if (n >= rank) {
      if (!Number.isFinite(le)) return lower;
      return lower + (le - lower) * (n - below > 0 ? (rank - below) / (n - below) : 1);
    }
    if (Number.isFinite(le)) lower = le;
    below = n;
  }
  return lower;
}

// ---- Pages -----------------------------------------------------------------------------------

const canRead = () => !state.session.keys_required || state.session.roles.includes("read");
const isAdmin = () => state.session.roles.includes("admin");

const pages = {
  overview: { live: true, render: renderOverview },
  consumers: { live: true, render: renderConsumers },
  sensors: { render: renderSensors },
  sensor: { render: renderSensor },
  operations: { render: renderOperations, refresh: () => { $("maintenance").replaceWith(maintenanceState()); return refreshJobs(); } },
};

function renderOverview(main) {
  const last = state.samples[state.samples.length - 1];
  const health = last && last.health;
  const latest = last ? last.metrics : new Map();
  const byPartition = (name) => new Map(series(latest, name).map((s) => [s.labels.partition, s.value]));
  const ends = byPartition("sensorlog_log_end_offset"), sizes = byPartition("sensorlog_log_bytes"), segs = byPartition("sensorlog_log_segments");
  const ingest = rates("sensorlog_readings_ingested_total", ["transport"]);
  // Only the reasons seen in the window: dozens are counted from start-up, most stay at zero.
  const rejected = rates("sensorlog_readings_rejected_total", ["reason"]).filter((x) => x.points.some((p) => p[1] > 0));
  const total = ingest.reduce((s, x) => s + (x.points.length ? x.points[x.points.length - 1][1] : 0), 0);
  main.append(el("div", { class: "grid" },
    card("Server", el("dl", { class: "stats" },
      stat("status", health ? health.status : "…", "stat-status"),
      stat("uptime", health ? duration(health.uptime_seconds) : "…"),
      stat("fsync", health ? health.fsync : "…"),
      stat("partitions", health ? health.partitions : "…"),
      stat("readings/s now", fmt(total), "stat-rate"),
    ), health && health.error ? el("p", { class: "error" }, health.error) : null),
    card("Readings/s by transport", lineChart(ingest, { id: "chart-ingest" })),
    card("Rejections/s by reason", lineChart(rejected, { id: "chart-rejected" })),
    card("fsync latency (ms)", lineChart(quantiles("sensorlog_fsync_duration_seconds", [0.5, 0.99]), { id: "chart-fsync" })),
    el("section", { class: "card wide" }, el("h2", {}, "Partitions"),
      table([
        { title: "partition", value: (p) => p },
        { title: "end offset", num: true, value: (p) => fmt(ends.get(p)) },
        { title: "bytes", num: true, value: (p) => bytes(sizes.get(p) || 0) },
        { title: "segments", num: true, value: (p) => fmt(segs.get(p)) },
      ], [...ends.keys()].sort((a, b) => a - b), { id: "partitions" })),
  ));
}

function stat(name, value, id) {
  return el("div", {}, el("dt", {}, name), el("dd", { id }, value));
}

function renderConsumers(main) {
  if (!canRead()) return main.append(card("Consumers", el("p", { class: "muted" }, "This key may not read.")));
  const names = state.groups.map((g) => g.group);
  const history = names.map((name) => ({ name, points: state.lags.filter((s) => name in s.groups).map((s) => [s.t, s.groups[name]]) }));
  main.append(el("div", { class: "grid" },
    el("section", { class: "card wide" }, el("h2", {}, "Lag over time (readings behind the end, all partitions)"), lineChart(history, { id: "chart-lag" })),
    ...state.groups.map((g) => card(`Group ${g.group}`, table([
      { title: "partition", value: (p) => p.partition },
      { title: "committed", num: true, value: (p) => fmt(p.committed) },
      { title: "end", num: true, value: (p) => fmt(p.end) },
      { title: "lag", num: true, value: (p) => fmt(p.lag) },
    ], g.partitions, { "data-group": g.group }))),
  ));
}

const TYPES = ["temperature", "humidity", "pressure"];

function renderSensors(main, params) {
  const form = el("form", { class: "inline", id: "sensor-search" },
    el("label", {}, "id prefix", el("input", { name: "prefix", value: params.get("prefix") || "", autocomplete: "off" })),
    el("label", {}, "type", el("input", { name: "type", list: "types", value: params.get("type") || "" })),
    el("datalist", { id: "types" }, TYPES.map((t) => el("option", { value: t }))),
    el("label", {}, "location", el("input", { name: "location", value: params.get("location") || "" })),
    el("button", { type: "submit" }, "Search"));
  const results = el("div", { id: "sensor-results" });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    location.hash = "#/sensors" + query(data);
  });
  main.append(card("Sensors", form, results));
  loadSensors(results, params, null);
}

async function loadSensors(results, params, cursor) {
  const filter = { prefix: params.get("prefix"), type: params.get("type"), location: params.get("location"),
    limit: params.get("limit") || SENSORS_PAGE, cursor };
  results.dataset.loading = "true";  // what a test (or a slow eye) waits on
  try {
    const page = await api("/sensors" + query(filter));
    const rows = page.sensors.map((s) => Object.assign({ attrs: { "data-sensor": s.sensor_id } }, s));
    const shown = table([
      { title: "sensor", value: (s) => el("a", { href: "#/sensor/" + encodeURIComponent(s.sensor_id) }, s.sensor_id) },
      { title: "type", value: (s) => s.type },
      { title: "location", value: (s) => s.location },
      { title: "readings", num: true, value: (s) => fmt(s.count) },
      { title: "first", value: (s) => s.first_reading },
      { title: "last", value: (s) => s.last_reading },
    ], rows);
    if (!cursor) results.replaceChildren();
    // A full page gives a cursor even when nothing follows: an empty next page adds no table.
    if (!cursor || rows.length) results.append(shown);
    if (page.next_cursor) {
      const more = el("button", { class: "secondary", type: "button" }, "More");
      more.addEventListener("click", () => { more.remove(); loadSensors(results, params, page.next_cursor); });
      results.append(more);
    }
  } catch (error) {
    results.replaceChildren(el("p", { class: "error" }, error.message));
  }
  delete results.dataset.loading;
}

const isoHour = (t) => new Date(t).toISOString().slice(0, 13) + ":00:00Z";
const localInput = (iso) => iso.slice(0, 16);

async function renderSensor(main, params, id) {
  const box = card(`Sensor ${id}`, el("p", { class: "muted" }, "loading…"));
  main.append(box);
  let sensor;
  try {
    sensor = await api("/sensors/" + encodeURIComponent(id));
  } catch (error) {
    return box.replaceChildren(el("h2", {}, `Sensor ${id}`), el("p", { class: "error" }, error.message));
  }
  // The default range: the two days up to the sensor's last reading.
  const lastHour = Date.parse(isoHour(Date.parse(sensor.last_reading)));
  const from = params.get("from") || new Date(lastHour - 47 * 3600e3).toISOString();
  const to = params.get("to") || new Date(lastHour + 3600e3).toISOString();
  const form = el("form", { class: "inline", id: "range" },
    el("label", {}, "from (UTC)", el("input", { type: "datetime-local", name: "from", value: localInput(from) })),
    el("label", {}, "to (UTC)", el("input", { type: "datetime-local", name: "to", value: localInput(to) })),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const f = new Date(data.get("from") + ":00Z"), t = new Date(data.get("to") + ":00Z");
    if (isNaN(f) || isNaN(t)) return;
    location.hash = `#/sensor/${encodeURIComponent(id)}` + query({ from: f.toISOString(), to: t.toISOString() });
  });
  box.replaceChildren(el("h2", {}, `Sensor ${id}`), el("dl", { class: "stats" },
    stat("type", sensor.type), stat("location", sensor.location), stat("readings", fmt(sensor.count)),
    stat("first", sensor.first_reading), stat("last", sensor.last_reading)), form);
  const charts = card("Hourly average with min–max", el("p", { class: "muted" }, "loading…"));
  const counts = card("Readings per hour (click an hour for its readings)");
  const readings = card("Readings of an hour", el("p", { class: "muted" }, "pick an hour"));
  readings.id = "readings";
  main.append(el("div", { class: "grid" }, charts, counts), readings);
  let rows;
  try {
    rows = (await api(`/sensors/${encodeURIComponent(id)}/aggregates` + query({ from, to }))).aggregates;
  } catch (error) {
    return charts.replaceChildren(el("p", { class: "error" }, error.message));
  }
  const pick = (hour) => {
    counts.querySelectorAll(".bar").forEach((b) => b.classList.toggle("selected", b.dataset.hour === hour));
    loadReadings(readings, id, hour, null, limit);
  };
  const drawn = aggregateCharts(rows, pick, params.get("hour"));
  const limit = params.get("limit") || READINGS_PAGE;
  charts.replaceChildren(el("h2", {}, "Hourly average with min–max"), rows.length ? drawn.values : el("p", { class: "muted" }, "no aggregates in this range"));
  counts.append(rows.length ? drawn.counts : el("p", { class: "muted" }, "none"));
  const select = el("select", { id: "hour-select" }, el("option", { value: "" }, "an hour…"),
    rows.map((r) => el("option", { value: r.hour_bucket }, `${r.hour_bucket} (${r.count})`)));
  select.addEventListener("change", () => select.value && pick(select.value));
  counts.append(el("label", {}, "hour", select));
  if (params.get("hour")) pick(params.get("hour"));
}

async function loadReadings(box, id, hour, cursor, limit) {
  const to = new Date(Date.parse(hour) + 3600e3).toISOString();
  // A reply for an hour no longer chosen is dropped (a slow one must not overwrite the next).
  box.dataset.hour = hour;
  try {
    const page = await api(`/sensors/${encodeURIComponent(id)}/readings` + query({ from: hour, to, limit, cursor }));
    if (box.dataset.hour !== hour) return;
    const rows = table([
      { title: "timestamp", value: (r) => r.timestamp },
      { title: "value", num: true, value: (r) => r.value },
      { title: "partition", num: true, value: (r) => r.partition },
      { title: "offset", num: true, value: (r) => r.offset },
    ], page.readings, { class: "readings" });
    if (!cursor) box.replaceChildren(el("h2", {}, `Readings of ${hour}`));
    box.append(rows);
    if (page.next_cursor) {
      const more = el("button", { class: "secondary", type: "button" }, "More");
      more.addEventListener("click", () => { more.remove(); loadReadings(box, id, hour, page.next_cursor, limit); });
      box.append(more);
    }
  } catch (error) {
    if (box.dataset.hour !== hour) return;
    box.replaceChildren(el("h2", {}, `Readings of ${hour}`), el("p", { class: "error" }, error.message));
  }
}

// ---- Operations ------------------------------------------------------------------------------

// Each admin operation: its form fields and how they become the request body (docs/protocol.md).
const OPERATIONS = [
  { op: "compact", what: "Merge runs of closed segments; rewrite those holding deleted readings.",
    fields: [["target_segment_bytes", "target segment size (e.g. 64M)", "text"]] },
  { op: "retention", what: "Delete whole closed segments from the start of partitions.",
    fields: [["older_than", "older than (30d, 12h)", "text"], ["max_bytes", "max bytes per partition (e.g. 10G)", "text"],
      ["dry_run", "dry run", "checkbox"], ["force", "force", "checkbox"]] },
  { op: "verify", what: "Check the log; with repair, mend what a running server can.",
    fields: [["repair", "repair", "checkbox"]] },
  { op: "rebuild-aggregates", what: "Rebuild the aggregates from offset zero, in place, while serving.",
    fields: [["until", "until (ISO-8601, optional)", "text"]] },
  { op: "delete-sensor", what: "Delete every reading of the sensors named (comma-separated).",
    fields: [["sensors", "sensors", "text", true]] },
  { op: "reset-offsets", what: "Move a consumer group (without execute: a dry run).",
    fields: [["group", "group", "text", true], ["to", "to (earliest, latest)", "text"], ["to_offset", "to offset", "number"],
      ["to_datetime", "to date-time (ISO-8601)", "text"], ["partition", "partition", "number"], ["execute", "execute", "checkbox"]] },
];

function operationBody(form, fields) {
  const body = {};
  for (const [name, , type] of fields) {
    const input = form.elements[name];
    if (type === "checkbox") { if (input.checked) body[name] = true; continue; }
    const value = input.value.trim();
    if (!value) continue;
    if (name === "sensors") body.sensors = value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (type === "number") body[name] = Number(value);
    else if (name === "max_bytes" && /^\d+$/.test(value)) body[name] = Number(value);
    else body[name] = value;
  }
  return body;
}

function confirmRun(op, body) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = `Run ${op}?`;
  $("confirm-text").textContent = `POST /admin/${op} starts a job on the running server.`;
  $("confirm-body").textContent = JSON.stringify(body, null, 2);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "run"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function renderOperations(main) {
  if (!isAdmin()) return main.append(card("Operations", el("p", { class: "muted" }, "This key lacks the admin role.")));
  const message = el("p", { id: "operation-message" });
  const forms = OPERATIONS.map(({ op, what, fields }) => {
    const form = el("form", { "data-operation": op },
      el("h3", {}, op), el("p", {}, what),
      fields.map(([name, label, type, required]) => type === "checkbox"
        ? el("label", { class: "check" }, el("input", { type, name }), label)
        : el("label", {}, label, el("input", { type, name, required, autocomplete: "off" }))),
      el("button", { type: "submit", class: "danger" }, `Run ${op}`));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = operationBody(form, fields);
      if (!(await confirmRun(op, body))) return;
      try {
        const job = await api(`/admin/${op}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        message.className = "";
        message.textContent = `started job ${job.id} (${op})`;
        refreshJobs();
      } catch (error) {
        message.className = "error";
        message.textContent = `${op}: ${error.message}`;
      }
    });
    return form;
  });
  main.append(el("div", { class: "grid" },
    maintenanceState(),
    el("section", { class: "card wide", id: "jobs" }, el("h2", {}, "Jobs"), el("p", { class: "muted" }, "loading…")),
    el("section", { class: "card wide" }, el("h2", {}, "Run an operation"), message, el("div", { class: "ops" }, forms)),
  ));
  refreshJobs();
}

// Retention and compaction as the metrics tell them; redrawn alone by the poll, so that a form
// being filled in is never replaced under the operator's hands.
function maintenanceState() {
  const last = state.samples[state.samples.length - 1];
  const m = last ? last.metrics : new Map();
  const sum = (name) => series(m, name).reduce((a, s) => a + s.value, 0);
  const blocked = series(m, "sensorlog_retention_blocked").filter((s) => s.value > 0).map((s) => s.labels.partition);
  const runs = series(m, "sensorlog_maintenance_jobs_total").filter((s) => s.value > 0);
  return el("section", { class: "card wide", id: "maintenance" }, el("h2", {}, "Retention and compaction"),
    el("dl", { class: "stats" },
      stat("retention blocked", blocked.length ? "partitions " + blocked.join(", ") : "no", "retention-blocked"),
      stat("segments removed", fmt(sum("sensorlog_retention_segments_removed_total"))),
      stat("bytes removed", bytes(sum("sensorlog_retention_bytes_removed_total"))),
      stat("segments compacted", fmt(sum("sensorlog_compaction_segments_rewritten_total"))),
    ), table([
      { title: "maintenance job", value: (s) => s.labels.job },
      { title: "outcome", value: (s) => s.labels.outcome },
      { title: "runs", num: true, value: (s) => fmt(s.value) },
    ], runs));
}

async function refreshJobs() {
  const box = $("jobs");
  if (!box) return;
  try {
    const jobs = (await api("/admin/jobs")).jobs;
    box.replaceChildren(el("h2", {}, "Jobs"), table([
      { title: "id", num: true, value: (j) => j.id },
      { title: "operation", value: (j) => j.operation },
      { title: "state", value: (j) => j.state },
      { title: "phase", value: (j) => j.phase || "" },
      { title: "progress", value: (j) => j.progress.total > 0
        ? el("progress", { max: j.progress.total, value: j.progress.done, title: `${j.progress.done} / ${j.progress.total}` })
        : (j.state === "running" ? "…" : "") },
      { title: "started", value: (j) => seconds(j.started) },
      { title: "finished", value: (j) => seconds(j.finished) },
      { title: "summary", value: (j) => j.error ? `${j.error.code}: ${j.error.message}` : (j.summary || []).join("; ") },
    ], jobs.map((j) => Object.assign({ attrs: { "data-job": j.id, "data-state": j.state } }, j))));
  } catch (error) {
    box.replaceChildren(el("h2", {}, "Jobs"), el("p", { class: "error" }, error.message));
  }
}

// ---- Navigation, key, polling ----------------------------------------------------------------

function route() {
  const [path, search] = (location.hash.slice(1) || "/overview").split("?");
  const parts = path.split("/").filter(Boolean);
  let name = Object.hasOwn(pages, parts[0] || "") ? parts[0] : "overview";
  if (name === "operations" && !isAdmin()) name = "overview";
  let id = "";
  try {
    id = parts.slice(1).map(decodeURIComponent).join("/");
  } catch (_) {
    name = "overview";  // a malformed address
  }
  return { name, params: new URLSearchParams(search || ""), id };
}

let renders = 0;

// Draws the page of the address off-screen and swaps it in, unless the address changed while it
// loaded (the later render wins). A page that fails to draw shows why.
async function render() {
  const mine = ++renders;
  const { name, params, id } = route();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "sensor" ? "sensors" : name)));
  const fresh = el("main", { id: "main", "data-page": name });
  try {
    await pages[name].render(fresh, params, id);
  } catch (error) {
    fresh.replaceChildren(card("Error", el("p", { class: "error" }, String(error.message || error))));
  }
  if (mine === renders) $("main").replaceWith(fresh);
}

async function tick() {
  await sample();
  const { name } = route();
  const busy = document.querySelector("dialog[open]") || (document.activeElement && document.activeElement.closest("form"));
  if (pages[name].refresh) await pages[name].refresh();
  else if (pages[name].live && !busy) await render();
}

async function loadSession() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const response = await fetch("/session", { headers: key ? { "X-API-Key": key } : {} });
  // 401: the key given is not one this server knows.
  state.session = response.status === 401 ? { keys_required: true, roles: [] } : await response.json();
  $("key-button").hidden = !state.session.keys_required;
  $("nav-operations").hidden = !isAdmin();
  const banner = $("banner");
  banner.hidden = canRead();
  banner.textContent = state.session.keys_required && !state.session.roles.length ? "Enter an API key to see this server." : "This key may not read.";
}

function askForKey(message) {
  const error = $("key-error");
  error.hidden = !message;
  error.textContent = message || "";
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

async function start() {
  $("key-button").addEventListener("click", () => askForKey());
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key-input").value);
    await loadSession();
    if (state.session.roles.length) {
      $("key-dialog").close();
      await render();
    } else {
      askForKey("That key is not one this server knows.");
    }
  });
  $("key-forget").addEventListener("click", async () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("key-input").value = "";
    $("key-dialog").close();
    await loadSession();
    await render();
  });
  window.addEventListener("hashchange", render);
  await loadSession();
  if (state.session.keys_required && !state.session.roles.length) askForKey();
  await sample();
  await render();
  poll();
}

// The next poll is planned when this one ends: a slow server never has polls pile up, and the
// samples stay in time order.
async function poll() {
  try {
    await tick();
  } finally {
    state.timer = setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", start);
