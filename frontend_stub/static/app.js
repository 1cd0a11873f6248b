// The browser worklist: log in, one WebSocket, one subscription whose view is the
// filter bar, claims, presence. Protocol: gateway/protocol.py (docs/protocol.md).
//
// Resume: the last (epoch, offset) seen on the subscription is kept; after a reconnect
// the page subscribes `since` it and gets `resumed` + the missed deltas, or a snapshot
// flagged `reset`. The exams this page held are claimed again on every new connection
// (the server forgets a connection's claim tokens when it goes), which renews them.
//
// Peer review (reviews.js) rides the same connection: `review_list` after every new
// connection loads the reviews this user may see, and `review` frames keep them live.
// Tabs: Worklist, My reviews (radiologists, shown once they have any), Peer review
// (coordinators); each tab has its own address (/worklist, /my-reviews, /peer-review).

import { el } from "./format.js";
import { fillForm, parseQuery, readChecks, toQuery, toView, viewKey } from "./filters.js";
import { notify } from "./notice.js";
import { PresencePanel } from "./presence.js";
import { ReviewDesk } from "./reviews.js";
import { LiveSocket } from "./socket.js";
import { Worklist, leaseLive } from "./worklist.js";
import { WorkloadPanel } from "./workload.js";

import { $, SUB, address, app } from "./state.js";
import { endSession, logout, refreshToken, scheduleRefresh, showLogin } from "./session.js";
import { setUpReviews } from "./tabs.js";

function setConn(state, text) {
  const c = $("#conn");
  c.dataset.state = state;
  c.textContent = text;
  clearTimeout(app.liveTimer);
  document.body.dataset.conn = state;
  const offline = state === "reconnecting" || state === "connecting" || state === "offline";
  app.list?.setOffline(offline);
  app.reviews?.setOffline(offline);
  if (state === "resynced") app.liveTimer = setTimeout(() => setConn("live", "Live"), 4000);
}

// ---- requests ------------------------------------------------------------------------

export function request(frame, meta = {}) {
  const id = `${frame.type}-${++app.seq}`;
  if (!app.socket.send({ ...frame, id })) {
    notify("Not connected: try again once the indicator shows live.", "warn");
    return null;
  }
  app.requests.set(id, { action: frame.type, examId: frame.exam_id, ...meta });
  if (frame.exam_id && !meta.background) app.list.setBusy(frame.exam_id, true);
  return id;
}

function settle(id) {
  const req = app.requests.get(id);
  if (!req) return null;
  app.requests.delete(id);
  if (req.examId && !req.background) app.list.setBusy(req.examId, false);
  return req;
}

function saveHeld() {
  sessionStorage.setItem("held", JSON.stringify([...app.held]));
}

function forget(examId) {
  app.tokens.delete(examId);
  if (app.held.delete(examId)) saveHeld();
}

function onAction(action, row) {
  const id = row.exam_id;
  if (action === "claim") {
    request({ type: "claim", exam_id: id });
  } else if (action === "break") {
    askBreakLock(row);
  } else {
    const frame =
      action === "release"
        ? { type: "release", exam_id: id }
        : { type: "sign", exam_id: id, status: action === "final" ? "FINAL" : "PRELIMINARY" };
    if (app.tokens.has(id)) request(frame);
    // The claim is ours but this connection has no token for it (another tab, or a
    // reconnect whose re-claim is still on its way): claim again here, then act.
    else request({ type: "claim", exam_id: id }, { then: frame });
  }
}

// "Next case": the server picks the best case this reader may read and claims it for
// them; the reply is an ordinary `claimed`, plus `decision` (why this case).
function nextCase() {
  const button = $("#next-case");
  if (request({ type: "next" }, { next: true })) button.disabled = true;
}

// ---- STAT offers: one reader at a time, with a countdown ---------------------------------

function showOffer(f) {
  app.offer = { examId: f.exam_id, expiresAt: f.expires_at };
  const r = f.row;
  $("#offer-what").textContent = `${f.exam_id} \u00b7 ${r.procedure} \u00b7 ${r.site}`;
  $("#offer").hidden = false;
  $("#offer-accept").disabled = $("#offer-decline").disabled = false;
  $("#offer-accept").onclick = () => answerOffer("offer_accept");
  $("#offer-decline").onclick = () => answerOffer("offer_decline");
  clearInterval(app.offerTimer);
  const tick = () => {
    const left = Math.max(0, Math.ceil((app.offer.expiresAt - Date.now()) / 1000));
    $("#offer-clock").textContent = `${left}s`;
  };
  tick();
  app.offerTimer = setInterval(tick, 250);
  announce(`STAT ${f.exam_id} offered to you.`);
}

function hideOffer(examId) {
  if (!app.offer || (examId && app.offer.examId !== examId)) return false;
  clearInterval(app.offerTimer);
  app.offer = null;
  $("#offer").hidden = true;
  return true;
}

function answerOffer(type) {
  if (!app.offer) return;
  if (request({ type, exam_id: app.offer.examId }, { offer: true })) {
    $("#offer-accept").disabled = $("#offer-decline").disabled = true;
  }
}

const ENDED = { lapsed: "lapsed: it went to the next reader", taken: "was taken or left the list" };

const RULES = {
  "same-patient": "another study of a patient you hold",
  "most-urgent": "the most urgent case you may read",
};

function askBreakLock(row) {
  const dialog = $("#break-dialog");
  $("#break-what").textContent = `${row.exam_id} (${row.procedure}) is held by ${row.claimed_by_name}. They will be told.`;
  const input = $("#break-reason");
  input.value = "";
  dialog.onclose = () => {
    if (dialog.returnValue === "ok" && input.value.trim()) {
      request({ type: "break_lock", exam_id: row.exam_id, reason: input.value.trim() });
    }
  };
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
}

// ---- subscription --------------------------------------------------------------------

function subscribe({ resume }) {
  const key = viewKey(app.filters);
  const frame = { type: "subscribe", id: SUB, view: toView(app.filters), limit: 500 };
  if (resume && app.position && app.position.key === key) {
    frame.since = { epoch: app.position.epoch, offset: app.position.offset };
  }
  if (app.socket.send(frame)) {
    app.inflight.push(key);
    app.subscribedKey = key;
  }
}

function onFiltersChanged() {
  const f = readChecks($("#filters"));
  app.filters = { ...app.filters, ...f };
  history.replaceState(null, "", address());
  $("#clear-filters").hidden = !hasFilters();
  subscribe({ resume: false });
}

function hasFilters() {
  const f = app.filters;
  return !!(f.site.length || f.modality.length || f.priority.length || f.status.length || f.mine);
}

function clearFilters() {
  app.filters = { ...app.filters, site: [], modality: [], priority: [], status: [], mine: false };
  fillForm($("#filters"), app.filters, app.sites);
  onFiltersChanged();
}

// ---- frames --------------------------------------------------------------------------

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      app.socket.send({ type: "auth", id: "auth", token: app.session.token });
      break;
    case "authenticated":
      onAuthenticated(f);
      break;
    case "snapshot":
      onSnapshot(f);
      break;
    case "resumed":
      app.inflight.shift();
      app.position = { epoch: f.epoch, offset: f.offset };
      caughtUp(`Resumed: ${f.missed} missed change${f.missed === 1 ? "" : "s"}`);
      break;
    case "delta":
      onDelta(f);
      break;
    case "patch":
      onPatch(f);
      break;
    case "row":
      settle(f.id);
      if (f.sub === SUB) app.list.applyRow(f.exam_id, f.row);
      break;
    case "resync":
      app.resyncing = true;
      setConn("reconnecting", "Resyncing\u2026");
      break;
    case "claimed":
      onClaimed(f);
      break;
    case "offer":
      showOffer(f);
      break;
    case "offer_ended":
      if (f.id) {
        settle(f.id);
        hideOffer(f.exam_id);
        announce(`You passed STAT ${f.exam_id} on.`);
      } else if (hideOffer(f.exam_id) && !app.held.has(f.exam_id)) {
        notify(`The STAT offer of ${f.exam_id} ${ENDED[f.reason] || "ended"}.`, "info");
      }
      break;
    case "board":
      if (f.id) settle(f.id);
      app.workload?.render(f);
      break;
    case "reassigned":
      settle(f.id);
      announce(`${f.exam_id} reassigned${f.previous_holder ? ` from ${f.previous_holder}` : ""}.`);
      break;
    case "assigned":
      app.tokens.add(f.exam_id);
      app.held.add(f.exam_id);
      saveHeld();
      app.list.patch(f.exam_id, f.version, {
        claimed_by: app.user.sub,
        claimed_by_name: app.user.name,
        lease_expires_at: f.lease_expires_at,
      });
      notify(`${f.by} assigned ${f.exam_id} to you.`, "info", 0);
      break;
    case "alert":
      notify(`${f.message}: ${f.exam_id} (${f.row.modality} ${f.row.procedure}, ${f.row.site}).`, "warn", 0);
      announce(`Alert: ${f.message} (${f.exam_id}).`);
      break;
    case "released": {
      settle(f.id);
      forget(f.exam_id);
      app.list.patch(f.exam_id, f.version, { claimed_by: null, claimed_by_name: null, lease_expires_at: null });
      break;
    }
    case "signed": {
      settle(f.id);
      if (f.status === "FINAL" || f.status === "AMENDED") forget(f.exam_id);
      announce(`${f.exam_id} signed ${f.status.toLowerCase()}.`);
      break;
    }
    case "lock_broken": {
      settle(f.id);
      notify(`Lock on ${f.exam_id} broken${f.previous_holder ? ` (was ${f.previous_holder})` : ""}.`, "info");
      break;
    }
    case "claim_lost":
      forget(f.exam_id);
      if (f.reason === "broken") {
        notify(
          `${f.by || "An administrator"} broke your claim on ${f.exam_id}${f.message ? `: \u201c${f.message}\u201d` : "."}`,
          "warn",
          0,
        );
      } else if (f.reason === "reassigned") {
        notify(`${f.by || "A coordinator"} reassigned ${f.exam_id}${f.message ? `: \u201c${f.message}\u201d` : "."}`, "warn", 0);
      } else {
        notify(`Your claim on ${f.exam_id} expired; it is back on the list.`, "warn", 0);
      }
      break;
    case "presence_state":
      app.presence.replace(f.users);
      break;
    case "presence_diff":
      app.presence.patch(f.joins, f.leaves);
      break;
    case "reviews":
      settle(f.id);
      app.reviews.replace(f.reviews);
      break;
    case "review":
      app.reviews.apply(f.review);
      break;
    case "review_ok": {
      const req = settle(f.id);
      if (req) app.reviews.onOk(f, req);
      break;
    }
    case "error":
      onError(f);
      break;
    default:
      break; // pong, unsubscribed: nothing to do
  }
}

function onAuthenticated(f) {
  app.user = f.user;
  scheduleRefresh(f.expires_at);
  if (f.id !== "auth") return; // a refreshed token: the session carries on as it was
  app.tokens.clear();
  app.inflight = [];
  subscribe({ resume: true });
  app.reviews.load();
  if (app.workload) request({ type: "board" }, { background: true });
  // Keep what this page was reading: a new connection has none of the old one's
  // claim tokens, and a claim by the same user renews it.
  for (const examId of app.held) request({ type: "claim", exam_id: examId }, { reclaim: true, background: true });
}

function onSnapshot(f) {
  // The view this snapshot answers: a server-side resync re-sends the current one.
  let key = app.subscribedKey;
  const resync = app.resyncing;
  if (resync) app.resyncing = false;
  else key = app.inflight.shift() ?? key;
  app.list.replace(f.rows, f.total);
  app.position = { epoch: f.epoch, offset: f.offset, key };
  if (app.inflight.length) return; // a newer view is on its way
  if (f.reset) caughtUp(resync ? "Worklist reloaded" : "Worklist reloaded (the missed history was too long)");
  else if (!app.everLive) {
    app.everLive = true;
    app.socket.healthy();
    setConn("live", "Live");
  } else if ($("#conn").dataset.state !== "live") caughtUp("Worklist reloaded");
}

function caughtUp(text) {
  app.everLive = true;
  app.socket.healthy();
  setConn("resynced", "Resynced");
  announce(text);
}

function onDelta(f) {
  if (f.sub !== SUB) return;
  if (app.position && f.epoch === app.position.epoch) app.position.offset = f.offset;
  afterChange(app.list.apply(f), f.leave);
}

function onPatch(f) {
  if (f.sub !== SUB) return;
  if (app.position && f.epoch === app.position.epoch) app.position.offset = f.offset;
  const row = app.list.applyPatch(f);
  if (row === "ask") {
    request({ type: "row", sub: SUB, exam_id: f.exam_id }, { background: true });
    return;
  }
  afterChange(row, false);
}

function afterChange(row, leave) {
  if (!row || !app.held.has(row.exam_id)) return;
  // Someone else holds it now (a broken lock, then a new claim), or it was reported.
  const now = Date.now();
  // A leave of a held exam from this (open-states) view means it is no longer readable.
  if ((leaseLive(row, now) && row.claimed_by !== app.user.sub) || leave) {
    forget(row.exam_id);
  }
}

function onClaimed(f) {
  const req = settle(f.id);
  if (req?.offer) {
    hideOffer(f.exam_id);
    announce(`You accepted STAT ${f.exam_id}.`);
  }
  if (req?.next) {
    $("#next-case").disabled = false;
    const why = RULES[f.decision?.rule] || "the next case";
    announce(`Next case: ${f.exam_id} (${why}).`);
    notify(`Next case: ${f.exam_id}, claimed for you (${why}).`, "info");
    $("#worklist").querySelector(`tr[data-exam-id="${CSS.escape(f.exam_id)}"]`)?.scrollIntoView({ block: "nearest" });
  }
  app.tokens.add(f.exam_id);
  app.held.add(f.exam_id);
  saveHeld();
  const me = app.user;
  app.list.patch(f.exam_id, f.version, {
    claimed_by: me.sub,
    claimed_by_name: me.name,
    lease_expires_at: f.lease_expires_at,
  });
  if (req?.then) request(req.then);
  else if (req && !req.reclaim && !req.next && !req.offer) announce(`You claimed ${f.exam_id}.`);
}

function onError(f) {
  const req = f.id ? settle(f.id) : null;
  const examId = req?.examId;
  if (f.id === SUB) {
    app.inflight.shift();
    if (f.code === "forbidden") {
      notify(`That view is not yours (${f.message}); showing your whole worklist.`, "warn");
      clearFilters();
    } else if (f.code === "internal" || f.code === "unavailable" || f.code === "rate_limited") {
      setTimeout(() => subscribe({ resume: true }), 1500);
    }
    return;
  }
  if (req?.review) {
    if (f.code === "token_expired") refreshToken();
    app.reviews.onError(f, req);
    return;
  }
  if (f.code === "token_expired") {
    refreshToken();
    return;
  }
  if (!req) {
    if (f.code !== "rate_limited") console.warn("gateway:", f.code, f.message);
    return;
  }
  if (req.next) $("#next-case").disabled = false;
  switch (f.code) {
    case "offer_gone":
      hideOffer(examId);
      notify(`The STAT offer of ${examId} is no longer yours.`, "warn");
      break;
    case "nothing_eligible":
      notify("Nothing is waiting that you may read. The list updates live.", "info");
      announce("No case waiting for you.");
      break;
    case "at_cap": {
      const max = f.detail?.max_open_claims;
      notify(`You hold ${max ? `the maximum of ${max}` : "too many"} open cases: sign or release one first.`, "warn");
      break;
    }
    case "assignment_only":
      notify("Cases are handed out here: press Next case.", "warn");
      break;
    case "conflict": {
      const holder = f.detail?.holder?.name || "Someone else";
      if (req.reclaim) {
        forget(examId);
        notify(`${holder} has ${examId} now: your claim lapsed while you were disconnected.`, "warn", 0);
      } else notify(`${holder} claimed ${examId} first.`, "warn");
      break;
    }
    case "stale_token":
      forget(examId);
      notify(`Your claim on ${examId} is no longer valid (it expired or was broken).`, "warn");
      break;
    case "invalid_transition":
      if (req.reclaim) forget(examId);
      else notify(`${examId} cannot be ${verb(req.action)} now${f.detail?.current ? ` (it is ${f.detail.current})` : ""}.`, "warn");
      break;
    case "not_found":
      forget(examId);
      if (!req.reclaim) notify(`${examId} is no longer on your worklist.`, "warn");
      break;
    case "forbidden":
      notify(f.message, "warn");
      break;
    case "rate_limited":
      notify("Too many requests: wait a moment and try again.", "warn");
      break;
    default:
      notify(`Could not ${req.action.replace("_", " ")} ${examId || ""}: ${f.message}. Try again.`, "warn");
  }
}

function verb(action) {
  return { claim: "claimed", release: "released", sign: "signed", break_lock: "unlocked" }[action] || action;
}

function announce(text) {
  $("#status-text").textContent = text;
}

// ---- start ---------------------------------------------------------------------------

export async function enter(session) {
  app.session = session;
  const user = session.user;
  app.user = user;
  const readOnly = !user.roles.includes("radiologist") && !user.roles.includes("admin");
  $("#who").textContent = user.name;
  $("#role").textContent = user.roles.join(" \u00b7 ");
  $("#logout").hidden = false;
  // The audit's reports are for coordinators and admins (the server checks it too).
  $("#reports-link").hidden = !user.roles.some((r) => r === "coordinator" || r === "admin");
  $("#admin-link").hidden = !user.roles.includes("admin"); // the group's people
  $("#conn").hidden = false;
  $("#app").hidden = false;
  $("#readonly-note").hidden = !readOnly;
  $("#f-mine-label").hidden = readOnly;
  $("#next-case").hidden = readOnly;
  const coordinates = user.roles.some((r) => r === "coordinator" || r === "admin");
  app.workload = coordinates
    ? new WorkloadPanel($("#workload"), (examId, to) => request({ type: "reassign", exam_id: examId, to }))
    : null;
  $("#next-case").onclick = nextCase;
  document.body.classList.toggle("coordinator", readOnly);
  $("#users").replaceChildren(); // the login list names everyone: not kept behind the app

  let tenants = [];
  try {
    tenants = await (await fetch("/api/tenants")).json();
  } catch {
    tenants = [];
  }
  const tenant = tenants.find((t) => t.code === user.tenant);
  $("#tenant").textContent = tenant ? tenant.name : user.tenant;
  app.sites = (tenant?.sites || []).filter((s) => !user.sites.length || user.sites.includes(s.code));
  setUpReviews(user, tenant?.sites || []);

  // The address is the view: a deep link or an old bookmark lands on what it names,
  // less anything this user may not use.
  app.filters = parseQuery(location.search, app.sites.map((s) => s.code));
  if (readOnly) app.filters.mine = false;
  history.replaceState(null, "", address());
  const form = $("#filters");
  fillForm(form, app.filters, app.sites);
  form.onchange = onFiltersChanged;
  form.onsubmit = (ev) => ev.preventDefault();
  $("#clear-filters").onclick = clearFilters;
  $("#clear-filters").hidden = !hasFilters();
  $("#empty-clear").onclick = clearFilters;

  app.held = new Set(JSON.parse(sessionStorage.getItem("held") || "[]"));
  app.list = new Worklist({
    table: $("#worklist"),
    scroller: $("#table-wrap"),
    me: user,
    readOnly,
    isAdmin: user.roles.includes("admin"),
    onAction,
    onSort: (sort) => {
      app.filters = { ...app.filters, sort: sort.key, dir: sort.dir };
      history.replaceState(null, "", address());
    },
    onRendered: (shown, total) => {
      $("#empty").hidden = shown > 0;
      $("#empty-clear").hidden = !hasFilters();
      $("#count").textContent =
        total > shown ? `${shown} of ${total} exams (most urgent)` : `${shown} exam${shown === 1 ? "" : "s"}`;
    },
  });
  app.list.setSort(app.filters.sort, app.filters.dir);
  app.presence = new PresencePanel($("#people"), $("#online-count"), user.sub, (examId) => {
    const r = app.list.rows.get(examId);
    return r ? `${r.modality} ${r.body_part.toLowerCase()}` : "";
  });

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  app.socket = new LiveSocket(`${scheme}://${location.host}/ws`, {
    onFrame,
    onDown: (code, attempt) => {
      app.tokens.clear();
      $("#next-case").disabled = false;
      hideOffer(null); // an offer outlives a drop on the server, but its answer must wait
      // 4005: what this person may see changed; a resume would keep rows now out of
      // scope, so the next subscribe asks for a fresh snapshot.
      if (code === 4005) app.position = null;
      for (const id of [...app.requests.keys()]) settle(id);
      setConn("reconnecting", attempt > 1 ? `Reconnecting\u2026 (try ${attempt})` : "Reconnecting\u2026");
      announce(code === 1012 ? "The gateway is restarting; reconnecting." : "Connection lost; reconnecting.");
    },
    onFatal: endSession,
  });
  setConn("connecting", "Connecting\u2026");
  app.socket.start();
}

function initTheme() {
  const button = $("#theme");
  const apply = (theme) => {
    document.documentElement.dataset.theme = theme;
    button.setAttribute("aria-pressed", String(theme === "light"));
  };
  apply(localStorage.getItem("theme") || "dark");
  button.onclick = () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("theme", next);
    apply(next);
  };
}

function start() {
  initTheme();
  $("#logout").onclick = logout;
  const saved = sessionStorage.getItem("session");
  let session = null;
  try {
    session = saved && JSON.parse(saved);
  } catch {
    session = null;
  }
  if (session?.token && session.user) enter(session);
  else showLogin();
}

start();
