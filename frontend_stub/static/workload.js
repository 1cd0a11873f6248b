// The coordinator's live workload board (protocol: `board`, `reassign`): per reader
// their online state, open cases, STATs and RVUs this shift; the unassigned queue by
// priority and age; turnaround breaches; and a form to give a case to another reader.

import { clock, el } from "./format.js";

export class WorkloadPanel {
  constructor(root, onReassign) {
    this.root = root;
    this.onReassign = onReassign;
    this.board = null;
    root.querySelector("#wl-reassign").onsubmit = (ev) => {
      ev.preventDefault();
      const examId = root.querySelector("#wl-exam").value;
      const to = root.querySelector("#wl-to").value;
      if (examId && to) this.onReassign(examId, to);
    };
  }

  render(board) {
    this.board = board;
    this.root.hidden = false;
    const now = board.at;
    const readers = this.root.querySelector("#wl-readers tbody");
    readers.replaceChildren(
      ...board.readers.map((r) => {
        const tr = el("tr");
        tr.dataset.user = r.sub;
        tr.append(
          el("td", r.online ? "wl-online" : "muted", `${r.online ? "\u25cf" : "\u25cb"} ${r.name}`),
          el("td", "num wl-open", String(r.open_claims)),
          el("td", "num wl-stat", String(r.stat_claims)),
          el("td", "num wl-rvu", r.rvu_shift.toFixed(2)),
          el("td", "num wl-offers", r.offers ? String(r.offers) : ""),
        );
        return tr;
      }),
    );
    const queue = this.root.querySelector("#wl-queue");
    queue.replaceChildren(
      ...board.queue.map((q) => {
        const li = el("li", `wl-case prio-${q.priority.toLowerCase()}`);
        li.dataset.examId = q.exam_id;
        const waited = clock(now - q.ready_at);
        const offered = q.offered_to ? ` \u00b7 offered to ${q.offered_to}` : "";
        li.append(el("span", "wl-prio", q.priority), ` ${q.exam_id} \u00b7 ${q.procedure} \u00b7 ${q.site} \u00b7 waiting ${waited}${offered}`);
        return li;
      }),
    );
    this.root.querySelector("#wl-queue-count").textContent = String(board.queue.length);
    const breaches = this.root.querySelector("#wl-breaches");
    breaches.replaceChildren(
      ...board.breaches.map((b) => {
        const li = el("li", "wl-breach");
        li.dataset.examId = b.exam_id;
        const who = b.claimed_by_name ? ` \u00b7 ${b.claimed_by_name}` : " \u00b7 unassigned";
        li.append(`${b.exam_id} \u00b7 ${b.priority} \u00b7 ${b.site} \u00b7 overdue ${clock(now - b.tat_due_at)}${who}`);
        return li;
      }),
    );
    this.root.querySelector("#wl-breach-count").textContent = String(board.breaches.length);
    this.fillForm(board);
  }

  fillForm(board) {
    const exam = this.root.querySelector("#wl-exam");
    const to = this.root.querySelector("#wl-to");
    const keep = [exam.value, to.value];
    const cases = new Set([...board.queue.map((q) => q.exam_id), ...board.breaches.map((b) => b.exam_id)]);
    for (const r of board.readers) for (const id of r.holding) cases.add(id);
    exam.replaceChildren(option("", "Case\u2026"), ...[...cases].map((id) => option(id, id)));
    to.replaceChildren(
      option("", "Reader\u2026"),
      ...board.readers.filter((r) => r.online).map((r) => option(r.sub, r.name)),
    );
    exam.value = cases.has(keep[0]) ? keep[0] : "";
    to.value = board.readers.some((r) => r.sub === keep[1] && r.online) ? keep[1] : "";
  }
}

function option(value, label) {
  const o = el("option", "", label);
  o.value = value;
  return o;
}
