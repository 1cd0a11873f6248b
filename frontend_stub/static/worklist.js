// The worklist table: rows held by version, drawn by reusing their <tr>s (so a live
// change never rebuilds the list), sorted client-side, with the row's actions.
//
// Rules from the protocol (gateway/protocol.py): apply a delta only when its version is
// newer than the row's; `leave: true` or op "remove" drops the row; a patch applies only
// to the row held at its `base` version (else the row is asked for).

import {
  CLAIMABLE, PRIORITY_RANK, STATUSES, STATUS_LABEL, clock, el, lockIcon, patientName, timeOfDay,
} from "./format.js";

const COLS = 10; // priority modality procedure site patient status waiting due reader actions
const STATUS_RANK = Object.fromEntries(STATUSES.map((s, i) => [s, i]));
const ACTION_LABEL = {
  claim: "Claim",
  release: "Release",
  prelim: "Sign prelim",
  final: "Sign final",
  break: "Break lock",
};

function urgency(a, b) {
  return (
    (PRIORITY_RANK[a.priority] ?? 9) - (PRIORITY_RANK[b.priority] ?? 9) ||
    a.tat_due_at - b.tat_due_at ||
    (a.exam_id < b.exam_id ? -1 : a.exam_id > b.exam_id ? 1 : 0)
  );
}

const waitingSince = (r) => r.completed_at || r.scheduled_at;
const text = (f) => (a, b) => String(f(a) || "").localeCompare(String(f(b) || ""));

// Each column's natural order for "ascending"; ties fall back to urgency.
const ORDERS = {
  urgency: () => 0,
  modality: text((r) => r.modality),
  procedure: text((r) => r.procedure),
  site: text((r) => r.site),
  status: (a, b) => STATUS_RANK[a.status] - STATUS_RANK[b.status],
  waiting: (a, b) => waitingSince(b) - waitingSince(a), // the longest wait first
  due: (a, b) => a.tat_due_at - b.tat_due_at,
  reader: (a, b) => !a.claimed_by_name - !b.claimed_by_name || text((r) => r.claimed_by_name)(a, b),
};

export function leaseLive(r, now) {
  return !!r.claimed_by && (r.lease_expires_at ?? Infinity) > now;
}

export class Worklist {
  /**
   * @param {object} o
   * @param {HTMLTableElement} o.table
   * @param {HTMLElement} o.scroller  the element that scrolls the table
   * @param {{sub: string, name: string}} o.me
   * @param {boolean} o.readOnly  no actions at all (the coordinator)
   * @param {boolean} o.isAdmin  may break other people's locks
   * @param {(action: string, row: object) => void} o.onAction
   * @param {() => void} o.onRendered
   */
  constructor(o) {
    Object.assign(this, o);
    this.rows = new Map(); // exam_id -> row (a delta's fields)
    this.els = new Map(); // exam_id -> <tr>
    this.total = 0;
    this.busy = new Set(); // exam ids with a request in flight
    this.offline = false; // no connection: actions wait (disabled) until it is back
    this.sort = { key: "urgency", dir: "asc" };
    this.body = this.table.tBodies[0];
    this.pending = null;
    this.pointerRow = null;
    this.table.classList.toggle("readonly", this.readOnly);
    this.body.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      const row = this.rows.get(button.closest("tr").dataset.examId);
      if (row) this.onAction(button.dataset.action, row);
    });
    // Where the pointer is, the list must not move (see `render`).
    this.body.addEventListener("pointerover", (ev) => (this.pointerRow = ev.target.closest("tr")));
    this.table.addEventListener("pointerleave", () => (this.pointerRow = null));
    for (const th of this.table.tHead.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.sort;
        const dir = this.sort.key === key && this.sort.dir === "asc" ? "desc" : "asc";
        this.setSort(key, dir);
        this.onSort?.(this.sort);
      });
    }
    setInterval(() => this.tick(), 1000); // the page has one list for its whole life
  }

  // ---- data -------------------------------------------------------------------------

  /** A snapshot: every row replaced. */
  replace(rows, total) {
    this.rows = new Map(rows.map((r) => [r.exam_id, r]));
    this.total = total;
    // Only what differs from the screen is animated (nothing on the first paint).
    const first = this.els.size === 0;
    const changed = new Set();
    const added = new Set();
    for (const r of rows) {
      const tr = this.els.get(r.exam_id);
      if (tr ? tr.dataset.version !== String(r.version) : !first) changed.add(r.exam_id);
      if (!tr && !first) added.add(r.exam_id);
    }
    this.render(changed, added);
  }

  /** One delta frame; returns the row it left behind (or null when it was dropped). */
  apply(frame) {
    const d = frame.delta;
    const known = this.rows.get(d.exam_id);
    if (known && known.version >= d.version) return null; // seen already: never twice
    if (frame.leave || d.op === "remove") {
      if (!known) return null;
      this.rows.delete(d.exam_id);
      this.total = Math.max(0, this.total - 1);
      this.schedule(d.exam_id, false);
      // A leave names only the exam: what the row was is what this list knew.
      return { ...known, version: d.version };
    } else {
      if (!known) this.total += 1;
      this.rows.set(d.exam_id, d);
    }
    this.schedule(d.exam_id, !known);
    return d;
  }

  /**
   * A patch frame: the changed fields on the row held at `base`. Returns the row, null
   * when it was seen already, or "ask" when the row must be asked for (not held, or
   * held at another version, or only guessed from a reply).
   */
  applyPatch(frame) {
    const known = this.rows.get(frame.exam_id);
    if (known && known.version >= frame.version) return null;
    if (!known || known.version !== frame.base || known.guessed) return "ask";
    const row = { ...known, ...frame.fields, version: frame.version };
    this.rows.set(frame.exam_id, row);
    this.schedule(frame.exam_id, false);
    return row;
  }

  /** The reply to a row request: the row (by the version rule), or null: drop it. */
  applyRow(examId, row) {
    const known = this.rows.get(examId);
    if (row === null) {
      if (!known) return;
      this.rows.delete(examId);
      this.total = Math.max(0, this.total - 1);
      this.schedule(examId, false);
    } else if (!known || known.version < row.version) {
      if (!known) this.total += 1;
      this.rows.set(examId, row);
      this.schedule(examId, !known);
    }
  }

  /** What a reply (claimed, released) told us ahead of its delta; same version rule. The
   * row is then a guess (a patch on it asks for the row). */
  patch(examId, version, fields) {
    const known = this.rows.get(examId);
    if (!known || known.version >= version) return;
    this.rows.set(examId, { ...known, ...fields, version, guessed: true });
    this.schedule(examId, false);
  }

  setBusy(examId, busy) {
    if (busy) this.busy.add(examId);
    else this.busy.delete(examId);
    this.schedule(examId, false, false);
  }

  setOffline(offline) {
    if (this.offline === offline) return;
    this.offline = offline;
    this.tick();
  }

  setSort(key, dir) {
    this.sort = { key, dir };
    for (const th of this.table.tHead.querySelectorAll("th[data-sort]")) {
      const on = th.dataset.sort === key;
      th.setAttribute("aria-sort", on ? (dir === "asc" ? "ascending" : "descending") : "none");
    }
    this.render(new Set(), new Set());
  }

  // ---- drawing ----------------------------------------------------------------------

  schedule(examId, isNew, flash = true) {
    if (!this.pending) {
      this.pending = { changed: new Set(), added: new Set(), quiet: new Set() };
      requestAnimationFrame(() => {
        const p = this.pending;
        this.pending = null;
        this.render(p.changed, p.added, p.quiet);
      });
    }
    (flash ? this.pending.changed : this.pending.quiet).add(examId);
    if (isNew) this.pending.added.add(examId);
  }

  ordered() {
    const order = ORDERS[this.sort.key] || ORDERS.urgency;
    const sign = this.sort.dir === "desc" ? -1 : 1;
    return [...this.rows.values()].sort((a, b) => sign * order(a, b) || urgency(a, b));
  }

  render(changed, added, quiet = new Set()) {
    const rows = this.ordered();
    const now = Date.now();
    // Keep the row under the pointer where it is: rows arriving above it would push it
    // (and the button about to be clicked) down. Scroll by as much as it moved.
    const anchor =
      this.pointerRow?.isConnected && !changed.has(this.pointerRow.dataset.examId) ? this.pointerRow : null;
    const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;

    const keep = new Set(rows.map((r) => r.exam_id));
    for (const [id, tr] of this.els) {
      if (!keep.has(id)) {
        tr.remove();
        this.els.delete(id);
      }
    }
    let prev = null;
    for (const r of rows) {
      let tr = this.els.get(r.exam_id);
      const fresh = !tr;
      if (fresh) {
        tr = this.build(r);
        this.els.set(r.exam_id, tr);
      }
      if (fresh || changed.has(r.exam_id) || quiet.has(r.exam_id)) this.fill(tr, r, now);
      const want = prev ? prev.nextSibling : this.body.firstChild;
      if (want !== tr) this.body.insertBefore(tr, want);
      if (changed.has(r.exam_id)) {
        tr.classList.remove("flash", "new");
        void tr.offsetWidth; // restart the animation
        tr.classList.add(added.has(r.exam_id) ? "new" : "flash");
        setTimeout(() => tr.classList.remove("flash"), 60);
      }
      prev = tr;
    }
    if (anchor?.isConnected) {
      const moved = anchor.getBoundingClientRect().top - anchorTop;
      if (moved) this.scroller.scrollTop += moved;
    }
    this.onRendered?.(rows.length, this.total);
  }

  build(r) {
    const tr = document.createElement("tr");
    for (let i = 0; i < COLS; i++) tr.append(document.createElement("td"));
    tr.dataset.examId = r.exam_id;
    const [prio, mod, proc, site, patient, status, waiting, due, reader, actions] = tr.children;
    prio.className = "c-prio";
    mod.className = "c-mod";
    proc.className = "c-proc";
    site.className = "c-site";
    patient.className = "patient";
    status.className = "c-status";
    waiting.className = "num c-wait";
    due.className = "num c-due";
    reader.className = "c-reader";
    actions.className = "c-actions";
    return tr;
  }

  fill(tr, r, now) {
    tr.dataset.version = r.version;
    tr.dataset.status = r.status;
    tr.dataset.claimedBy = r.claimed_by || "";
    tr.dataset.priority = r.priority;
    const [prio, mod, proc, site, patient, status] = tr.children;
    setText(prio, "", () => prio.replaceChildren(el("span", `prio prio-${r.priority}`, r.priority)), r.priority);
    setText(mod, r.modality);
    if (proc.dataset.key !== r.procedure + r.body_part) {
      proc.dataset.key = r.procedure + r.body_part;
      const name = el("span", "proc", r.procedure);
      name.title = `${r.procedure} (${r.body_part})`;
      // The body part only when the procedure's name does not already say it.
      const part = r.body_part && !r.procedure.toLowerCase().includes(r.body_part.toLowerCase());
      proc.replaceChildren(name, ...(part ? [el("span", "muted", ` \u00b7 ${r.body_part}`)] : []));
    }
    setText(site, r.site);
    const phiKey = `${r.patient_name}|${r.mrn}`;
    if (patient.dataset.key !== phiKey) {
      patient.dataset.key = phiKey;
      const phi = el("span", "phi masked", `${patientName(r.patient_name)} \u00b7 ${r.mrn}`);
      phi.tabIndex = 0; // keyboard users reveal it by focus, as mouse users by hover
      patient.replaceChildren(phi);
    }
    if (status.dataset.key !== r.status) {
      status.dataset.key = r.status;
      status.replaceChildren(el("span", `st st-${r.status}`, STATUS_LABEL[r.status] || r.status));
    }
    this.tick1(tr, r, now);
  }

  /** The parts of a row that depend on the time: clocks, lease, actions. */
  tick1(tr, r, now) {
    const [, , , , patient, , waiting, due, reader, actions] = tr.children;
    const since = waitingSince(r);
    setText(waiting, since && since <= now ? clock(now - since) : "");
    const left = r.tat_due_at - now;
    const span = Math.max(1, r.tat_due_at - (r.completed_at || r.scheduled_at));
    const level = left < 0 ? "red" : left < Math.min(span * 0.25, 30 * 60_000) ? "amber" : "ok";
    setText(due, clock(left));
    if (due.dataset.level !== level) {
      due.dataset.level = level;
      due.title = `due ${timeOfDay(r.tat_due_at)}${level === "red" ? " (overdue)" : ""}`;
    }

    const live = leaseLive(r, now);
    const mine = live && r.claimed_by === this.me.sub;
    tr.classList.toggle("held-mine", mine);
    tr.classList.toggle("held-other", live && !mine);
    const phi = patient.firstChild;
    if (phi) {
      // The claimant reads the exam: their own row always shows the patient.
      phi.classList.toggle("masked", !mine);
    }
    const readerKey = r.claimed_by ? `${live}|${mine}|${r.claimed_by_name}` : "";
    if (reader.dataset.key !== readerKey) {
      reader.dataset.key = readerKey;
      if (!r.claimed_by) reader.replaceChildren();
      else if (live) {
        const who = el("span", mine ? "holder mine" : "holder", mine ? "You" : r.claimed_by_name);
        reader.replaceChildren(lockIcon(), who);
        reader.title = mine ? `You (${r.claimed_by_name}) hold this exam` : `${r.claimed_by_name} is reading this exam`;
      } else {
        reader.replaceChildren(lockIcon(true), el("span", "holder lapsed", `${r.claimed_by_name} (lapsed)`));
        reader.title = "The claim's lease ran out: anyone may claim it";
      }
    }

    const list = this.actionsFor(r, now);
    const busy = this.busy.has(r.exam_id);
    const actionKey = `${list.join(",")}|${busy}|${this.offline}`;
    if (actions.dataset.key !== actionKey) {
      actions.dataset.key = actionKey;
      actions.replaceChildren(
        ...list.map((a) => {
          const b = el("button", `act act-${a}`, ACTION_LABEL[a]);
          b.type = "button";
          b.dataset.action = a;
          b.setAttribute("aria-label", `${ACTION_LABEL[a]} ${r.exam_id}`);
          if (busy) {
            b.disabled = true;
            b.setAttribute("aria-busy", "true");
          } else if (this.offline) {
            b.disabled = true;
            b.title = "Reconnecting: available again in a moment";
          }
          return b;
        }),
      );
    }
  }

  actionsFor(r, now) {
    if (this.readOnly) return [];
    if (leaseLive(r, now)) {
      if (r.claimed_by === this.me.sub) {
        const list = ["release"];
        if (r.status === "COMPLETED") list.push("prelim");
        if (CLAIMABLE.has(r.status)) list.push("final");
        return list;
      }
      return this.isAdmin ? ["break"] : [];
    }
    return CLAIMABLE.has(r.status) ? ["claim"] : [];
  }

  tick() {
    const now = Date.now();
    for (const [id, tr] of this.els) {
      const r = this.rows.get(id);
      if (r) this.tick1(tr, r, now);
    }
  }
}

function setText(td, value, build, key) {
  if (build) {
    if (td.dataset.key !== key) {
      td.dataset.key = key;
      build();
    }
    return;
  }
  if (td.textContent !== value) td.textContent = value;
}
