// The browser worklist: one WebSocket, one subscription whose view is the filters.
// Protocol: docs/protocol.md. Rows are applied by version; older deltas are dropped.

const PRIORITY_RANK = { STAT: 0, URGENT: 1, ROUTINE: 2 };
const MODALITIES = ["CT", "MR", "XR", "US", "NM", "MG"];
const PRIORITIES = ["STAT", "URGENT", "ROUTINE"];
const SUB = "wl";

const $ = (sel) => document.querySelector(sel);
const state = {
  tenants: [],
  tenant: null,
  rows: new Map(), // exam_id -> delta
  total: 0,
  ws: null,
  backoff: 500,
  hadSnapshot: false,
  epoch: null,
  offset: null,
};

// ---- URL <-> filters (deep links such as /worklist?modality=CT land on that view) ----

function readUrl() {
  const q = new URLSearchParams(location.search);
  const list = (k) => (q.get(k) || "").split(",").filter(Boolean);
  return { site: list("site"), modality: list("modality"), priority: list("priority") };
}

function writeUrl() {
  const q = new URLSearchParams();
  for (const key of ["site", "modality", "priority"]) {
    const v = checked(key);
    if (v.length) q.set(key, v.join(","));
  }
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function checked(key) {
  return [...document.querySelectorAll(`#f-${key} input:checked`)].map((i) => i.value);
}

function fillChecks(key, values, selected) {
  const box = $(`#f-${key}`);
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const v of values) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = v;
    input.name = key;
    input.checked = selected.includes(v);
    label.append(input, " ", v);
    box.append(label);
  }
}

function view() {
  return { sites: checked("site"), modalities: checked("modality"), priorities: checked("priority") };
}

// ---- connection ----------------------------------------------------------------

function setConn(s, text) {
  const el = $("#conn");
  el.dataset.state = s;
  el.textContent = text || s;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  state.ws = ws;
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type === "batch") f.frames.forEach(onFrame);
    else onFrame(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (ev.code === 4003 || ev.code === 4004) {
      sessionStorage.removeItem("session");
      location.reload();
      return;
    }
    setConn("reconnecting", `reconnecting (${ev.code})`);
    const delay = state.backoff * (0.75 + Math.random() * 0.5);
    state.backoff = Math.min(state.backoff * 2, 5000);
    setTimeout(connect, delay);
  };
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

function subscribe() {
  send({ type: "subscribe", id: SUB, view: view() });
}

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      send({ type: "auth", id: "auth", token: state.session.token });
      break;
    case "authenticated":
      subscribe();
      break;
    case "snapshot":
      state.rows = new Map(f.rows.map((r) => [r.exam_id, r]));
      state.total = f.total;
      state.epoch = f.epoch;
      state.offset = f.offset;
      state.backoff = 500;
      setConn(state.hadSnapshot ? "resynced" : "live", state.hadSnapshot ? "resynced" : "live");
      if (state.hadSnapshot) setTimeout(() => $("#conn").dataset.state === "resynced" && setConn("live"), 3000);
      state.hadSnapshot = true;
      render(new Set());
      break;
    case "delta":
      applyDelta(f);
      break;
    case "resync":
      setConn("reconnecting", "resyncing");
      break;
    case "error":
      console.warn("gateway error", f.code, f.message);
      break;
  }
}

function applyDelta(f) {
  const d = f.delta;
  const known = state.rows.get(d.exam_id);
  state.offset = f.offset;
  if (known && known.version >= d.version) return; // already seen: nothing applied twice
  if (f.leave || d.op === "remove") {
    if (known) {
      state.rows.delete(d.exam_id);
      state.total = Math.max(0, state.total - 1);
    }
  } else {
    if (!known) state.total += 1;
    state.rows.set(d.exam_id, d);
  }
  scheduleRender(d.exam_id, !known);
}

// ---- rendering -----------------------------------------------------------------

let pending = null;
function scheduleRender(examId, isNew) {
  if (!pending) {
    pending = { changed: new Set(), added: new Set() };
    requestAnimationFrame(() => {
      const p = pending;
      pending = null;
      render(p.changed, p.added);
    });
  }
  pending.changed.add(examId);
  if (isNew) pending.added.add(examId);
}

function urgency(a, b) {
  return (
    (PRIORITY_RANK[a.priority] ?? 9) - (PRIORITY_RANK[b.priority] ?? 9) ||
    a.tat_due_at - b.tat_due_at ||
    (a.exam_id < b.exam_id ? -1 : 1)
  );
}

function clock(ms) {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  const text = h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return neg ? `-${text}` : text;
}

function patientName(hl7) {
  const [family, given] = hl7.split("^");
  return given ? `${family}, ${given}` : family;
}

const tbody = () => $("#worklist tbody");
const rowEls = new Map(); // exam_id -> <tr>

function cell(tr, i, text, cls) {
  const td = tr.children[i];
  if (td.textContent !== text) td.textContent = text;
  if (cls !== undefined && td.className !== cls) td.className = cls;
}

function buildRow(r) {
  const tr = document.createElement("tr");
  for (let i = 0; i < 9; i++) tr.append(document.createElement("td"));
  tr.dataset.examId = r.exam_id;
  return tr;
}

function fillRow(tr, r) {
  tr.dataset.version = r.version;
  tr.dataset.status = r.status;
  const prio = document.createElement("span");
  prio.className = `prio prio-${r.priority}`;
  prio.textContent = r.priority;
  tr.children[0].replaceChildren(prio);
  cell(tr, 1, r.modality);
  cell(tr, 2, r.procedure);
  cell(tr, 3, r.site);
  const who = document.createElement("span");
  who.className = "masked";
  who.textContent = `${patientName(r.patient_name)} · ${r.mrn}`;
  tr.children[4].className = "patient";
  tr.children[4].replaceChildren(who);
  cell(tr, 5, r.status.replace("_", " "), "status");
  cell(tr, 8, r.claimed_by_name || "");
  tick(tr, r, Date.now());
}

function tick(tr, r, now) {
  const since = r.completed_at || r.scheduled_at;
  cell(tr, 6, since <= now ? clock(now - since) : "", "num");
  const left = r.tat_due_at - now;
  const span = Math.max(1, r.tat_due_at - r.scheduled_at);
  const level = left < 0 ? " red" : left < span * 0.25 ? " amber" : "";
  cell(tr, 7, clock(left), `num due${level}`);
}

function render(changed, added = new Set()) {
  const rows = [...state.rows.values()].sort(urgency);
  const body = tbody();
  const keep = new Set(rows.map((r) => r.exam_id));
  for (const [id, tr] of rowEls) {
    if (!keep.has(id)) {
      tr.remove();
      rowEls.delete(id);
    }
  }
  let prev = null;
  for (const r of rows) {
    let tr = rowEls.get(r.exam_id);
    const fresh = !tr;
    if (fresh) {
      tr = buildRow(r);
      rowEls.set(r.exam_id, tr);
    }
    if (fresh || changed.has(r.exam_id)) fillRow(tr, r);
    const want = prev ? prev.nextSibling : body.firstChild;
    if (want !== tr) body.insertBefore(tr, want);
    if (changed.has(r.exam_id)) {
      tr.classList.remove("flash", "new");
      void tr.offsetWidth; // restart the animation
      tr.classList.add(added.has(r.exam_id) ? "new" : "flash");
      setTimeout(() => tr.classList.remove("flash"), 50);
    }
    prev = tr;
  }
  $("#empty").hidden = rows.length > 0;
  $("#count").textContent = `${rows.length} shown · ${state.total} in view`;
}

setInterval(() => {
  const now = Date.now();
  for (const [id, tr] of rowEls) {
    const r = state.rows.get(id);
    if (r) tick(tr, r, now);
  }
}, 1000);

// ---- start -----------------------------------------------------------------------

async function login() {
  const users = await (await fetch("/api/demo-users")).json();
  const list = $("#users");
  for (const u of users) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.dataset.user = u.sub;
    b.append(u.name);
    const t = document.createElement("span");
    t.className = "title";
    t.textContent = u.title;
    b.append(t);
    b.onclick = async () => {
      const resp = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user: u.sub }),
      });
      if (!resp.ok) return;
      sessionStorage.setItem("session", JSON.stringify(await resp.json()));
      location.reload();
    };
    li.append(b);
    list.append(li);
  }
  $("#login").hidden = false;
  $("main").hidden = true;
  $("#filters").hidden = true;
}

async function start() {
  const theme = localStorage.getItem("theme");
  if (theme) document.documentElement.dataset.theme = theme;
  $("#theme").onclick = () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("theme", next);
  };
  const saved = sessionStorage.getItem("session");
  if (!saved) return login();
  state.session = JSON.parse(saved);
  const user = state.session.user;
  state.tenant = user.tenant;
  $("#who").textContent = user.name;
  state.tenants = await (await fetch("/api/tenants")).json();
  const url = readUrl();
  const tenant = state.tenants.find((t) => t.code === user.tenant);
  const sites = tenant.sites.map((s) => s.code).filter((c) => !user.sites.length || user.sites.includes(c));
  fillChecks("site", sites, url.site);
  fillChecks("modality", MODALITIES, url.modality);
  fillChecks("priority", PRIORITIES, url.priority);
  $("#filters").onchange = () => {
    writeUrl();
    subscribe();
  };
  writeUrl();
  connect();
}

start();
