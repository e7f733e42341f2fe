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

function renderRuns(groups) {
  const blocks = [];
  for (const group of groups) {
    const rows = group.runs.map((r) => {
      const failed = r.failed_by && Object.keys(r.failed_by).length
        ? r.failed + " (" + Object.entries(r.failed_by).map(([k, n]) => n + " x " + k).join(", ") + ")"
        : String(r.failed);
      const link = el("a", { class: "log", "data-run": r.id }, "log");
      link.addEventListener("click", () => showLog(r.id));
      return el("tr", { "data-run": r.id },
        el("td", {}, r.host), el("td", {}, r.id), el("td", {}, state(r.status)),
        el("td", {}, bar(r.completed, r.total)),
        el("td", {}, r.completed + "/" + (r.total === null ? "?" : r.total)), el("td", {}, failed),
        el("td", {}, r.rate_per_s ? r.rate_per_s.toFixed(2) + "/s" : "-"),
        el("td", {}, r.status === "running" ? duration(r.eta_s) : "-"), el("td", {}, duration(r.age_s)),
        el("td", {}, link));
    });
    const head = el("tr", {}, ...["host", "run", "state", "progress", "done", "failed", "rate", "ETA", "age", ""]
      .map((h) => el("th", {}, h)));
    blocks.push(el("h3", {}, group.experiment), el("table", { class: "runs" }, el("thead", {}, head),
      el("tbody", {}, ...rows)));
  }
  replace("runs", ...(blocks.length ? blocks : [el("p", {}, "No runs yet.")]));
}

// A managed run is one row (its summary) that opens into a row per shard: its server, state and progress.
function renderManaged(runs) {
  document.getElementById("managed-section").hidden = !runs.length;
  const blocks = runs.map((m) => {
    const head = el("tr", {}, ...["shard", "server", "state", "progress", "done", "synced", "recoveries", "why"]
      .map((h) => el("th", {}, h)));
    const rows = (m.shards || []).map((s) => el("tr", { "data-shard": String(s.shard) },
      el("td", {}, String(s.shard)), el("td", {}, s.server || "-"), el("td", {}, state(s.status)),
      el("td", {}, bar(s.completed, s.total)),
      el("td", {}, s.completed + "/" + (s.total === null || s.total === undefined ? "?" : s.total)),
      el("td", {}, String(s.synced === null || s.synced === undefined ? "-" : s.synced)),
      el("td", {}, String(s.recoveries || 0)), el("td", {}, s.reason || "")));
    const total = m.total === null || m.total === undefined ? "?" : m.total;
    const summary = el("summary", { "data-managed": m.id },
      el("b", {}, m.experiment), " ", m.id, " ", state(m.status), " ", bar(m.completed, m.total), " ",
      m.completed + "/" + total, " · " + (m.shards || []).length + " shards · " + (m.recoveries || 0) +
      " recoveries · " + usd(m.cost_usd) + (m.reason ? " · " + m.reason : ""));
    return el("details", { class: "managed" }, summary,
      el("table", { class: "runs" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  });
  replace("managed", ...blocks);
}

function renderServers(servers, hosts) {
  const rows = servers.map((s) => el("tr", { "data-server": s.name },
    el("td", {}, s.name), el("td", {}, state(s.state)), el("td", {}, usd(s.dph_now)), el("td", {}, duration(s.uptime_s)),
    el("td", {}, duration(s.idle_s)), el("td", {}, usd(s.accrued_usd)),
    el("td", { title: s.next.reason }, s.next.action + (s.next.in_s ? " in " + duration(s.next.in_s) : "")),
    el("td", {}, s.results_not_home ? el("span", { class: "badge" }, "results not home") : "")));
  document.querySelector("#servers tbody").replaceChildren(...rows);
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
  replace("gpus", ...(blocks.length ? blocks : [el("p", {}, "No GPU reported.")]));
}

function renderMoney(m) {
  replace("money",
    el("span", {}, "today " + usd(m.today_usd)), el("span", {}, "this week " + usd(m.week_usd)),
    el("span", {}, "total " + usd(m.total_usd)), el("span", {}, "burn " + usd(m.burn_dph) + "/hr"),
    el("span", {}, "next 24 h ~" + usd(m.projected_24h_usd)),
    m.max_total_usd !== null ? el("span", {}, "budget " + usd(m.max_total_usd)) : null);
}

const COLOURS = ["#2f80ed", "#eb5757", "#27ae60", "#f2994a", "#9b51e0", "#56ccf2", "#333333"];

function renderChart(points, money) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 900, H = 260, P = 36;
  if (!points.length) return;
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  let top = Math.max(...points.map((p) => p.total_usd), 0.0001);
  if (money.max_total_usd !== null) top = Math.max(top, money.max_total_usd);
  const x = (t) => P + ((W - 2 * P) * (t - t0)) / (t1 - t0);
  const y = (v) => H - P - ((H - 2 * P) * v) / top;
  const series = [["total", (p) => p.total_usd]];
  const names = new Set();
  for (const p of points) for (const k of Object.keys(p.by_server)) names.add("server " + k);
  for (const p of points) for (const k of Object.keys(p.by_experiment)) names.add("experiment " + k);
  for (const name of names) {
    const [kind, key] = [name.split(" ")[0], name.slice(name.indexOf(" ") + 1)];
    series.push([name, (p) => (kind === "server" ? p.by_server : p.by_experiment)[key] || 0]);
  }
  const legend = [];
  series.forEach(([name, get], i) => {
    const colour = COLOURS[i % COLOURS.length];
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", i === 0 ? "2.5" : "1.5");
    line.setAttribute("points", points.map((p) => x(p.t).toFixed(1) + "," + y(get(p)).toFixed(1)).join(" "));
    line.setAttribute("data-series", name);
    svg.append(line);
    if (i === 0) {
      for (const p of points) {
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", x(p.t).toFixed(1));
        dot.setAttribute("cy", y(p.total_usd).toFixed(1));
        dot.setAttribute("r", "2.5");
        dot.setAttribute("fill", colour);
        dot.setAttribute("class", "point");
        svg.append(dot);
      }
    }
    legend.push(el("span", { style: "color:" + colour + ";margin-right:1em" }, "— " + name));
  });
  if (money.max_total_usd !== null) {
    const limit = document.createElementNS(SVG, "line");
    limit.setAttribute("x1", P); limit.setAttribute("x2", W - P);
    limit.setAttribute("y1", y(money.max_total_usd)); limit.setAttribute("y2", y(money.max_total_usd));
    limit.setAttribute("stroke", "#8a1414"); limit.setAttribute("stroke-dasharray", "4 4");
    limit.setAttribute("data-series", "max_total_usd");
    svg.append(limit);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 14); label.setAttribute("font-size", "11");
  label.textContent = usd(top);
  svg.append(label);
  replace("legend", ...legend);
}

function renderWarnings(warnings) {
  document.getElementById("warnings-section").hidden = !warnings.length;
  replace("warnings", ...warnings.map((w) => el("li", {}, w.text)));
}

function render(doc) {
  if (doc.loading) return;
  replace("project", doc.project || "");
  document.title = "tether " + (doc.project || "dashboard");
  replace("updated", "updated " + new Date(doc.time * 1000).toLocaleTimeString() + (doc.error ? " — " + doc.error : ""));
  renderWarnings(doc.warnings || []);
  renderManaged(doc.managed || []);
  renderRuns(doc.runs || []);
  renderServers(doc.servers || [], doc.hosts || []);
  renderGpus(doc.gpus || {});
  renderMoney(doc.money);
  renderChart(doc.chart || [], doc.money);
  document.body.setAttribute("data-version", String(doc.time));
}

async function showLog(runId) {
  const response = await fetch(q("/api/log?run=" + encodeURIComponent(runId)));
  document.getElementById("log-section").hidden = false;
  replace("log-run", runId);
  replace("log", await response.text());
}

async function refresh() {
  const response = await fetch(q("/api/snapshot"));
  if (response.ok) render(await response.json());
}

refresh();
const events = new EventSource(q("/api/events"));
events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
events.onerror = () => setTimeout(refresh, 2000);
