// The Detour dashboard: reads /api/ every two seconds and draws the view the URL names.
//   /              the service graph and every service, deployment and pod
//   /svc/NAME      one service: live charts and how its traffic is split over its replicas
//   /deploy/NAME   one deployment (as it serves), /pod/NAME one pod
"use strict";

const REFRESH_MS = 2000;
const view = document.getElementById("view");
const windowSelect = document.getElementById("window");
windowSelect.value = new URLSearchParams(location.search).get("window") || "1m";
windowSelect.addEventListener("change", () => {
  const u = new URL(location.href);
  u.searchParams.set("window", windowSelect.value);
  history.replaceState(null, "", u);
  refresh();
});

// el makes an HTML element, sv an SVG one (an SVG <a> is not an HTML <a>).
function make(e, attrs, children) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
const el = (tag, attrs = {}, ...children) => make(document.createElement(tag), attrs, children);
const sv = (tag, attrs = {}, ...children) => make(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);

async function api(path, params = {}) {
  const q = new URLSearchParams(params);
  const resp = await fetch(`/api/${path}?${q}`);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

const pct = v => v === null || v === undefined ? "-" : (v * 100).toFixed(2) + "%";
const ms = v => v === null || v === undefined ? "-" : v.toFixed(1) + " ms";
const rps = v => v.toFixed(2);

function figureCells(f) {
  const cls = f.success_rate === null ? "muted" : f.success_rate < 0.99 ? "bad" : "ok";
  return [el("td", { class: cls, "data-field": "success" }, pct(f.success_rate)),
    el("td", { "data-field": "rps" }, rps(f.rps)),
    el("td", { "data-field": "requests" }, f.requests),
    el("td", {}, ms(f.p50_ms)), el("td", {}, ms(f.p95_ms)), el("td", {}, ms(f.p99_ms)),
    el("td", {}, pct(f.mtls_share))];
}

function statTable(kind, rows) {
  const head = el("tr", {}, ...["NAME", "SUCCESS", "RPS", "REQUESTS", "P50", "P95", "P99", "MTLS"].map(h => el("th", {}, h)));
  const body = rows.map(r => {
    const label = r.namespace ? `${r.namespace}/${r.name}` : r.name;
    return el("tr", { "data-kind": kind, "data-name": r.name },
      el("td", {}, el("a", { href: `/${kind}/${encodeURIComponent(r.name)}${location.search}` }, label)), ...figureCells(r));
  });
  if (body.length === 0) body.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no traffic reported in this window")));
  return el("table", { class: "stat", "data-kind": kind }, el("thead", {}, head), el("tbody", {}, ...body));
}

// graph draws callers, services and servers in three columns, arrows labelled with the rate.
function graph(g) {
  const col = n => n.startsWith("svc/") ? 1 : g.edges.some(e => e.to === n) ? 2 : 0;
  const cols = [[], [], []];
  for (const n of g.nodes) cols[col(n)].push(n);
  const W = 1000, rowH = 46, H = Math.max(1, ...cols.map(c => c.length)) * rowH + 20, boxW = 200;
  const pos = {};
  cols.forEach((c, i) => c.forEach((n, j) => { pos[n] = { x: 20 + i * ((W - boxW - 40) / 2), y: 10 + j * rowH }; }));
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", height: H, id: "graph" });
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + boxW, y1 = a.y + 16, x2 = b.x, y2 = b.y + 16, mx = (x1 + x2) / 2;
    svg.append(sv("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "stroke-width": Math.min(6, 1 + Math.log10(1 + e.rps)) }));
    svg.append(sv("text", { x: mx, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, `${rps(e.rps)} rps · ${pct(e.success_rate)}`));
  }
  for (const n of g.nodes) {
    const p = pos[n];
    const [kind, ...rest] = n.split("/");
    const label = rest.join("/");
    const name = rest[rest.length - 1];
    const link = sv("a", { href: `/${kind}/${encodeURIComponent(name)}${location.search}` },
      sv("g", { class: `node ${kind}`, transform: `translate(${p.x},${p.y})` },
        sv("rect", { width: boxW, height: 32, rx: 5 }), sv("text", { x: 10, y: 20 }, `${kind} ${label}`)));
    svg.append(link);
  }
  return svg;
}

// chart draws one figure of a timeline as a line over the window.
function chart(title, points, value, fmt) {
  const W = 600, H = 140, pad = 30;
  const vals = points.map(value);
  const max = Math.max(1e-9, ...vals.filter(v => v !== null));
  const x = i => pad + (W - pad - 8) * i / Math.max(1, points.length - 1);
  const y = v => H - 18 - (H - 30) * v / max;
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  svg.append(sv("line", { x1: pad, y1: H - 18, x2: W - 8, y2: H - 18, stroke: "#cbd5e1" }));
  svg.append(sv("text", { x: 2, y: 14 }, fmt(max)));
  svg.append(sv("text", { x: 2, y: H - 4 }, "-10 min"));
  svg.append(sv("text", { x: W - 40, y: H - 4 }, "now"));
  let seg = [];
  const flush = () => { if (seg.length) svg.append(sv("polyline", { points: seg.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 2 })); seg = []; };
  vals.forEach((v, i) => { if (v === null) flush(); else seg.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
  flush();
  // The latest value as a dot, so a series of one slot shows too.
  const last = vals.map((v, i) => [v, i]).filter(([v]) => v !== null).pop();
  if (last) svg.append(sv("circle", { cx: x(last[1]), cy: y(last[0]), r: 3, fill: "#2563eb" }));
  return el("div", { class: "chart" }, el("h3", {}, title), svg);
}

function charts(points) {
  return el("div", { class: "charts" },
    chart("requests per second", points, p => p.rps, v => v.toFixed(1)),
    chart("success rate", points, p => p.success_rate, v => (v * 100).toFixed(0) + "%"),
    chart("p99 latency", points, p => p.p99_ms, v => v.toFixed(1) + " ms"));
}

// replicas draws one bar per replica with its share of the service's requests in the window.
function replicas(row) {
  const total = row.replicas.reduce((s, r) => s + r.requests, 0);
  const bars = row.replicas.map(r => {
    const share = total ? r.requests / total : 0;
    return el("div", { class: "replica", "data-name": r.name, "data-requests": r.requests, "data-share": share.toFixed(4) },
      el("div", {}, el("a", { href: `/pod/${encodeURIComponent(r.name)}${location.search}` }, r.name)),
      el("div", { class: "bar" }, el("div", { style: `width:${(share * 100).toFixed(1)}%` })),
      el("div", { class: "figs" }, `${(share * 100).toFixed(1)}% · ${r.requests} req · ${pct(r.success_rate)}`));
  });
  if (bars.length === 0) bars.push(el("p", { class: "muted" }, "no requests in this window"));
  return el("section", { id: "replicas" }, el("h2", {}, "Traffic split over replicas"), ...bars);
}

function crumbs(parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.flatMap((p, i) => i ? [" / ", p] : [p]));
}

async function overview(win) {
  const [g, svc, deploy, pod] = await Promise.all([api("graph", { window: win }),
    api("stat", { resource: "svc", window: win }), api("stat", { resource: "deploy", window: win }), api("stat", { resource: "pod", window: win })]);
  crumbs([el("a", { href: "/" + location.search }, "mesh")]);
  return [
    el("section", {}, el("h2", {}, "Service graph"), graph(g)),
    el("section", { id: "services" }, el("h2", {}, "Services (as their callers see them)"), statTable("svc", svc.rows)),
    el("section", { id: "deployments" }, el("h2", {}, "Deployments (as they serve)"), statTable("deploy", deploy.rows)),
    el("section", { id: "pods" }, el("h2", {}, "Pods (as they serve)"), statTable("pod", pod.rows)),
  ];
}

async function detail(kind, name, win) {
  const [st, tl] = await Promise.all([api("stat", { resource: `${kind}/${name}`, window: win }), api("timeline", { resource: `${kind}/${name}` })]);
  crumbs([el("a", { href: "/" + location.search }, "mesh"), `${kind} ${name}`]);
  const row = st.rows.find(r => r.name === name) || st.rows[0];
  const out = [el("section", { id: "figures" }, el("h2", {}, `${kind} ${name}`), statTable(kind, st.rows)),
    el("section", {}, el("h2", {}, "Last 10 minutes"), charts(tl.points))];
  if (kind === "svc") out.push(replicas(row || { replicas: [] }));
  if (kind !== "svc") {
    const callers = await api("stat", { resource: "deploy", to: `${kind}/${name}`, window: win });
    out.push(el("section", { id: "callers" }, el("h2", {}, "Callers"), statTable("deploy", callers.rows)));
  }
  return out;
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const win = windowSelect.value;
  const [, kind, name] = location.pathname.split("/").map(decodeURIComponent);
  try {
    const parts = kind ? await detail(kind, name, win) : await overview(win);
    view.replaceChildren(...parts);
    const u = document.getElementById("updated");
    u.textContent = "updated " + new Date().toLocaleTimeString();
    u.dataset.updated = Date.now();
  } catch (err) {
    document.getElementById("updated").textContent = "error: " + err.message;
  } finally {
    busy = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
