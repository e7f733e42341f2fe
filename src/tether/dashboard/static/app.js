// tether dashboard: renders /api/snapshot, updated by server-sent events. Text from servers and logs is always set
// with textContent, never parsed as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const q = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's content security policy
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, s);
  if (s < 90) return Math.round(s) + "s";
  if (s < 5400) return Math.round(s / 60) + "m";
  if (s < 172800) return (s / 3600).toFixed(1) + "h";
  return (s / 86400).toFixed(1) + "d";
}
const usd = (x) => (x === null || x === undefined ? "-" : "$" + Number(x).toFixed(x < 1 ? 4 : 2));
const state = (s) => el("span", { class: "state state-" + s, "data-state": s }, s);

function bar(done, total) {
  const pct = total ? Math.min(100, (100 * done) / total) : 0;
  const inner = el("span", { style: "width:" + pct.toFixed(1) + "%" });
  return el("span", { class: "bar", role: "progressbar", "aria-valuenow": pct.toFixed(1) }, inner);
}

function replace(id, ...nodes) {
  const node = document.getElementById(id);
  node.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  return node;
}

const NONE = (cols) => el("tr", { class: "none" }, el("td", { colspan: String(cols) }, "none"));
let openLog = null; // { run, text }: the log shown under its run's row, kept across updates

function logRow(cols) {
  const close = el("a", { class: "close", role: "button" }, "close");
  close.addEventListener("click", () => { openLog = null; document.getElementById("log-row")?.remove(); });
  return el("tr", { id: "log-row", "data-log": openLog.run }, el("td", { colspan: String(cols) },
    el("div", { class: "log-head" }, "Log of " + openLog.run + " (last lines) ", close),
    el("pre", { id: "log" }, openLog.text)));
}

const RUN_COLUMNS = ["host", "run", "state", "progress", "done", "failed", "rate", "ETA", "age", "log"];

function renderRuns(groups) {
  const blocks = [];
  for (const group of groups) {
    const rows = [];
    for (const r of group.runs) {
      const failed = r.failed_by && Object.keys(r.failed_by).length
        ? r.failed + " (" + Object.entries(r.failed_by).map(([k, n]) => n + " x " + k).join(", ") + ")"
        : String(r.failed);
      const link = el("a", { class: "log", "data-run": r.id, role: "button" }, "log");
      link.addEventListener("click", () => showLog(r.id));
      rows.push(el("tr", { "data-run": r.id },
        el("td", {}, r.host), el("td", {}, r.id), el("td", {}, state(r.status)),
        el("td", {}, bar(r.completed, r.total)),
        el("td", {}, r.completed + "/" + (r.total === null ? "?" : r.total)), el("td", { class: "text" }, failed),
        el("td", {}, r.rate_per_s ? r.rate_per_s.toFixed(2) + "/s" : "-"),
        el("td", {}, r.status === "running" ? duration(r.eta_s) : "-"), el("td", {}, duration(r.age_s)),
        el("td", {}, link)));
      if (openLog && openLog.run === r.id) rows.push(logRow(RUN_COLUMNS.length));
    }
    const head = el("tr", {}, ...RUN_COLUMNS.map((h) => el("th", {}, h)));
    blocks.push(el("h3", {}, group.experiment), el("table", { class: "runs" }, el("thead", {}, head),
      el("tbody", {}, ...rows)));
  }
  if (!blocks.length) {
    const head = el("tr", {}, ...RUN_COLUMNS.map((h) => el("th", {}, h)));
    blocks.push(el("table", { class: "runs" }, el("thead", {}, head), el("tbody", {}, NONE(RUN_COLUMNS.length))));
  }
  replace("runs", ...blocks);
}

// A managed run is one row (its summary) that opens into a row per shard: its server, state and progress.
const openManaged = new Set(); // the managed runs opened by the reader stay open across updates

function renderManaged(runs) {
  document.getElementById("managed-section").hidden = !runs.length;
  const blocks = runs.map((m) => {
    const head = el("tr", {}, ...["shard", "server", "state", "progress", "done", "synced", "recoveries", "why"]
      .map((h) => el("th", {}, h)));
    const of = (n, total) => String(n === null || n === undefined ? "-" : n) + "/" +
      (total === null || total === undefined ? "?" : total);
    const rows = (m.shards || []).map((s) => el("tr", { "data-shard": String(s.shard) },
      el("td", {}, String(s.shard)), el("td", {}, s.server || "-"), el("td", {}, state(s.status)),
      el("td", {}, bar(s.completed, s.total)),
      el("td", { class: "done" }, of(s.completed, s.total)), el("td", { class: "synced" }, of(s.synced, s.total)),
      el("td", {}, String(s.recoveries || 0)), el("td", { class: "text reason" }, s.reason || "")));
    const total = m.total === null || m.total === undefined ? "?" : m.total;
    const summary = el("summary", { "data-managed": m.id },
      el("b", {}, m.experiment), " ", m.id, " ", state(m.status), " ", bar(m.completed, m.total), " ",
      m.completed + "/" + total, " · " + (m.shards || []).length + " shards · " + (m.recoveries || 0) +
      " recoveries · " + usd(m.cost_usd), m.reason ? el("span", { class: "reason" }, " · " + m.reason) : null);
    const details = el("details", { class: "managed" }, summary,
      el("table", { class: "runs" }, el("thead", {}, head), el("tbody", {}, ...(rows.length ? rows : [NONE(8)]))));
    details.open = openManaged.has(m.id);
    details.addEventListener("toggle", () => {
      if (details.open) openManaged.add(m.id); else openManaged.delete(m.id);
    });
    return details;
  });
  replace("managed", ...blocks);
}

// What the autopilot does next with a server, as a sentence.
function nextText(n) {
  if (!n) return "-";
  if (n.action !== "none") return n.action + " now";
  if (n.in_s !== null && n.in_s !== undefined) return "stops in " + duration(n.in_s) + " if still idle";
  return "nothing planned";
}

function renderServers(servers, hosts) {
  const rows = servers.map((s) => el("tr", { "data-server": s.name },
    el("td", {}, s.name), el("td", {}, state(s.state)), el("td", {}, usd(s.dph_now)), el("td", {}, duration(s.uptime_s)),
    el("td", {}, duration(s.idle_s)), el("td", {}, usd(s.accrued_usd)),
    el("td", { title: s.next.reason, class: "next" }, nextText(s.next)),
    el("td", { class: "home" }, s.state === "gone" ? "-"
      : s.results_not_home ? el("span", { class: "badge" }, "not home") : "home")));
  document.querySelector("#servers tbody").replaceChildren(...(rows.length ? rows : [NONE(8)]));
  replace("hosts", ...hosts.filter((h) => h.error).map((h) =>
    el("p", { class: "unreachable", "data-host": h.host }, h.host + ": unreachable (" + h.error + ")")));
}

function renderGpus(gpus) {
  const blocks = [];
  for (const [host, list] of Object.entries(gpus)) {
    for (const g of list) {
      const total = g.total_gb || 1;
      const reserved = el("span", { class: "reserved", style: "width:" + (100 * (g.reserved_gb || 0) / total) + "%;display:inline-block;height:100%" });
      const outside = el("span", { class: "outside", style: "width:" + (100 * (g.outside_registry_gb || 0) / total) + "%;display:inline-block;height:100%" });
      const who = g.reserved.map((r) => r.id + " " + (r.gb === null ? "?" : r.gb) + " GB").join(", ");
      blocks.push(el("div", { class: "gpu" }, host + " GPU " + g.index + " ", el("span", { class: "bar" }, reserved, outside),
        " " + (g.reserved_gb || 0) + " GB reserved, " + (g.outside_registry_gb || 0) + " GB outside the registry, of " +
        g.total_gb + " GB" + (who ? " (" + who + ")" : "")));
    }
  }
  replace("gpus", ...(blocks.length ? blocks : [el("p", { class: "none" }, "none")]));
}

function renderMoney(m) {
  replace("money",
    el("span", {}, "today " + usd(m.today_usd)), el("span", {}, "this week " + usd(m.week_usd)),
    el("span", {}, "total " + usd(m.total_usd)), el("span", {}, "burn " + usd(m.burn_dph) + "/hr"),
    el("span", {}, "next 24 h ~" + usd(m.projected_24h_usd)),
    m.max_total_usd !== null ? el("span", {}, "budget " + usd(m.max_total_usd)) : null);
}

// Distinct colours: a hand-picked palette, then hues spread by the golden angle (never the same twice).
const PALETTE = ["#1f4e9c", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22"];
const colourOf = (i) => (i < PALETTE.length ? PALETTE[i]
  : "hsl(" + Math.round((i * 137.508) % 360) + ", 70%, " + (i % 2 ? 35 : 50) + "%)");

// Round steps for the time axis (seconds), the first giving at most 7 ticks.
const TIME_STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

function timeTicks(t0, t1) {
  const span = t1 - t0;
  const step = TIME_STEPS.find((s) => span / s <= 7) || Math.ceil(span / 7 / 86400) * 86400;
  const offset = new Date(t0 * 1000).getTimezoneOffset() * 60; // ticks on round local times
  const ticks = [];
  for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) ticks.push(t);
  const pad = (n) => String(n).padStart(2, "0");
  const label = (t) => {
    const d = new Date(t * 1000);
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    return span > 86400 ? (d.getMonth() + 1) + "/" + d.getDate() + (step < 86400 ? " " + hm : "") : hm;
  };
  return ticks.map((t) => [t, label(t)]);
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderChart(points, money) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 900, H = 260, L = 64, R = 16, T = 12, B = 32;
  if (!points.length) return;
  let t0 = points[0].t, t1 = points[points.length - 1].t;
  if (t1 - t0 < 60) t0 = t1 - 60; // a chart of one moment still has a minute of axis
  let top = Math.max(...points.map((p) => p.total_usd), 0.0001);
  if (money.max_total_usd !== null) top = Math.max(top, money.max_total_usd);
  const x = (t) => L + ((W - L - R) * (t - t0)) / (t1 - t0);
  const y = (v) => H - B - ((H - T - B) * v) / top;
  // axes: money on the left (0, half, top), time below with round ticks
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa3ad", class: "axis" }));
  svg.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#9aa3ad", class: "axis" }));
  for (const v of [0, top / 2, top]) {
    svg.append(svgEl("text", { x: L - 6, y: y(v) + 4, "font-size": 11, "text-anchor": "end", class: "tick y-tick" },
      usd(v)));
  }
  for (const [t, text] of timeTicks(t0, t1)) {
    svg.append(svgEl("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4, stroke: "#9aa3ad" }));
    svg.append(svgEl("text", { x: x(t), y: H - B + 16, "font-size": 11, "text-anchor": "middle",
      class: "tick x-tick", "data-t": t }, text));
  }
  const series = [["total", (p) => p.total_usd]];
  const names = new Set();
  for (const p of points) for (const k of Object.keys(p.by_server)) names.add("server " + k);
  for (const p of points) for (const k of Object.keys(p.by_experiment)) names.add("experiment " + k);
  for (const name of names) {
    const [kind, key] = [name.split(" ")[0], name.slice(name.indexOf(" ") + 1)];
    series.push([name, (p) => (kind === "server" ? p.by_server : p.by_experiment)[key] || 0]);
  }
  const legend = [], lines = [];
  series.forEach(([name, get], i) => {
    const colour = colourOf(i);
    lines.push(svgEl("polyline", { fill: "none", stroke: colour, "stroke-width": i === 0 ? 2.5 : 1.5,
      points: points.map((p) => x(p.t).toFixed(1) + "," + y(get(p)).toFixed(1)).join(" "), "data-series": name }));
    legend.push(el("span", { class: "legend-entry", "data-series": name },
      el("span", { class: "swatch", style: "background:" + colour }), name));
  });
  svg.append(...lines.reverse()); // the total last: on top of a series that equals it
  for (const p of points) {
    svg.append(svgEl("circle", { cx: x(p.t).toFixed(1), cy: y(p.total_usd).toFixed(1), r: 2.5, fill: colourOf(0),
      class: "point" }));
  }
  if (money.max_total_usd !== null) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(money.max_total_usd), y2: y(money.max_total_usd),
      stroke: "#8a1414", "stroke-dasharray": "4 4", "data-series": "max_total_usd" }));
    legend.push(el("span", { class: "legend-entry", "data-series": "max_total_usd" },
      el("span", { class: "swatch limit" }), "budget"));
  }
  replace("legend", ...legend);
}

function renderWarnings(warnings) {
  document.getElementById("warnings-section").hidden = !warnings.length;
  replace("warnings", ...warnings.map((w) => el("li", {}, w.text)));
}

function render(doc) {
  if (doc.loading) return;
  lastDoc = doc;
  replace("project", doc.project || "");
  document.title = "tether " + (doc.project || "dashboard");
  replace("updated", "updated " + new Date(doc.time * 1000).toLocaleTimeString() +
    (doc.poll_s ? " · runs every " + duration(doc.poll_s) : "") + (doc.error ? " — " + doc.error : ""));
  renderWarnings(doc.warnings || []);
  renderManaged(doc.managed || []);
  renderRuns(doc.runs || []);
  renderServers(doc.servers || [], doc.hosts || []);
  renderGpus(doc.gpus || {});
  renderMoney(doc.money);
  renderChart(doc.chart || [], doc.money);
  document.body.setAttribute("data-version", String(doc.time));
}

let lastDoc = null;

async function showLog(runId) {
  const response = await fetch(q("/api/log?run=" + encodeURIComponent(runId)));
  openLog = { run: runId, text: await response.text() };
  if (lastDoc) renderRuns(lastDoc.runs || []);
}

async function refresh() {
  const response = await fetch(q("/api/snapshot"));
  if (response.ok) render(await response.json());
}

refresh();
const events = new EventSource(q("/api/events"));
events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
events.onerror = () => setTimeout(refresh, 2000);
