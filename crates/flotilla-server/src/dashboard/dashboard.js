// Flotilla's dashboard: polls /api/overview once a second and renders it. No framework and no
// build step; every value from the cluster goes into the page as text, never as markup.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // points kept for the chart (two minutes at one per second)
const STATES = ["waiting", "pending", "running", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["waiting", "pending", "running"]);

const history = []; // {t, submitted, finished} as read from the totals
let token = sessionStorage.getItem("flotilla-admin-token") || "";
let admin = false;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function age(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function setStatus(id, text, error) {
  const s = document.getElementById(id);
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

function renderReplica(o) {
  const r = o.replica;
  document.getElementById("cluster-name").textContent = r.cluster_name;
  const leader = r.leader === null ? "no leader known" : "leader " + r.leader;
  document.getElementById("replica").textContent =
    "answered by replica " + r.id + " (" + r.role + ") · term " + r.term + " · " + leader +
    " · applied " + r.applied_index + " of " + r.last_log_index +
    " · snapshot " + r.snapshot_index;
}

function renderSummary(o) {
  const t = o.totals;
  const cards = [
    ["submitted", t.submitted], ["finished", t.finished], ["held", t.held],
    ...STATES.map((s) => [s, t.by_state[s]]),
    ["workers", o.workers.length],
  ];
  document.getElementById("summary").replaceChildren(...cards.map(([name, n]) => {
    const c = el("div", null, "card");
    c.appendChild(el("b", n));
    c.appendChild(el("span", name));
    c.dataset.card = name;
    return c;
  }));
}

function renderMembers(o) {
  fill("members", o.members.map((m) => {
    const role = el("td");
    role.appendChild(el("span", m.leader ? "leader" : (m.voter ? "voter" : "learner"),
      "badge" + (m.leader ? " leader" : "")));
    const tr = row([m.id, m.addr, role, m.matched_index === null ? "–" : m.matched_index]);
    tr.dataset.member = m.id;
    return tr;
  }));
}

function renderQueues(o) {
  fill("queues", o.queues.map((q) => row([
    q.name, q.policy, ...STATES.map((s) => q.by_state[s]),
    age(q.oldest_pending_age_ms),
    q.retention_ms === null ? "default" : age(q.retention_ms),
    q.limits,
  ])));
}

function renderWorkers(o) {
  fill("workers", o.workers.map((w) => {
    const labels = Object.entries(w.labels).map(([k, v]) => k + "=" + v).join(", ");
    const lease = w.lease_age_ms === null
      ? (w.connected === null ? "(leader only)" : "not heard")
      : age(w.lease_age_ms) + " ago" + (w.connected ? "" : " (no stream)");
    return row([w.id, w.running + " / " + w.slots, w.queues.length ? w.queues.join(", ") : "all",
      labels || "–", lease, age(w.registered_age_ms) + " ago"]);
  }));
}

function when(ms) {
  return ms === null ? "–" : new Date(ms).toISOString().replace(".000Z", "Z");
}

function renderSchedules(o) {
  fill("schedules", o.schedules.map((s) => {
    const tr = row([s.name, s.cron, s.queue,
      s.paused ? "paused" : "active" + (s.overlap === "allow" ? " (overlap allowed)" : ""),
      when(s.next_tick_ms), when(s.last_tick_ms), s.last_task === null ? "–" : s.last_task,
      s.fired, s.skipped, s.missed]);
    tr.dataset.schedule = s.name;
    return tr;
  }));
}

function renderTasks(o) {
  fill("tasks", o.tasks.map((t) => {
    const action = el("td", null, "admin-only");
    if (ACTIVE.has(t.state)) {
      const b = el("button", "cancel");
      b.addEventListener("click", () => cancelTask(t.id));
      action.appendChild(b);
    }
    const progress = t.progress_permille === null ? "" : " " + (t.progress_permille / 10).toFixed(1) + "%";
    const tr = row([t.id, t.queue, el("td", t.state + progress, "state-" + t.state), t.attempts,
      t.priority, t.worker || "–", age(t.age_ms),
      el("td", t.why.length ? t.why.join(" · ") : (t.reason || ""), "reason"), action]);
    tr.dataset.taskId = t.id;
    tr.dataset.state = t.state;
    return tr;
  }));
}

// The smallest of 1, 2, 5 times a power of ten that is at least `v` (even, so half of it is
// a whole number too, for v >= 2).
function niceCeiling(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return Math.max(2, m * p);
  return 10 * p;
}

function renderChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    rates.push({
      submitted: Math.max(0, (b.submitted - a.submitted) / dt),
      finished: Math.max(0, (b.finished - a.finished) / dt),
    });
  }
  const max = niceCeiling(Math.max(1, ...rates.map((r) => Math.max(r.submitted, r.finished))));
  ctx.strokeStyle = "#dde1e8";
  ctx.fillStyle = "#677084";
  ctx.font = "11px sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = h - pad / 2 - f * (h - pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(String(f * max), 2, y + 4);
  }
  const x = (i) => pad + (i / Math.max(1, HISTORY - 2)) * (w - pad);
  for (const [key, colour] of [["submitted", "#2f6fdd"], ["finished", "#1d8a4e"]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    rates.forEach((r, i) => {
      const y = h - pad / 2 - (r[key] / max) * (h - pad);
      if (i === 0) ctx.moveTo(x(i), y); else ctx.lineTo(x(i), y);
    });
    ctx.stroke();
  }
  const last = rates[rates.length - 1];
  canvas.dataset.points = String(rates.length);
  canvas.title = last ? "submitted " + last.submitted.toFixed(0) + "/s, finished " + last.finished.toFixed(0) + "/s" : "";
}

async function poll() {
  try {
    const res = await fetch("/api/overview", { cache: "no-store" });
    if (!res.ok) throw new Error("overview: HTTP " + res.status);
    const o = await res.json();
    history.push({ t: o.replica.now_ms, submitted: o.totals.submitted, finished: o.totals.finished });
    while (history.length > HISTORY) history.shift();
    renderReplica(o);
    renderSummary(o);
    renderMembers(o);
    renderQueues(o);
    renderSchedules(o);
    renderWorkers(o);
    renderTasks(o);
    renderChart();
    if (!o.actions && !admin) {
      document.getElementById("admin-help").textContent =
        "Read-only: this replica has no tokens file, so no action can be authorised here.";
    }
    setStatus("status", "updated " + new Date(o.replica.now_ms).toLocaleTimeString());
    document.body.dataset.loaded = "true";
  } catch (e) {
    setStatus("status", "cannot reach the replica: " + e.message, true);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function authHeaders() {
  return { Authorization: "Bearer " + token };
}

async function checkToken() {
  admin = false;
  if (token) {
    const res = await fetch("/api/session", { headers: authHeaders(), cache: "no-store" });
    const body = await res.json();
    if (res.ok && body.admin) {
      admin = true;
      document.getElementById("admin-help").textContent = "Actions enabled: each active task has a cancel button.";
      setStatus("admin-status", "admin token of " + body.name + ": actions enabled");
    } else {
      setStatus("admin-status", body.error || ("token " + body.name + " is not an admin token"), true);
    }
  } else {
    setStatus("admin-status", "");
  }
  document.body.classList.toggle("admin", admin);
}

async function cancelTask(id) {
  const res = await fetch("/api/tasks/" + id + "/cancel", { method: "POST", headers: authHeaders() });
  const body = await res.json();
  if (res.ok) setStatus("admin-status", "task " + id + " cancelled (was " + body.previous + ")");
  else setStatus("admin-status", "cancel " + id + ": " + body.error, true);
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("flotilla-admin-token", token);
  checkToken().catch((e) => setStatus("admin-status", e.message, true));
});
document.getElementById("forget").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem("flotilla-admin-token");
  document.getElementById("token").value = "";
  checkToken().catch((e) => setStatus("admin-status", e.message, true));
});

if (token) checkToken().catch((e) => setStatus("admin-status", e.message, true));
poll();
