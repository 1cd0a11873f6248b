// The filter bar and the query string are one state: a deep link such as
// /worklist?modality=CT (or an old bookmark) lands on that view, and every change is
// written back so the address can be shared or bookmarked. Values the user may not
// use (a site outside their scope, a typo) are dropped rather than sent to the server.

import { MODALITIES, PRIORITIES, STATUSES, STATUS_LABEL, el } from "./format.js";

const LISTS = ["site", "modality", "priority", "status"];
export const SORT_KEYS = ["urgency", "modality", "procedure", "site", "status", "waiting", "due", "reader"];

/** Filter state from a query string, keeping only allowed values. */
export function parseQuery(search, allowedSites) {
  const q = new URLSearchParams(search);
  const allowed = { site: allowedSites, modality: MODALITIES, priority: PRIORITIES, status: STATUSES };
  const f = {};
  for (const key of LISTS) {
    const asked = (q.getAll(key).join(",") || "").split(",").map((v) => v.trim()).filter(Boolean);
    const upper = key === "site" ? asked : asked.map((v) => v.toUpperCase());
    f[key] = [...new Set(upper.filter((v) => allowed[key].includes(v)))];
  }
  f.mine = ["1", "true", "yes"].includes((q.get("mine") || "").toLowerCase());
  const sort = q.get("sort") || "urgency";
  f.sort = SORT_KEYS.includes(sort) ? sort : "urgency";
  f.dir = q.get("dir") === "desc" ? "desc" : "asc";
  return f;
}

export function toQuery(f) {
  const q = new URLSearchParams();
  for (const key of LISTS) if (f[key].length) q.set(key, f[key].join(","));
  if (f.mine) q.set("mine", "1");
  if (f.sort !== "urgency" || f.dir !== "asc") {
    q.set("sort", f.sort);
    if (f.dir !== "asc") q.set("dir", f.dir);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The subscription's view (server-side filtering). No statuses: the server's default
 * (every open state). */
export function toView(f) {
  const view = { sites: f.site, modalities: f.modality, priorities: f.priority };
  if (f.status.length) view.statuses = f.status;
  if (f.mine) view.claimed_by_me = true;
  return view;
}

export function viewKey(f) {
  return JSON.stringify(toView(f));
}

/** Build the checkboxes of one fieldset. */
export function fillChecks(box, key, values, selected, labels = {}) {
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const v of values) {
    const label = el("label", "chip");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = v;
    input.name = key;
    input.checked = selected.includes(v);
    label.append(input, " ", labels[v] || v);
    label.title = labels[v] ? v : "";
    box.append(label);
  }
}

export function readChecks(form) {
  const f = {};
  for (const key of LISTS) {
    f[key] = [...form.querySelectorAll(`#f-${key} input:checked`)].map((i) => i.value);
  }
  f.mine = !!form.querySelector("#f-mine:checked");
  return f;
}

export function fillForm(form, f, sites) {
  fillChecks(form.querySelector("#f-site"), "site", sites.map((s) => s.code), f.site,
    Object.fromEntries(sites.map((s) => [s.code, s.code])));
  form.querySelectorAll("#f-site label").forEach((l, i) => (l.title = sites[i].name));
  fillChecks(form.querySelector("#f-modality"), "modality", MODALITIES, f.modality);
  fillChecks(form.querySelector("#f-priority"), "priority", PRIORITIES, f.priority);
  fillChecks(form.querySelector("#f-status"), "status", STATUSES, f.status, STATUS_LABEL);
  form.querySelector("#f-mine").checked = f.mine;
}
