// Peer review (after ACR RADPEER) on the page, two faces over one set of rows:
// - the coordinator's board (#board-view): the pool, assignments, the arbitration queue,
//   done reviews, and outcome statistics;
// - a radiologist's "My reviews" (#mine-view): reviews assigned to them (claim, then
//   score) and feedback on exams they read.
//
// Rows come from a `reviews` reply (the whole list, asked for on every new connection)
// and from live `review` frames, both already redacted for this user by the server
// (gateway/reviewing.py `visible`); a row is only ever replaced by a newer version. The
// page never draws what a viewer is not meant to see even if it were sent: a reviewer's
// rows are drawn without any reader, a reader's without any reviewer name.
//
// Rows are drawn keyed by exam and redrawn only when they change, and what the user was
// typing or choosing in a redrawn row (a comment, a reviewer) is carried over.

import { dayTime, dueIn, el } from "./format.js";
import { RADPEER, DISCREPANT, RADPEER_LABEL, finalOf, pct, credentialed, dueCell, dueLine, errorLine, examCell, paintDue, procCell, readerName, scoreBadge, scoreTable, sync, td } from "./reviewcells.js";

const READER_STATE = {
  POOLED: "Sampled",
  ASSIGNED: "Under review",
  ARBITRATION: "In arbitration",
  DONE: "Done",
};
const OPEN = new Set(["ASSIGNED", "ARBITRATION"]);
const EXAM_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const DONE_SHOWN = 100; // the statistics count every done review; the table the latest
const RETRYABLE = new Set(["internal", "unavailable", "rate_limited"]);

const byId = (a, b) => (a.exam_id < b.exam_id ? -1 : a.exam_id > b.exam_id ? 1 : 0);

export class ReviewDesk {
  /**
   * @param {object} o
   * @param {{sub: string, name: string}} o.me
   * @param {HTMLElement|null} o.board  the coordinator's dashboard (null: not a coordinator)
   * @param {HTMLElement|null} o.mine  the radiologist's panel (null: not a radiologist)
   * @param {(frame: object, meta?: object) => string|null} o.send  sends a request; its id
   * @param {(text: string, kind?: string) => void} o.notify
   * @param {(summary: object) => void} o.onChange  after every redraw
   * @param {{code: string, name: string}[]} [o.sites]  the tenant's sites (names for titles)
   */
  constructor(o) {
    Object.assign(this, o);
    this.rows = new Map(); // exam_id -> review, as this user may see it
    this.tokens = new Map(); // exam_id -> this page's secret claim token for a review
    this.busy = new Set(); // exam ids (or "add") with a request in flight
    this.errors = new Map(); // exam id (or "add") -> what went wrong, shown in place
    this.radiologists = []; // the tenant's radiologists (coordinators: the reviewer choice)
    this.offline = true;
    this.loaded = false;
    this.focusNext = null; // {id, keep}: a control to focus after the next redraw
    if (this.board) this.wireBoard();
    this.overdue = 0; // assignments past due at the last redraw
    setInterval(() => this.tick(), 5_000); // the due clocks
  }

  // ---- data ---------------------------------------------------------------------------

  /** Load (again, after every new connection) and follow the reviews. */
  load() {
    this.send({ type: "review_list" }, { key: "list" });
  }

  setRadiologists(users) {
    this.radiologists = users;
    this.render();
  }

  setOffline(offline) {
    if (offline) this.busy.clear(); // the requests in flight died with the connection
    if (this.offline === offline) return;
    this.offline = offline;
    this.render();
  }

  /** The `reviews` reply: everything this user may see now. */
  replace(list) {
    const old = this.rows;
    this.rows = new Map();
    for (const r of list) {
      const known = old.get(r.exam_id);
      this.rows.set(r.exam_id, known && known.version > r.version ? known : r);
    }
    for (const id of [...this.tokens.keys()]) if (!this.scorable(this.rows.get(id))) this.tokens.delete(id);
    this.loaded = true;
    this.render();
  }

  /** A live `review` frame. */
  apply(review) {
    const before = this.rows.get(review.exam_id);
    if (!this.merge(review)) return;
    if (this.loaded) this.tell(before, review);
    this.render();
  }

  merge(r) {
    if (!r || !r.exam_id) return false;
    const known = this.rows.get(r.exam_id);
    if (known && known.version >= r.version) return false;
    if (r.op === "remove") {
      this.rows.delete(r.exam_id);
      this.tokens.delete(r.exam_id);
      return !!known;
    }
    this.rows.set(r.exam_id, r);
    if (known && known.state !== r.state) this.errors.delete(r.exam_id);
    if (!this.scorable(r)) this.tokens.delete(r.exam_id);
    return true;
  }

  scorable(r) {
    return !!r && r.state === "ASSIGNED" && r.reviewer === this.me.sub;
  }

  /** A reviewer is told when a review lands on their desk (they may be on the worklist). */
  tell(before, r) {
    if (!this.mine || !this.scorable(r) || this.scorable(before)) return;
    if (r.score === "" && r.review_comment) {
      this.notify(`Peer review ${r.exam_id} came back to you: the coordinator asks you to score it again.`, "info");
    } else {
      const due = r.due_at ? `, due ${dayTime(r.due_at)}` : "";
      this.notify(`New peer review for you: ${r.procedure} (${r.site})${due}. See My reviews.`, "info");
    }
  }

  openCounts() {
    const counts = new Map();
    for (const r of this.rows.values()) {
      if (OPEN.has(r.state) && r.reviewer) counts.set(r.reviewer, (counts.get(r.reviewer) || 0) + 1);
    }
    return counts;
  }

  nameOf(sub) {
    return this.radiologists.find((u) => u.sub === sub)?.name || sub;
  }

  // ---- requests and replies -------------------------------------------------------------

  request(frame, meta = {}) {
    const key = meta.key ?? frame.exam_id;
    if (this.busy.has(key)) return;
    this.errors.delete(key);
    if (key === "add") this.addMessage("");
    const id = this.send(frame, { ...meta, key });
    if (!id) return;
    this.busy.add(key);
    this.render();
  }

  onOk(f, req) {
    const id = req.examId;
    this.busy.delete(req.key);
    this.merge(f.review);
    if (f.action === "add") {
      this.board.querySelector("#rv-add-input").value = "";
      this.addMessage(`${id} is in the pool.`, "ok");
    } else if (f.action === "claim") {
      this.tokens.set(id, f.token);
      this.focusNext = { id, keep: "score" };
    } else if (f.action === "score") {
      this.tokens.delete(id);
    }
    this.render();
  }

  onError(f, req) {
    const key = req.key;
    this.busy.delete(key);
    if (key === "list") {
      if (RETRYABLE.has(f.code)) setTimeout(() => this.load(), 1500);
      else console.warn("gateway:", f.code, f.message);
      return;
    }
    if (f.code === "stale_token") this.tokens.delete(req.examId);
    const text = this.explain(f, req);
    if (key === "add") this.addMessage(text, "error");
    else this.errors.set(key, text);
    // The screen was behind the server (someone else acted first): fetch what it holds.
    if (key !== "add" && ["invalid_transition", "not_found", "conflict", "stale_token"].includes(f.code)) {
      this.load();
    }
    this.render();
  }

  explain(f, req) {
    const id = req.examId;
    const now = String(f.detail?.current || "").toLowerCase();
    const c = f.code;
    switch (req.action) {
      case "review_add":
        if (c === "conflict") return `${id} is already in peer review.`;
        if (c === "not_found") return `No exam ${id} in this group.`;
        if (c === "invalid_transition") return `${id} is ${now || "not final"}: only finalized exams can be reviewed.`;
        break;
      case "review_assign":
        if (c === "forbidden" && f.detail?.eligible) {
          const names = f.detail.eligible.map((sub) => this.nameOf(sub));
          return names.length
            ? `That radiologist may not review ${id}. Eligible: ${names.join(", ")}.`
            : `Nobody in the group is eligible to review ${id}.`;
        }
        if (c === "conflict") return `The reviewer has started ${id}: it can no longer be reassigned.`;
        if (c === "invalid_transition") return `${id} is ${now}: it can no longer be assigned.`;
        break;
      case "review_claim":
        if (c === "invalid_transition") return `This review can no longer be claimed (${now}).`;
        break;
      case "review_score":
        if (c === "stale_token") return "Your claim on this review is no longer valid: claim it again.";
        if (c === "bad_request") return `Not saved: ${f.message}.`;
        break;
      case "review_arbitrate":
        if (c === "invalid_transition") return `Already decided (${now}).`;
        break;
      default:
        break;
    }
    if (c === "forbidden") return `Not allowed: ${f.message}.`;
    if (c === "rate_limited") return "Too many requests: wait a moment and try again.";
    return `Could not ${req.action.replace("review_", "").replace("_", " ")} ${id}: ${f.message}. Try again.`;
  }

  fail(id, text, control) {
    this.errors.set(id, text);
    this.paintErrors();
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }

  // ---- coordinator actions --------------------------------------------------------------

  wireBoard() {
    const form = this.board.querySelector("#rv-add");
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const input = this.board.querySelector("#rv-add-input");
      const accession = input.value.trim();
      if (!EXAM_ID.test(accession)) {
        this.addMessage(
          accession ? "That is not an accession number (letters, digits, dot, dash, underscore)." : "Type the exam's accession number.",
          "error",
        );
        input.focus();
        return;
      }
      this.request({ type: "review_add", exam_id: accession }, { key: "add" });
    };
  }

  addMessage(text, kind = "") {
    const msg = this.board.querySelector("#rv-add-msg");
    msg.textContent = text;
    msg.dataset.kind = kind;
    this.board.querySelector("#rv-add-input").setAttribute("aria-invalid", String(kind === "error"));
  }

  assign(r, reviewer) {
    const hours = Number(this.board.querySelector("#rv-due").value) || 72;
    const frame = { type: "review_assign", exam_id: r.exam_id, due_in_hours: hours };
    if (reviewer) frame.reviewer = reviewer;
    this.request(frame);
  }

  arbitrate(r, decision, score) {
    const frame = { type: "review_arbitrate", exam_id: r.exam_id, decision };
    if (score) frame.score = score;
    this.request(frame);
  }

  // ---- drawing ------------------------------------------------------------------------

  render() {
    const now = Date.now();
    const summary = { loaded: this.loaded, todo: 0, mine: 0, arbitration: 0 };
    if (this.board) Object.assign(summary, this.renderBoard(now));
    if (this.mine) Object.assign(summary, this.renderMine(now));
    this.paintErrors();
    if (this.focusNext) {
      const { id, keep } = this.focusNext;
      this.focusNext = null;
      document.querySelector(`[data-exam-id="${id}"] [data-keep="${keep}"]`)?.focus();
    }
    this.onChange?.(summary);
  }

  rowKey(r) {
    return `${r.version}|${this.busy.has(r.exam_id)}|${this.offline}|${this.tokens.has(r.exam_id)}`;
  }

  /** A button of a row: disabled while its row waits for an answer or the page is offline. */
  button(r, text, label, cls, onClick) {
    const b = el("button", `act ${cls || ""}`.trim(), text);
    b.type = "button";
    b.setAttribute("aria-label", label);
    if (this.busy.has(r.exam_id)) {
      b.disabled = true;
      b.setAttribute("aria-busy", "true");
    } else if (this.offline) {
      b.disabled = true;
      b.title = "Reconnecting: available again in a moment";
    }
    b.onclick = onClick;
    return b;
  }

  renderBoard(now) {
    const all = [...this.rows.values()];
    const by = (state) => all.filter((r) => r.state === state);
    const pool = by("POOLED").sort((a, b) => a.created_at - b.created_at || byId(a, b));
    const assigned = by("ASSIGNED").sort((a, b) => (a.due_at ?? Infinity) - (b.due_at ?? Infinity) || byId(a, b));
    const arbitration = by("ARBITRATION").sort((a, b) => a.updated_at - b.updated_at || byId(a, b));
    const done = by("DONE").sort((a, b) => b.updated_at - a.updated_at || byId(a, b));
    // The reviewer choices show each radiologist's open reviews: redraw when they change.
    const counts = this.openCounts();
    const choiceKey = `${this.radiologists.map((u) => `${u.sub}:${counts.get(u.sub) || 0}`).join(",")}`;

    this.section("rv-pool", pool, (r) => `${this.rowKey(r)}|${choiceKey}`, (r) => this.poolRow(r, counts));
    this.section("rv-assigned", assigned, (r) => `${this.rowKey(r)}|${choiceKey}`, (r) =>
      this.assignedRow(r, counts, now),
    );
    this.section("rv-arbitration", arbitration, (r) => this.rowKey(r), (r) => this.arbitrationRow(r));
    this.section("rv-done", done, (r) => this.rowKey(r), (r) => this.doneRow(r), DONE_SHOWN);
    const add = this.board.querySelector("#rv-add-button");
    add.disabled = this.busy.has("add") || this.offline;
    add.setAttribute("aria-busy", String(this.busy.has("add")));
    this.renderStats({ pool, assigned, arbitration, done, now });
    return { arbitration: arbitration.length, pool: pool.length };
  }

  section(id, rows, keyOf, build, cap = Infinity) {
    const sec = document.getElementById(id);
    const body = sec.querySelector("tbody, .rv-cards");
    sync(body, rows.slice(0, cap), keyOf, build);
    sec.querySelector(".rv-count").textContent = String(rows.length);
    const table = sec.querySelector("table, .rv-cards");
    table.hidden = rows.length === 0;
    const empty = sec.querySelector(".rv-empty");
    if (empty) empty.hidden = rows.length > 0;
    return rows.length;
  }

  poolRow(r, counts) {
    const tr = document.createElement("tr");
    tr.append(
      examCell(r),
      procCell(r),
      td(r.site),
      td(r.modality),
      td(r.subspecialty),
      td(readerName(r)),
      td(el("span", "tag", r.source === "manual" ? "added" : "sampled")),
      this.assignCell(r, counts, "Assign"),
    );
    return tr;
  }

  assignedRow(r, counts, now) {
    const tr = document.createElement("tr");
    const started = !!r.claimed_by;
    const progress = td(started ? "Started" : "Not started", `rv-progress-${started ? "started" : "waiting"}`);
    if (r.score === "" && r.review_comment) progress.textContent += " (returned)";
    tr.append(
      examCell(r),
      procCell(r),
      td(r.site),
      td(r.modality),
      td(readerName(r)),
      td(r.reviewer_name || r.reviewer || ""),
      dueCell(r, now),
      progress,
      // Someone else can take it over until the reviewer has started.
      started ? td("", "rv-act") : this.assignCell(r, counts, "Reassign"),
    );
    return tr;
  }

  /** A reviewer choice (the tenant's radiologists, open reviews each) and its buttons. */
  assignCell(r, counts, verb) {
    const cell = td(null, "rv-act");
    const choices = this.radiologists.filter((u) => u.sub !== r.original_reader && u.sub !== r.reviewer);
    let select = null;
    if (choices.length) {
      select = document.createElement("select");
      select.dataset.keep = "reviewer";
      select.setAttribute("aria-label", `Reviewer for ${r.exam_id}`);
      select.append(new Option("Reviewer\u2026", ""));
      for (const u of choices) {
        const ok = credentialed(u, r);
        const n = counts.get(u.sub) || 0;
        const option = new Option(`${u.name} \u00b7 ${n} open${ok ? "" : " \u00b7 not credentialed"}`, u.sub);
        option.disabled = !ok;
        select.append(option);
      }
      const go = this.button(r, verb, `${verb} ${r.exam_id}`, "act-primary", () => this.assign(r, select.value));
      const refresh = () => {
        if (!this.busy.has(r.exam_id) && !this.offline) go.disabled = !select.value;
        go.title = select.value ? "" : "Choose a reviewer first";
      };
      select.onchange = refresh;
      cell.refresh = refresh;
      refresh();
      cell.append(select, go);
    }
    if (verb === "Assign") {
      const suggest = this.button(r, "Suggest", `Suggest a reviewer for ${r.exam_id}`, "", () => this.assign(r, null));
      suggest.title = "Assign to the eligible radiologist with the fewest open reviews";
      cell.append(suggest);
    }
    cell.append(errorLine(r.exam_id));
    return cell;
  }

  arbitrationRow(r) {
    const tr = document.createElement("tr");
    const cell = td(null, "rv-act");
    const confirm = this.button(r, "Confirm", `Confirm ${r.score} on ${r.exam_id}`, "act-ok", () =>
      this.arbitrate(r, "confirm"),
    );
    confirm.title = `The reviewer's ${r.score} stands`;
    const select = document.createElement("select");
    select.dataset.keep = "final";
    select.setAttribute("aria-label", `New score for ${r.exam_id}`);
    select.append(new Option("New score\u2026", ""));
    for (const s of RADPEER) {
      const option = new Option(s, s);
      option.title = RADPEER_LABEL[s];
      option.disabled = s === r.score;
      select.append(option);
    }
    const change = this.button(r, "Change", `Change the score of ${r.exam_id}`, "", () =>
      this.arbitrate(r, "change", select.value),
    );
    const refresh = () => {
      if (!this.busy.has(r.exam_id) && !this.offline) change.disabled = !select.value;
      change.title = select.value ? `Final score ${select.value}` : "Choose the new score first";
    };
    select.onchange = refresh;
    cell.refresh = refresh;
    refresh();
    const back = this.button(r, "Return", `Return ${r.exam_id} to the reviewer`, "", () => this.arbitrate(r, "return"));
    back.title = "Send it back to the reviewer to score again";
    cell.append(confirm, select, change, back, errorLine(r.exam_id));
    tr.append(
      examCell(r),
      procCell(r),
      td(r.site),
      td(r.modality),
      td(readerName(r)),
      td(r.reviewer_name || r.reviewer || ""),
      td(scoreBadge(r.score)),
      td(r.review_comment || "", "rv-comment"),
      cell,
    );
    return tr;
  }

  doneRow(r) {
    const tr = document.createElement("tr");
    const final = finalOf(r);
    const finalCell = td(scoreBadge(final), "rv-final");
    if (final !== r.score) finalCell.append(el("span", "muted", " changed"));
    tr.append(
      examCell(r),
      procCell(r),
      td(r.site),
      td(r.modality),
      td(readerName(r)),
      td(r.reviewer_name || r.reviewer || ""),
      td(scoreBadge(r.score)),
      finalCell,
      td(r.review_comment || "", "rv-comment"),
    );
    return tr;
  }

  renderStats({ pool, assigned, arbitration, done, now }) {
    const b = this.board;
    const discrepant = done.filter((r) => finalOf(r) !== "1").length;
    b.querySelector("#rv-rate").textContent = done.length ? pct(discrepant / done.length) : "\u2014";
    b.querySelector("#rv-rate-detail").textContent = done.length
      ? `${discrepant} of ${done.length} done review${done.length === 1 ? "" : "s"} scored above 1`
      : "no done reviews yet";
    const overdue = this.overdueCount(now);
    this.overdue = overdue;
    const counts = b.querySelector("#rv-counts");
    counts.replaceChildren(
      ...[
        ["Pool", pool.length],
        ["Assigned", assigned.length, overdue ? `${overdue} overdue` : ""],
        ["Arbitration", arbitration.length],
        ["Done", done.length],
      ].map(([name, n, extra]) => {
        const box = el("div");
        box.dataset.count = name.toLowerCase();
        const dd = el("dd", "", String(n));
        if (extra) dd.append(el("span", "overdue", extra));
        box.append(el("dt", "", name), dd);
        return box;
      }),
    );
    const siteNames = Object.fromEntries((this.sites || []).map((s) => [s.code, s.name]));
    scoreTable(b.querySelector("#rv-by-site"), "Site", done, (r) => r.site, siteNames);
    scoreTable(b.querySelector("#rv-by-modality"), "Modality", done, (r) => r.modality, {});
  }

  renderMine(now) {
    const me = this.me.sub;
    const all = [...this.rows.values()];
    const todo = all
      .filter((r) => r.reviewer === me && r.state === "ASSIGNED")
      .sort((a, b) => (a.due_at ?? Infinity) - (b.due_at ?? Infinity) || byId(a, b));
    const sent = all
      .filter((r) => r.reviewer === me && (r.state === "ARBITRATION" || r.state === "DONE"))
      .sort((a, b) => b.updated_at - a.updated_at || byId(a, b));
    const feedback = all
      .filter((r) => r.original_reader === me && r.reviewer !== me)
      .sort((a, b) => b.updated_at - a.updated_at || byId(a, b));
    const m = this.mine;
    for (const [id, rows] of [["rv-todo", todo], ["rv-sent", sent], ["rv-feedback", feedback]]) {
      m.querySelector(`#${id}`).hidden = rows.length === 0;
    }
    this.section("rv-todo", todo, (r) => this.rowKey(r), (r) => this.todoCard(r, now));
    this.section("rv-sent", sent, (r) => this.rowKey(r), (r) => this.sentRow(r), DONE_SHOWN);
    this.section("rv-feedback", feedback, (r) => this.rowKey(r), (r) => this.feedbackRow(r), DONE_SHOWN);
    return { todo: todo.length, mine: todo.length + sent.length + feedback.length };
  }

  todoCard(r, now) {
    const li = el("li", "rv-card");
    const head = el("div", "rv-card-head");
    head.append(
      el("span", "exam-id", r.exam_id),
      el("span", "proc", r.procedure),
      el("span", "muted", `${r.site} \u00b7 ${r.modality} \u00b7 ${r.subspecialty}`),
    );
    if (r.due_at) head.append(dueLine(r, now, "span"));
    li.append(head);
    const returned = r.score === "" && !!r.review_comment;
    if (returned) {
      li.append(el("p", "rv-returned", `Returned by the coordinator: score it again. Your comment was \u201c${r.review_comment}\u201d.`));
    }
    const body = el("div", "rv-card-body");
    if (this.tokens.has(r.exam_id)) {
      body.append(this.scoreForm(r, returned, li));
    } else {
      const claim = this.button(r, "Claim", `Claim review ${r.exam_id}`, "act-claim", () =>
        this.request({ type: "review_claim", exam_id: r.exam_id }),
      );
      body.append(claim, el("span", "muted rv-hint", "Claim it to score it: RADPEER 1 to 3b."));
    }
    li.append(body, errorLine(r.exam_id, "p"));
    return li;
  }

  scoreForm(r, returned, card) {
    const id = r.exam_id;
    const form = el("form", "score-form");
    form.noValidate = true;
    form.setAttribute("aria-label", `Score review ${id}`);
    const select = document.createElement("select");
    select.id = `rv-score-${id}`;
    select.dataset.keep = "score";
    select.append(new Option("Choose a score\u2026", ""));
    for (const s of RADPEER) select.append(new Option(`${s} \u00b7 ${RADPEER_LABEL[s]}`, s));
    const scoreLabel = el("label", "", "RADPEER score");
    scoreLabel.htmlFor = select.id;
    const comment = document.createElement("textarea");
    comment.id = `rv-comment-${id}`;
    comment.dataset.keep = "comment";
    comment.maxLength = 2000;
    comment.rows = 3;
    comment.placeholder = "What differs from the report, and why it matters";
    comment.setAttribute("aria-describedby", `rv-err-${id}`);
    if (returned) comment.value = r.review_comment;
    const commentLabel = el("label", "", "Comment");
    commentLabel.htmlFor = comment.id;
    const need = el("span", "need", " (required)");
    commentLabel.append(need);
    const submit = this.button(r, "Submit score", `Submit score for ${id}`, "act-primary", null);
    submit.type = "submit";
    const foot = el("div", "form-foot");
    foot.append(submit, el("span", "muted", "2b, 3a and 3b go to the coordinator's arbitration."));
    const refresh = () => {
      const needed = DISCREPANT.has(select.value);
      need.hidden = !needed;
      comment.required = needed;
      select.removeAttribute("aria-invalid");
      if (!needed || comment.value.trim()) comment.removeAttribute("aria-invalid");
    };
    const touched = () => {
      this.errors.delete(id); // a new try: the last complaint no longer applies
      this.paintErrors();
      refresh();
    };
    select.onchange = touched;
    comment.oninput = touched;
    card.refresh = refresh;
    refresh();
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const score = select.value;
      const text = comment.value.trim();
      if (!score) return this.fail(id, "Choose a RADPEER score.", select);
      if (DISCREPANT.has(score) && !text) {
        return this.fail(id, `A RADPEER ${score} needs a comment: say what was missed and why it matters.`, comment);
      }
      const frame = { type: "review_score", exam_id: id, score, comment: text };
      const token = this.tokens.get(id);
      if (token) frame.token = token; // survives a reconnect, unlike the server's copy
      this.request(frame);
    };
    form.append(scoreLabel, select, commentLabel, comment, foot);
    return form;
  }

  sentRow(r) {
    const tr = document.createElement("tr");
    const final = finalOf(r);
    let outcome;
    if (r.state === "ARBITRATION") outcome = td("Awaiting the coordinator", "rv-state rv-state-ARBITRATION");
    else if (final !== r.score) {
      outcome = td(null, "rv-state rv-state-DONE");
      outcome.append("Done, final score ", scoreBadge(final));
    } else outcome = td("Done", "rv-state rv-state-DONE");
    tr.append(examCell(r), procCell(r), td(r.site), td(r.modality), td(scoreBadge(r.score)), outcome);
    return tr;
  }

  feedbackRow(r) {
    // A reader's view: the outcome and the reviewer's number, never a reviewer's name.
    const tr = document.createElement("tr");
    const done = r.state === "DONE";
    tr.append(
      examCell(r),
      procCell(r),
      td(r.site),
      td(READER_STATE[r.state] || r.state, `rv-state rv-state-${r.state}`),
      td(done ? scoreBadge(finalOf(r)) : el("span", "muted", "pending")),
      td(r.reviewer_id ? `Reviewer #${r.reviewer_id}` : "\u2014"),
      td(done ? r.review_comment || "" : "", "rv-comment"),
    );
    return tr;
  }

  paintErrors() {
    for (const line of document.querySelectorAll("[data-error-for]")) {
      const text = this.errors.get(line.dataset.errorFor) || "";
      if (line.textContent !== text) line.textContent = text;
    }
  }

  tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll("[data-due]")) paintDue(node, now);
    if (this.board && this.overdueCount(now) !== this.overdue) this.render();
  }

  overdueCount(now) {
    let n = 0;
    for (const r of this.rows.values()) if (r.state === "ASSIGNED" && r.due_at && r.due_at < now) n += 1;
    return n;
  }
}

export { DISCREPANT, RADPEER, RADPEER_LABEL } from "./reviewcells.js";
