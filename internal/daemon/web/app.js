// moecapd's page: the queue, running cells, GPU lanes and finished cells, refreshed on
// every event of /v1/events. Every value is set as text (never parsed as HTML).
"use strict";
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  tbody.appendChild(tr);
}
function td(node) { const t = document.createElement("td"); t.appendChild(node); return t; }
function fmtTime(s) { return s ? new Date(s).toLocaleTimeString() : ""; }
function dur(ms) { const s = Math.max(0, Math.round(ms / 1000)); return s < 120 ? s + " s" : Math.round(s / 60) + " min"; }
const history = {}; // gpu -> [{cell, start, end}]
async function refresh() {
  const [jr, cr] = await Promise.all([fetch("v1/jobs"), fetch("v1/cells")]);
  if (!jr.ok || !cr.ok) { document.getElementById("status").textContent = "API error " + jr.status + "/" + cr.status; return; }
  const jobs = (await jr.json()).jobs, cells = await cr.json();
  const jb = document.querySelector("#jobs tbody"); jb.replaceChildren();
  for (const j of jobs) {
    const n = j.counts || {};
    row(jb, [j.id, j.owner, j.priority, td(el("span", j.state, j.state)), n.ok || 0, (n.failed || 0) + (n.infeasible || 0), n.running || 0, n.queued || 0, j.spec.matrix]);
  }
  const rb = document.querySelector("#running tbody"); rb.replaceChildren();
  const qb = document.querySelector("#queue tbody"); qb.replaceChildren();
  const fb = document.querySelector("#finished tbody"); fb.replaceChildren();
  const now = Date.now();
  let qi = 0;
  const finished = [];
  for (const c of cells.cells) {
    if (c.state === "running") {
      row(rb, [c.id, c.job, td(el("span", c.phase || "", "running")), (c.gpus || []).join(",") || "(sim)", fmtTime(c.started), dur(now - Date.parse(c.started))]);
    } else if (c.state === "queued") {
      row(qb, [++qi, c.id, c.job, c.reruns || 0]);
    } else finished.push(c);
    for (const g of c.gpus || []) {
      const h = history[g] = history[g] || {};
      h[c.job + "/" + c.id + "/" + c.attempts] = { cell: c.id, start: Date.parse(c.started), end: c.finished ? Date.parse(c.finished) : null };
    }
  }
  finished.sort((a, b) => Date.parse(b.finished || 0) - Date.parse(a.finished || 0));
  for (const c of finished) {
    const logs = document.createElement("td");
    for (const f of ["server", "client"]) {
      const a = el("a", f + ".log"); a.href = "v1/cells/" + encodeURIComponent(c.id) + "/log?file=" + f; logs.appendChild(a); logs.appendChild(document.createTextNode(" "));
    }
    row(fb, [c.id, c.job, td(el("span", c.state, c.state)), fmtTime(c.finished), c.reason || "", logs]);
  }
  const lanes = document.getElementById("lanes"); lanes.replaceChildren();
  const gpus = cells.gpus.length ? cells.gpus : Object.keys(history);
  let t0 = now;
  for (const g of gpus) for (const k in history[g] || {}) t0 = Math.min(t0, history[g][k].start);
  const span = Math.max(now - t0, 1);
  for (const g of gpus) {
    const lane = el("div", null, "lane"); lane.appendChild(el("span", "GPU " + g, "name"));
    const track = el("div", null, "track");
    for (const k in history[g] || {}) {
      const s = history[g][k];
      const bar = el("div", s.cell, "bar" + (s.end ? "" : " live"));
      bar.title = s.cell;
      bar.style.left = (100 * (s.start - t0) / span) + "%";
      bar.style.width = Math.max(0.5, 100 * ((s.end || now) - s.start) / span) + "%";
      track.appendChild(bar);
    }
    lane.appendChild(track); lanes.appendChild(lane);
  }
  if (!gpus.length) lanes.textContent = "no GPUs on this node (sim cells run in " + cells.slots + " slots)";
  document.getElementById("status").textContent = "live · " + jobs.length + " jobs · updated " + new Date().toLocaleTimeString();
}
let pending = false;
function schedule() { if (pending) return; pending = true; setTimeout(() => { pending = false; refresh().catch(e => { document.getElementById("status").textContent = String(e); }); }, 150); }
const es = new EventSource("v1/events");
es.addEventListener("job", schedule);
es.addEventListener("cell", schedule);
es.onerror = () => { document.getElementById("status").textContent = "events stream lost; retrying…"; };
schedule();
setInterval(schedule, 5000);
