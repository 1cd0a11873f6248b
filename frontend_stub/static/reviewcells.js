// Peer review's scores (read from the server, their one definition is dynamo.review) and
// drawing helpers: cells, badges, due clocks and score tables, shared by the coordinator's
// board and the radiologist's reviews (reviews.js).

import { dayTime, dueIn, el } from "./format.js";

// The scores come from the server (`dynamo.review`, their one definition).
const RADPEER_TABLE = await (await fetch("/api/radpeer")).json();
export const RADPEER = RADPEER_TABLE.map((s) => s.score);
// Scores that need a comment and go to the coordinator's arbitration.
export const DISCREPANT = new Set(RADPEER_TABLE.filter((s) => s.discrepant).map((s) => s.score));
export const RADPEER_LABEL = Object.fromEntries(RADPEER_TABLE.map((s) => [s.score, s.label]));
export const finalOf = (r) => r.final_score || r.score;
export const pct = (x) => `${Math.round(x * 1000) / 10}%`;

// ---- drawing helpers ------------------------------------------------------------------

/** Reuse each item's element while its key is unchanged; otherwise build it again and
 * carry over what the user had typed or chosen in it (and the focus). */
export function sync(container, items, keyOf, build) {
  const old = new Map([...container.children].map((n) => [n.dataset.examId, n]));
  let prev = null;
  for (const r of items) {
    const key = keyOf(r);
    let node = old.get(r.exam_id);
    old.delete(r.exam_id);
    if (!node || node.dataset.key !== key) {
      const fresh = build(r);
      fresh.dataset.examId = r.exam_id;
      fresh.dataset.key = key;
      if (node) {
        const focus = carry(node, fresh);
        node.replaceWith(fresh);
        focus?.();
      }
      node = fresh;
    }
    const want = prev ? prev.nextSibling : container.firstChild;
    if (want !== node) container.insertBefore(node, want);
    prev = node;
  }
  for (const n of old.values()) n.remove();
}

export function carry(from, to) {
  let focus = null;
  const active = document.activeElement;
  for (const before of from.querySelectorAll("[data-keep]")) {
    const after = to.querySelector(`[data-keep="${before.dataset.keep}"]`);
    if (!after) continue;
    if (after.tagName === "SELECT") {
      if ([...after.options].some((o) => o.value === before.value && !o.disabled)) after.value = before.value;
    } else if (before.value !== before.defaultValue) {
      after.value = before.value;
    }
    if (before === active) {
      const [start, end] = [before.selectionStart, before.selectionEnd];
      focus = () => {
        after.focus();
        if (typeof start === "number" && after.setSelectionRange) after.setSelectionRange(start, end);
      };
    }
  }
  for (const node of [to, ...to.querySelectorAll("*")]) node.refresh?.();
  return focus;
}

export function td(content, cls) {
  const cell = document.createElement("td");
  if (cls) cell.className = cls;
  if (content instanceof Node) cell.append(content);
  else if (content !== null && content !== undefined) cell.textContent = content;
  return cell;
}

export function examCell(r) {
  return td(el("span", "exam-id", r.exam_id));
}

export function procCell(r) {
  const cell = td(r.procedure, "c-proc");
  cell.title = r.procedure;
  return cell;
}

/** Coordinators only: the rows other viewers get carry no reader at all. */
export function readerName(r) {
  return r.original_reader_name || r.original_reader || "";
}

export function scoreBadge(score) {
  if (!score) return el("span", "muted", "\u2014");
  const badge = el("span", `score score-${score}`, score);
  badge.title = RADPEER_LABEL[score] || "";
  return badge;
}

export function errorLine(id, tag = "div") {
  const line = el(tag, "rv-error");
  line.id = `rv-err-${id}`;
  line.dataset.errorFor = id;
  line.setAttribute("role", "alert");
  return line;
}

export function dueCell(r, now) {
  const cell = td(null);
  if (r.due_at) cell.append(dueLine(r, now, "span"));
  return cell;
}

export function dueLine(r, now, tag) {
  const node = el(tag, "due");
  node.dataset.due = String(r.due_at);
  paintDue(node, now);
  return node;
}

export function paintDue(node, now) {
  const due = Number(node.dataset.due);
  const overdue = due < now;
  const text = `${dayTime(due)} \u00b7 ${dueIn(due, now)}`;
  if (node.textContent !== text) node.textContent = text;
  node.dataset.overdue = String(overdue);
  node.title = overdue ? "Overdue" : `Due ${new Date(due).toLocaleString()}`;
  node.closest(".rv-card")?.setAttribute("data-overdue", String(overdue));
}

export function credentialed(u, r) {
  const modalities = u.modalities || [];
  return (!u.sites.length || u.sites.includes(r.site)) && (!u.subspecialties.length || u.subspecialties.includes(r.subspecialty))
    && (!modalities.length || modalities.includes(r.modality));
}

/** Final scores of done reviews grouped by `keyOf`: counts per RADPEER score, the total
 * and the discrepancy rate (share above 1). */
export function scoreTable(table, heading, done, keyOf, titles) {
  const groups = new Map();
  for (const r of done) {
    const k = keyOf(r);
    if (!groups.has(k)) groups.set(k, Object.fromEntries(RADPEER.map((s) => [s, 0])));
    const g = groups.get(k);
    const s = finalOf(r);
    if (s in g) g[s] += 1;
  }
  const head = el("tr");
  head.append(el("th", "", heading));
  for (const s of RADPEER) {
    const th = el("th", "", s);
    th.title = RADPEER_LABEL[s];
    head.append(th);
  }
  head.append(el("th", "", "n"), el("th", "", "Disc."));
  table.tHead.replaceChildren(head);
  const rows = [...groups.keys()].sort().map((k) => {
    const g = groups.get(k);
    const n = RADPEER.reduce((sum, s) => sum + g[s], 0);
    const tr = el("tr");
    tr.dataset.key = k;
    const name = td(k);
    if (titles[k]) name.title = titles[k];
    tr.append(name);
    for (const s of RADPEER) {
      const cell = td(g[s] ? String(g[s]) : "\u00b7", g[s] ? "" : "zero");
      cell.dataset.score = s;
      tr.append(cell);
    }
    const rate = td(pct((n - g["1"]) / n), "rate");
    rate.dataset.rate = "";
    tr.append(td(String(n)), rate);
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    const cell = td("No done reviews yet.", "muted");
    cell.colSpan = RADPEER.length + 3;
    tr.append(cell);
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
}
