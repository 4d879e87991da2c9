// Flywheel operator dashboard: versions, weights, per-version metrics with charts, the live canary
// analysis, the audit log, and promote / roll back / pause for each canary.
// Plain browser JS, no build step, no libraries. Every value from the API is written with textContent
// or as an SVG attribute set through the DOM (charts are built with createElementNS), never as HTML.
"use strict";

const KEY_STORAGE = "flywheel.operatorKey";
const REFRESH_MS = 5000;
const AUDIT_ROWS = 50;
const SERIES_BUCKETS = 60;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2a62d6", "#d9822b", "#2e9e5b", "#c23b3b", "#7b4fc9", "#2aa3b5", "#a0792b", "#d14fa2"];
const ACTIONS = {
  promote: { path: "promote", label: "Promote", verb: "promoted", ask: (id) => `Promote ${id} to stable? It takes all traffic; the current stable is retired.` },
  rollback: { path: "abort", label: "Roll back", verb: "rolled back", ask: (id) => `Roll back ${id}? Its weight goes to 0 and it stops serving.` },
  pause: { path: "pause", label: "Pause", verb: "paused", ask: (id) => `Pause ${id}? The controller holds it at its current weight.` },
  resume: { path: "resume", label: "Resume", verb: "resumed", ask: (id) => `Resume ${id}? The controller acts on its analysis again.` },
};

const $ = (id) => document.getElementById(id);
let timer = null;
let loading = false;
let again = false; // a refresh was asked for while one was loading: run once more after it
let colors = new Map(); // version id -> colour, stable across charts

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_STORAGE) || ""}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError((data && data.error && data.error.message) || `HTTP ${resp.status}`, resp.status);
  }
  return data;
}

// --- formatting ------------------------------------------------------------------------------------
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const pct = (x) => (isNum(x) ? `${+(x * 100).toFixed(1)} %` : "–");
const num = (x, digits = 3) => (isNum(x) ? `${+x.toFixed(digits)}` : "–");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const state = (s) => (s ? `${s.status} ${pct(s.weight)}` : "–");

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  for (const [name, value] of Object.entries(attrs || {})) tr.setAttribute(name, value);
  return tr;
}

// --- key handling ----------------------------------------------------------------------------------
function showKeyForm(message) {
  stopRefresh();
  $("key-form").hidden = false;
  $("dashboard").hidden = true;
  $("forget-key").hidden = true;
  $("status").textContent = message || "";
  $("key-input").focus();
}

function refused(err) {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyForm(`That key was refused (HTTP ${err.status}: ${err.message}). Enter an operator key.`);
}

function stopRefresh() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function startRefresh() {
  stopRefresh();
  timer = setInterval(refresh, REFRESH_MS);
}

// --- loading ---------------------------------------------------------------------------------------
function metricsQuery() {
  const choice = $("window").value;
  if (choice === "all") return `bucket_s=86400&buckets=${SERIES_BUCKETS}`;
  const seconds = Number(choice);
  const since = new Date(Date.now() - seconds * 1000).toISOString();
  const bucket = Math.max(1, Math.round(seconds / SERIES_BUCKETS));
  return `since=${encodeURIComponent(since)}&bucket_s=${bucket}&buckets=${SERIES_BUCKETS}`;
}

async function refresh() {
  if (loading) {
    again = true;
    return;
  }
  loading = true;
  try {
    const [policies, metrics, canary, audit] = await Promise.all([
      api("GET", "/admin/policies"),
      api("GET", `/admin/metrics?${metricsQuery()}`),
      api("GET", "/admin/canary"),
      api("GET", `/admin/audit?limit=${AUDIT_ROWS}`),
    ]);
    colors = new Map(policies.data.map((v, i) => [v.id, PALETTE[i % PALETTE.length]]));
    renderVersions(policies.data);
    renderCharts(metrics);
    renderCanaries(canary.data);
    renderAudit(audit.data);
    $("key-form").hidden = true;
    $("dashboard").hidden = false;
    $("forget-key").hidden = false;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (["error", "loading"].includes($("status").dataset.kind)) setStatus("");
    if (timer === null) startRefresh();
  } catch (err) {
    if (err.status === 401 || err.status === 403) refused(err);
    else setStatus(`Could not refresh: ${err.message}`, "error");
  } finally {
    loading = false;
    if (again) {
      again = false;
      if (sessionStorage.getItem(KEY_STORAGE)) refresh();
    }
  }
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.kind = kind || "";
}

// --- versions --------------------------------------------------------------------------------------
function renderVersions(versions) {
  const body = $("versions").tBodies[0];
  body.replaceChildren(...versions.map((v) => {
    const status = el("td", v.status, `status status-${v.status}`);
    return row([v.id, v.kind, status, pct(v.weight), v.parent || "–", when(v.created_at), v.served_model_name],
      { "data-version": v.id });
  }));
}

// --- charts ----------------------------------------------------------------------------------------
function charted(metrics) {
  // Active versions, and any other that has numbers in this window.
  return metrics.data.filter((m) => m.status === "stable" || m.status === "canary" || m.ratings > 0 || m.interactions > 0);
}

function renderCharts(metrics) {
  const shown = charted(metrics);
  barChart($("chart-thumbs"), shown.map((m) => ({ id: m.version_id, value: m.thumbs_up_rate, n: m.ups + m.downs,
    text: isNum(m.thumbs_up_rate) ? `${pct(m.thumbs_up_rate)} (${m.ups} up, ${m.downs} down)` : "no thumbs" })), 1);
  barChart($("chart-reward"), shown.map((m) => ({ id: m.version_id, value: m.reward_mean, n: m.reward_n,
    text: isNum(m.reward_mean) ? `${num(m.reward_mean)} (n=${m.reward_n})` : "no rewards" })));
  barChart($("chart-blocks"), shown.map((m) => ({ id: m.version_id, value: m.safety_block_rate, n: m.interactions,
    text: isNum(m.safety_block_rate) ? `${pct(m.safety_block_rate)} (${m.blocked} of ${m.interactions})` : "no answers" })), 1);
  barChart($("chart-latency"), shown.map((m) => ({ id: m.version_id, value: m.latency_p99_ms, n: m.latency_n,
    text: isNum(m.latency_p99_ms) ? `${num(m.latency_p99_ms, 0)} ms (n=${m.latency_n})` : "no answers" })));
  const ids = new Set(shown.map((m) => m.version_id));
  seriesChart($("chart-series"), metrics.series, ids);
}

function replaceChart(figure, chart) {
  const old = figure.querySelector("svg, .empty");
  if (old) old.remove();
  figure.appendChild(chart);
}

function barChart(figure, rows, fixedMax) {
  // Horizontal bars from zero, one row per version; a version without a value gets a zero-width bar.
  if (!rows.length) {
    replaceChart(figure, el("p", "No versions with data in this window.", "empty"));
    return;
  }
  const label = 56, width = 230, text = 200, rowH = 24;
  const values = rows.map((r) => r.value).filter(isNum);
  const lo = Math.min(0, ...values);
  let hi = Math.max(fixedMax === undefined ? 0 : fixedMax, ...values);
  if (hi === lo) hi = lo + 1;
  const x = (v) => label + ((v - lo) / (hi - lo)) * width;
  const chart = svg("svg", { class: "chart bars", viewBox: `0 0 ${label + width + text} ${rows.length * rowH + 6}`,
    role: "img", "aria-label": figure.querySelector("figcaption").textContent });
  chart.appendChild(svg("line", { class: "axis", x1: x(0), x2: x(0), y1: 0, y2: rows.length * rowH + 6 }));
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const g = svg("g", { class: "row", "data-version": r.id });
    g.appendChild(svg("text", { class: "label", x: 0, y: y + 13 }, r.id));
    const from = isNum(r.value) ? x(Math.min(0, r.value)) : x(0);
    const to = isNum(r.value) ? x(Math.max(0, r.value)) : x(0);
    const bar = svg("rect", { class: "bar", x: from, y, width: to - from, height: rowH - 8, fill: colors.get(r.id) || "#888",
      "data-version": r.id, "data-value": isNum(r.value) ? r.value : "", "data-n": r.n });
    bar.appendChild(svg("title", {}, `${r.id}: ${r.text}`));
    g.appendChild(bar);
    g.appendChild(svg("text", { class: "value", x: Math.max(to, x(0)) + 4, y: y + 13 }, r.text));
    chart.appendChild(g);
  });
  replaceChart(figure, chart);
}

function seriesChart(figure, series, ids) {
  // Thumbs-up rate per bucket (0..1) over the window, one line per version.
  const W = 640, H = 220, left = 40, right = 12, top = 10, bottom = 28;
  const lines = series ? series.data.filter((s) => ids.has(s.version_id) && s.points.some((p) => isNum(p.thumbs_up_rate))) : [];
  if (!lines.length) {
    replaceChart(figure, el("p", "No thumbs in this window.", "empty"));
    return;
  }
  const t0 = Date.parse(series.start), t1 = Date.parse(series.end);
  const half = (series.bucket_s * 1000) / 2;
  const x = (t) => left + ((t - t0) / (t1 - t0 || 1)) * (W - left - right);
  const y = (v) => top + (1 - v) * (H - top - bottom);
  const chart = svg("svg", { class: "chart series", viewBox: `0 0 ${W} ${H + 16 * Math.ceil(lines.length / 4)}`,
    role: "img", "aria-label": "thumbs-up rate over time" });
  for (const v of [0, 0.5, 1]) {
    chart.appendChild(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    chart.appendChild(svg("text", { class: "tick", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, pct(v)));
  }
  const long = t1 - t0 > 86400 * 1000;
  const stamp = (t) => (long ? new Date(t).toLocaleDateString() : new Date(t).toLocaleTimeString());
  chart.appendChild(svg("text", { class: "tick", x: left, y: H - 8 }, stamp(t0)));
  chart.appendChild(svg("text", { class: "tick", x: W - right, y: H - 8, "text-anchor": "end" }, stamp(t1)));
  lines.forEach((s, i) => {
    const color = colors.get(s.version_id) || "#888";
    const g = svg("g", { class: "line", "data-version": s.version_id });
    const pts = s.points.filter((p) => isNum(p.thumbs_up_rate))
      .map((p) => ({ p, cx: x(Date.parse(p.start) + half), cy: y(p.thumbs_up_rate) }));
    g.appendChild(svg("polyline", { points: pts.map((q) => `${q.cx},${q.cy}`).join(" "), stroke: color, fill: "none" }));
    for (const q of pts) {
      const dot = svg("circle", { class: "point", cx: q.cx, cy: q.cy, r: 3, fill: color });
      dot.appendChild(svg("title", {}, `${s.version_id} ${stamp(Date.parse(q.p.start))}: ${pct(q.p.thumbs_up_rate)} ` +
        `(${q.p.ups} up, ${q.p.downs} down)`));
      g.appendChild(dot);
    }
    chart.appendChild(g);
    const lx = left + (i % 4) * 150, ly = H + 4 + 16 * Math.floor(i / 4);
    const key = svg("g", { class: "legend", "data-version": s.version_id });
    key.appendChild(svg("rect", { x: lx, y: ly, width: 10, height: 10, fill: color }));
    key.appendChild(svg("text", { x: lx + 14, y: ly + 9 }, s.version_id));
    chart.appendChild(key);
  });
  replaceChart(figure, chart);
}

// --- canary analysis -------------------------------------------------------------------------------
function renderCanaries(reports) {
  const box = $("canaries");
  if (!reports.length) {
    box.replaceChildren(el("p", "No canary is running.", "empty"));
    return;
  }
  box.replaceChildren(...reports.map(canaryCard));
}

function canaryCard(r) {
  const card = el("article", undefined, "canary");
  card.dataset.version = r.version_id;
  card.appendChild(el("h3", `${r.version_id} vs stable ${r.stable_id}`));
  const flags = el("p", undefined, "flags");
  flags.appendChild(el("span", r.decision, `decision decision-${r.decision}`));
  if (r.paused) flags.appendChild(el("span", "paused", "flag paused"));
  if (r.needs_operator) flags.appendChild(el("span", "needs an operator", "flag needs-operator"));
  if (!r.started) flags.appendChild(el("span", "not started", "flag"));
  card.appendChild(flags);
  card.appendChild(el("p", r.why, "why"));
  const target = r.steps[r.step];
  card.appendChild(el("p", `step ${r.step + 1} of ${r.steps.length} (target ${pct(target)}), weight ${pct(r.weight)}, ` +
    `${r.elapsed_s} s in this step, failures ${r.failures} of ${r.failure_limit}`, "step"));

  const table = el("table", undefined, "metrics");
  const head = document.createElement("thead");
  head.appendChild(row(["metric", "canary", "stable", "n canary / stable", "P(not worse)", "outcome"].map((h) => el("th", h))));
  table.appendChild(head);
  const body = document.createElement("tbody");
  for (const m of Object.values(r.metrics)) {
    const outcome = el("td", m.outcome, `outcome outcome-${m.outcome}`);
    outcome.title = m.why;
    const fmt = m.metric.endsWith("_rate") ? pct : num;
    body.appendChild(row([m.metric, fmt(m.canary), fmt(m.stable), `${m.n_canary} / ${m.n_stable}`, num(m.p_not_worse), outcome],
      { "data-metric": m.metric }));
  }
  table.appendChild(body);
  card.appendChild(table);

  const actions = el("div", undefined, "actions");
  for (const name of ["promote", "rollback", r.paused ? "resume" : "pause"]) {
    const button = el("button", ACTIONS[name].label, `action ${name}`);
    button.type = "button";
    button.dataset.action = name;
    button.addEventListener("click", () => act(name, r.version_id));
    actions.appendChild(button);
  }
  card.appendChild(actions);
  return card;
}

function askConfirm(text) {
  // A small in-page dialog (window.confirm would block the page and its refresh).
  return new Promise((resolve) => {
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    $("confirm").hidden = false;
    $("confirm-ok").focus();
    const done = (ok) => {
      $("confirm").hidden = true;
      $("confirm-ok").removeEventListener("click", yes);
      $("confirm-cancel").removeEventListener("click", no);
      document.removeEventListener("keydown", keys);
      resolve(ok ? { reason: $("confirm-reason").value.trim() } : null);
    };
    const yes = () => done(true);
    const no = () => done(false);
    const keys = (event) => {
      if (event.key === "Escape") done(false);
      else if (event.key === "Enter" && event.target === $("confirm-reason")) done(true);
    };
    $("confirm-ok").addEventListener("click", yes);
    $("confirm-cancel").addEventListener("click", no);
    document.addEventListener("keydown", keys);
  });
}

async function act(name, versionId) {
  const action = ACTIONS[name];
  const answer = await askConfirm(action.ask(versionId));
  if (!answer) return;
  setStatus(`${action.label} ${versionId}…`);
  try {
    const out = await api("POST", `/admin/canary/${encodeURIComponent(versionId)}/${action.path}`,
      answer.reason ? { reason: answer.reason } : undefined);
    setStatus(`${versionId} ${action.verb}: now ${out.status} at ${pct(out.weight)}${out.paused ? ", paused" : ""}.`, "done");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      refused(err);
      return;
    }
    setStatus(`Could not ${action.label.toLowerCase()} ${versionId}: ${err.message}`, "error");
  }
  await refresh();
}

// --- audit log -------------------------------------------------------------------------------------
function renderAudit(entries) {
  const body = $("audit").tBodies[0];
  body.replaceChildren(...entries.map((a) => {
    const at = el("td", when(a.at));
    at.title = a.at;
    const reason = (a.details && (a.details.reason || a.details.canary_action)) || "";
    return row([at, a.actor, a.action, a.version_id, `${state(a.from_state)} → ${state(a.to_state)}`, reason],
      { "data-action": a.action, "data-version": a.version_id });
  }));
}

// --- start -----------------------------------------------------------------------------------------
function init() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    setStatus("Loading…", "loading");
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyForm();
  });
  $("window").addEventListener("change", refresh);
  if (sessionStorage.getItem(KEY_STORAGE)) refresh();
  else showKeyForm();
}

document.addEventListener("DOMContentLoaded", init);
