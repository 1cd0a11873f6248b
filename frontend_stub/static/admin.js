// The group's admin page (GET/PATCH /api/admin/people, POST .../deactivate and
// .../reactivate, GET /api/admin/online), for admins: the session is the worklist page's
// (sessionStorage, this tab), sent as a bearer token; the server scopes everything to
// the token's tenant. The table refreshes every few seconds; a row being edited is kept.

const $ = (sel) => document.querySelector(sel);
const REFRESH_MS = 3000;

const state = { sites: [], modalities: [], people: [], online: new Map(), dirty: new Set() };

function session() {
  try {
    return JSON.parse(sessionStorage.getItem("session") || "null");
  } catch {
    return null;
  }
}

function say(text) {
  $("#admin-message").textContent = text;
}

async function api(path, options = {}) {
  const s = session();
  if (!s) {
    say("Log in on the worklist first.");
    return null;
  }
  const resp = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${s.token}`, "Content-Type": "application/json" },
  });
  if (!resp.ok) {
    let message = `The request failed (${resp.status}).`;
    try {
      const error = (await resp.json()).error;
      message = error.reason || message;
    } catch {
      // not JSON: keep the status
    }
    say(message);
    return null;
  }
  return resp.json();
}

function cell(content) {
  const td = document.createElement("td");
  if (typeof content === "string") td.textContent = content;
  else if (content) td.append(content);
  return td;
}

function rowOf(p) {
  const tr = document.createElement("tr");
  tr.dataset.sub = p.sub;
  tr.dataset.version = String(p.version);
  tr.dataset.active = String(p.active);
  const conns = state.online.get(p.sub) || 0;
  const dot = document.createElement("span");
  dot.className = "online-dot";
  dot.dataset.online = String(conns > 0);
  dot.textContent = conns > 0 ? `\u25cf ${conns}` : "\u25cb";
  dot.title = conns > 0 ? `online (${conns} connection${conns === 1 ? "" : "s"})` : "offline";
  const checkboxes = (kind, codes, held) => {
    const boxes = document.createElement("span");
    for (const code of codes) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = `${kind}-box`;
      box.value = code;
      box.checked = held.includes(code);
      box.disabled = !p.active;
      box.addEventListener("change", () => state.dirty.add(p.sub));
      label.append(box, ` ${code} `);
      boxes.append(label);
    }
    return boxes;
  };
  const subspecialties = document.createElement("input");
  subspecialties.type = "text";
  subspecialties.className = "subspecialties";
  subspecialties.value = p.subspecialties.join(", ");
  subspecialties.placeholder = "every subspecialty";
  subspecialties.setAttribute("aria-label", `Subspecialties of ${p.name}`);
  subspecialties.disabled = !p.active;
  subspecialties.addEventListener("input", () => state.dirty.add(p.sub));
  const actions = document.createElement("span");
  const button = (text, enabled, onClick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.disabled = !enabled;
    b.addEventListener("click", onClick);
    return b;
  };
  actions.append(button("Save", p.active, () => saveRow(tr, p)), " ");
  actions.append(
    p.active
      ? button("Deactivate", true, () => deactivate(p))
      : button("Reactivate", true, () => reactivate(p)),
  );
  tr.append(
    cell(dot),
    cell(p.name),
    cell(p.sub),
    cell(p.roles.join(", ")),
    cell(checkboxes("site", state.sites.map((s) => s.code), p.sites)),
    cell(subspecialties),
    cell(checkboxes("modality", state.modalities, p.modalities || [])),
    cell(p.active ? "yes" : "no"),
    cell(actions),
  );
  return tr;
}

function render() {
  const body = $("#people-table tbody");
  const kept = new Map([...body.querySelectorAll("tr")].map((tr) => [tr.dataset.sub, tr]));
  const rows = state.people.map((p) =>
    state.dirty.has(p.sub) && kept.has(p.sub) ? kept.get(p.sub) : rowOf(p),
  );
  body.replaceChildren(...rows);
  const online = [...state.online.values()].filter((n) => n > 0).length;
  $("#admin-caption").textContent = `${state.people.length} people \u00b7 ${online} online`;
}

async function refresh() {
  const [people, online] = await Promise.all([api("/api/admin/people"), api("/api/admin/online")]);
  if (!people) return;
  state.sites = people.sites.filter((s) => s.active);
  state.modalities = people.modalities || [];
  state.people = people.people;
  state.online = new Map((online?.online || []).map((u) => [u.sub, u.connections]));
  $("#tenant").textContent = people.tenant;
  render();
}

async function saveRow(tr, p) {
  const checked = (kind) => [...tr.querySelectorAll(`input.${kind}-box:checked`)].map((b) => b.value);
  const subspecialties = tr
    .querySelector("input.subspecialties")
    .value.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const saved = await api(`/api/admin/people/${encodeURIComponent(p.sub)}`, {
    method: "PATCH",
    body: JSON.stringify({
      version: p.version,
      sites: checked("site"),
      subspecialties,
      modalities: checked("modality"),
    }),
  });
  state.dirty.delete(p.sub);
  if (saved) say(`Saved ${saved.name}'s privileges.`);
  await refresh();
}

async function deactivate(p) {
  if (!confirm(`Deactivate ${p.name} (${p.sub})? Their open pages are closed at once.`)) return;
  const saved = await api(`/api/admin/people/${encodeURIComponent(p.sub)}/deactivate`, {
    method: "POST",
  });
  state.dirty.delete(p.sub);
  if (saved) say(`Deactivated ${saved.name}.`);
  await refresh();
}

async function reactivate(p) {
  const saved = await api(`/api/admin/people/${encodeURIComponent(p.sub)}/reactivate`, {
    method: "POST",
  });
  state.dirty.delete(p.sub);
  if (saved) say(`Reactivated ${saved.name}.`);
  await refresh();
}

// ---- the tenant's orchestration rules (GET/PUT /api/admin/rules) ------------------------

const NUMBERS = ["stat_offer_seconds", "stat_alert_minutes", "max_open_claims", "max_stat_claims", "group_patient_minutes"];
let rulesVersion = 0;

function fillRules(r) {
  const form = $("#rules-form");
  rulesVersion = r.version;
  form.elements.mode.value = r.mode;
  form.elements.hide_locked.checked = r.hide_locked;
  for (const name of NUMBERS) form.elements[name].value = String(r[name]);
  form.elements.rvu_overrides.value = JSON.stringify(r.rvu_overrides);
}

async function loadRules() {
  const r = await api("/api/admin/rules");
  if (r) fillRules(r);
}

async function saveRules(ev) {
  ev.preventDefault();
  const form = $("#rules-form");
  let overrides;
  try {
    overrides = JSON.parse(form.elements.rvu_overrides.value || "{}");
  } catch {
    $("#rules-message").textContent = "RVU overrides must be JSON, e.g. {\"70450\": 0.9}.";
    return;
  }
  const body = { version: rulesVersion, mode: form.elements.mode.value, hide_locked: form.elements.hide_locked.checked, rvu_overrides: overrides };
  for (const name of NUMBERS) body[name] = Number(form.elements[name].value);
  const saved = await api("/api/admin/rules", { method: "PUT", body: JSON.stringify(body) });
  if (saved) {
    fillRules(saved);
    $("#rules-message").textContent = `Saved (version ${saved.version}); in force now.`;
  }
}

if (session()) {
  $("#rules-form").onsubmit = saveRules;
  loadRules();
  refresh();
  setInterval(refresh, REFRESH_MS);
} else say("Log in on the worklist first.");
