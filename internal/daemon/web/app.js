// moecapd's page: jobs, running cells (phase, bench progress, ETA), GPU lanes, failures,
// the queue and finished cells, kept live by /v1/events. Every value is set as text or as
// an attribute through the DOM (never parsed as HTML); every URL part is encoded.
"use strict";

const MAX_ROWS = 200; // rows a table shows; the rest are counted
const FINAL_WITH_REPORT = { ok: 1, failed: 1, infeasible: 1, skipped: 1, interrupted: 1 };
const FAILED = { failed: 1, infeasible: 1 };

let jobs = [], cells = [], pool = [], slots = 0, executor = "local";
const byKey = new Map(); // job/cell -> cell

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function td(x, cls) {
  const t = document.createElement("td");
  if (x instanceof Node) t.appendChild(x); else if (x !== undefined && x !== null) t.textContent = String(x);
  if (cls) t.className = cls;
  return t;
}
function row(tbody, cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof HTMLTableCellElement ? c : td(c));
  for (const k in attrs || {}) tr.setAttribute(k, attrs[k]);
  tbody.appendChild(tr);
  return tr;
}
function badge(state) { return el("span", state, "badge " + state); }
function link(text, href) { const a = el("a", text); a.href = href; return a; }
function fmtTime(s) { return s ? new Date(s).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }) : ""; }
function dur(sec) {
  if (sec === null || sec === undefined || !isFinite(sec)) return "";
  if (sec < 1) return "<1 s";
  const s = Math.round(sec);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function since(t) { return (Date.now() - Date.parse(t)) / 1000; }
function more(tbody, n, cols) {
  if (n <= 0) return;
  const t = td("… and " + n + " more", "more");
  t.colSpan = cols;
  row(tbody, [t]);
}
function show(id, on) { document.getElementById(id).style.display = on ? "" : "none"; }
function reportURL(c) { return "cells/" + encodeURIComponent(c.id) + "/report/"; }
function logURL(c, f) { return "v1/cells/" + encodeURIComponent(c.id) + "/log?file=" + f; }

// eta says how long a running cell has left: the bench's own estimate from its measured
// rate while it runs, else the plan's estimate less the time spent (marked "plan").
function eta(c) {
  const p = c.progress;
  if (c.phase === "bench" && p && p.eta_s !== undefined) return { text: dur(p.eta_s), src: "measured rate" };
  if (c.estimate_s !== undefined && c.started) {
    const left = c.estimate_s - since(c.started);
    if (left < 0) return { text: "past plan (" + dur(c.estimate_s) + ")", src: "the plan estimated " + dur(c.estimate_s) + " for the whole cell" };
    return { text: "~" + dur(left), src: "plan estimate" };
  }
  return { text: "", src: "" };
}

function progressCell(c) {
  const p = c.progress;
  if (!p || !p.total) return td(c.phase === "bench" ? "starting…" : "", "muted");
  const wrap = el("div", null, "prog");
  const bar = el("div", null, "fill" + (p.failed >= p.done && p.done > 0 ? " all-failed" : ""));
  bar.style.width = Math.min(100, 100 * p.done / p.total) + "%";
  wrap.appendChild(bar);
  const label = el("span", p.done + " / " + p.total, "label");
  if (p.failed) label.appendChild(el("span", " (" + p.failed + " failed)", "failed-count"));
  wrap.appendChild(label);
  wrap.title = p.in_flight + " in flight, " + Math.round(p.tokens_per_s) + " tok/s";
  const t = td(wrap);
  t.dataset.done = p.done;
  t.dataset.total = p.total;
  return t;
}

function renderJobs() {
  const tb = document.querySelector("#jobs tbody");
  tb.replaceChildren();
  for (const j of jobs) {
    const n = j.counts || {};
    const other = (n.skipped || 0) + (n.interrupted || 0) + (n.cancelled || 0);
    const m = j.spec.cell ? "(one cell)" : j.spec.matrix.split("/").pop();
    const mt = td(m);
    mt.title = j.spec.matrix + (j.spec.only ? "  --only " + j.spec.only : "");
    row(tb, [j.id, j.owner, j.priority, td(badge(j.state)), n.ok || 0, (n.failed || 0) + (n.infeasible || 0),
      n.running || 0, n.queued || 0, other, fmtTime(j.created), mt], { "data-job": j.id, "data-state": j.state });
  }
  show("jobs-empty", !jobs.length);
}

function renderRunning() {
  const tb = document.querySelector("#running tbody");
  tb.replaceChildren();
  let n = 0;
  for (const c of cells) {
    if (c.state !== "running") continue;
    const e = eta(c);
    const et = td(e.text);
    et.title = e.src;
    row(tb, [td(c.id, "id"), c.job, td(badge(c.phase || "starting"), "phase"), progressCell(c), et,
      (c.gpus || []).join(",") || "—", fmtTime(c.started), dur(since(c.started))],
      { "data-cell": c.id, "data-job": c.job, "data-state": c.state, "data-phase": c.phase || "" });
    n++;
  }
  show("running-empty", !n);
}

function renderQueue() {
  const tb = document.querySelector("#queue tbody");
  tb.replaceChildren();
  const prio = {};
  for (const j of jobs) prio[j.id] = j.priority;
  const q = cells.filter(c => c.state === "queued");
  // The daemon's order: higher priority first, then the job submitted first, then the matrix's order.
  q.sort((a, b) => (prio[b.job] || 0) - (prio[a.job] || 0) || seqOf(a.job) - seqOf(b.job) || a.index - b.index);
  q.slice(0, MAX_ROWS).forEach((c, i) => row(tb, [i + 1, td(c.id, "id"), c.job, prio[c.job] || 0,
    c.estimate_s !== undefined ? dur(c.estimate_s) : "", c.reruns || 0], { "data-cell": c.id, "data-job": c.job, "data-state": c.state }));
  more(tb, q.length - MAX_ROWS, 6);
  show("queue-empty", !q.length);
}
function seqOf(job) { return parseInt(job.replace(/^j/, ""), 10) || 0; }

function finishedCells() {
  const f = cells.filter(c => c.state !== "queued" && c.state !== "running");
  f.sort((a, b) => Date.parse(b.finished || 0) - Date.parse(a.finished || 0));
  return f;
}

function reportLinks(c) {
  const t = document.createElement("td");
  t.className = "links";
  if (FINAL_WITH_REPORT[c.state]) { const a = link("report", reportURL(c)); a.className = "report"; t.appendChild(a); t.appendChild(document.createTextNode(" · ")); }
  t.appendChild(link("server.log", logURL(c, "server")));
  t.appendChild(document.createTextNode(" · "));
  t.appendChild(link("client.log", logURL(c, "client")));
  return t;
}

function renderFinished() {
  const fin = finishedCells();
  const tb = document.querySelector("#finished tbody");
  tb.replaceChildren();
  for (const c of fin.slice(0, MAX_ROWS)) {
    const took = c.started && c.finished ? dur((Date.parse(c.finished) - Date.parse(c.started)) / 1000) : "";
    row(tb, [td(c.id, "id"), c.job, td(badge(c.state)), fmtTime(c.finished), took, td(c.reason || "", "reason"), reportLinks(c)],
      { "data-cell": c.id, "data-job": c.job, "data-state": c.state });
  }
  more(tb, fin.length - MAX_ROWS, 7);
  show("finished-empty", !fin.length);
  const fb = document.querySelector("#failures tbody");
  fb.replaceChildren();
  const bad = fin.filter(c => FAILED[c.state]);
  for (const c of bad.slice(0, MAX_ROWS)) {
    row(fb, [td(c.id, "id"), c.job, td(badge(c.state)), fmtTime(c.finished), td(c.reason || "(no reason recorded)", "reason"), reportLinks(c)],
      { "data-cell": c.id, "data-job": c.job, "data-state": c.state });
  }
  more(fb, bad.length - MAX_ROWS, 6);
  show("failures-section", bad.length > 0);
}

// Lanes: each GPU's cells over time (from the cells' GPUs and start/finish times, as the
// daemon's store keeps them); cells that hold no GPU (the simulator) are packed into the
// daemon's slots by time instead.
function renderLanes() {
  const box = document.getElementById("lanes");
  box.replaceChildren();
  const now = Date.now();
  const spans = []; // {lane, c, s, e}
  const gpuLanes = new Set(pool);
  const slotLess = [];
  for (const c of cells) {
    if (!c.started || c.state === "queued") continue;
    const s = Date.parse(c.started), e = c.finished ? Date.parse(c.finished) : now;
    if (c.gpus && c.gpus.length) for (const g of c.gpus) { gpuLanes.add(g); spans.push({ lane: "GPU " + g, c, s, e }); }
    else slotLess.push({ c, s, e });
  }
  slotLess.sort((a, b) => a.s - b.s);
  const ends = [];
  for (const x of slotLess) {
    let i = ends.findIndex(t => t <= x.s);
    if (i < 0) { i = ends.length; ends.push(0); }
    ends[i] = x.e;
    x.lane = "slot " + (i + 1);
    spans.push(x);
  }
  const lanes = [...[...gpuLanes].sort((a, b) => (parseInt(a, 10) - parseInt(b, 10)) || a.localeCompare(b)).map(g => "GPU " + g)];
  for (let i = 0; i < ends.length; i++) lanes.push("slot " + (i + 1));
  const note = document.getElementById("lanes-note");
  if (!spans.length) {
    note.textContent = pool.length ? "No cell has held a GPU yet." : "No cell has run yet" + (slots ? " (no GPUs on this node: cells run in " + slots + " slots)." : ".");
    if (!pool.length) return;
  } else {
    note.textContent = (slotLess.length ? "Cells without GPUs (the simulator) are drawn in the daemon's " + slots + " slots. " : "") +
      "Hover a bar for its cell and times.";
  }
  let t0 = now;
  for (const x of spans) t0 = Math.min(t0, x.s);
  const span = Math.max(now - t0, 1000);
  const axis = el("div", null, "lane axis");
  axis.appendChild(el("span", "", "name"));
  const at = el("div", null, "track");
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", fmtTime(new Date(t0 + span * i / 4).toISOString()), "tick");
    tick.style.left = (25 * i) + "%";
    if (i === 4) tick.classList.add("last");
    at.appendChild(tick);
  }
  axis.appendChild(at);
  for (const name of lanes) {
    const lane = el("div", null, "lane");
    lane.appendChild(el("span", name, "name"));
    const track = el("div", null, "track");
    for (const x of spans) {
      if (x.lane !== name) continue;
      const bar = el("div", x.c.id, "bar " + x.c.state);
      bar.title = x.c.id + " (" + x.c.job + ", " + x.c.state + ")\n" + fmtTime(x.c.started) + " – " + (x.c.finished ? fmtTime(x.c.finished) : "now");
      bar.style.left = (100 * (x.s - t0) / span) + "%";
      bar.style.width = Math.max(0.4, 100 * (x.e - x.s) / span) + "%";
      bar.dataset.cell = x.c.id;
      track.appendChild(bar);
    }
    lane.appendChild(track);
    box.appendChild(lane);
  }
  box.appendChild(axis);
}

function render() {
  renderJobs(); renderRunning(); renderLanes(); renderQueue(); renderFinished();
  const n = cells.filter(c => c.state === "running").length, q = cells.filter(c => c.state === "queued").length;
  document.getElementById("status").textContent = jobs.length + " jobs · " + n + " running · " + q + " queued · " +
    (executor === "slurm" ? "cells run as Slurm tasks" : pool.length ? pool.length + " GPUs" : slots + " slots, no GPUs") + " · updated " + fmtTime(new Date().toISOString());
}

async function refresh() {
  const [jr, cr] = await Promise.all([fetch("v1/jobs"), fetch("v1/cells")]);
  if (!jr.ok || !cr.ok) {
    setConn("API error " + jr.status + "/" + cr.status, "bad");
    return;
  }
  jobs = (await jr.json()).jobs;
  const cv = await cr.json();
  cells = cv.cells; pool = cv.gpus || []; slots = cv.slots || 0; executor = cv.executor || "local";
  byKey.clear();
  for (const c of cells) byKey.set(c.job + "/" + c.id, c);
  render();
}

function setConn(text, cls) { const c = document.getElementById("conn"); c.textContent = text; c.className = "conn " + (cls || ""); }

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; refresh().catch(e => setConn(String(e), "bad")); }, 150);
}

// A bench progress event updates its cell in place; any other change re-reads the state.
function onCell(ev) {
  let e;
  try { e = JSON.parse(ev.data); } catch (_) { schedule(); return; }
  const c = byKey.get(e.job + "/" + e.cell);
  if (c && e.progress && c.state === e.state && c.phase === e.phase) {
    c.progress = e.progress;
    renderRunning();
    return;
  }
  schedule();
}

const es = new EventSource("v1/events");
es.onopen = () => { setConn("live", "ok"); schedule(); };
es.addEventListener("job", schedule);
es.addEventListener("cell", onCell);
es.onerror = () => setConn("events stream lost; reconnecting…", "bad");
schedule();
setInterval(() => { if (cells.some(c => c.state === "running")) { renderRunning(); renderLanes(); } }, 1000);
setInterval(schedule, 15000);
