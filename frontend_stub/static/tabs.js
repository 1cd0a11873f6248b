// The tabs (Worklist, My reviews, Peer review) and the peer-review desk's wiring.

import { notify } from "./notice.js";
import { ReviewDesk } from "./reviews.js";
import { request } from "./app.js";
import { $, TAB_PATH, address, app } from "./state.js";

// ---- peer review and tabs -------------------------------------------------------------

export function setUpReviews(user, tenantSites) {
  const coordinator = user.roles.includes("coordinator") || user.roles.includes("admin");
  const reader = user.roles.includes("radiologist");
  // What is not this user's is not on the page at all.
  if (!coordinator) for (const node of [$("#board-view"), $("#tab-board")]) node.remove();
  if (!reader) for (const node of [$("#mine-view"), $("#tab-mine")]) node.remove();
  app.reviews = new ReviewDesk({
    me: user,
    board: coordinator ? $("#board-view") : null,
    mine: reader ? $("#mine-view") : null,
    sites: tenantSites,
    send: (frame, meta) => request(frame, { ...meta, review: true, background: true }),
    notify,
    onChange: updateTabs,
  });
  if (coordinator) loadRadiologists(user);

  const wanted = Object.keys(TAB_PATH).find((t) => TAB_PATH[t] === location.pathname);
  if (coordinator) $("#tab-board").hidden = false;
  for (const name of Object.keys(TAB_PATH)) {
    const tab = $(`#tab-${name}`);
    if (!tab) continue;
    tab.onclick = () => showTab(name);
    tab.onkeydown = onTabKey;
  }
  if (wanted === "board" && coordinator) showTab("board");
  else if (wanted === "mine" && reader) app.wantTab = "mine"; // once its reviews are in
  updateTabs({ loaded: false, todo: 0, mine: 0, arbitration: 0 });
}

/** The reviewer choices: the tenant's radiologists (the server has the last word). */
export async function loadRadiologists(user) {
  try {
    const headers = { Authorization: `Bearer ${app.session.token}` };
    const users = await (await fetch("/api/people", { headers })).json();
    app.reviews.setRadiologists(
      users.filter((u) => u.tenant === user.tenant && u.roles.includes("radiologist")),
    );
  } catch {
    // Without the list, "Suggest" still assigns (the server picks).
  }
}

export function updateTabs(summary) {
  const mineTab = $("#tab-mine");
  const hasMine = !!mineTab && summary.mine > 0;
  if (mineTab) mineTab.hidden = !hasMine;
  badge($("#mine-badge"), summary.todo, `${summary.todo} to review`);
  badge($("#board-badge"), summary.arbitration, `${summary.arbitration} awaiting arbitration`);
  $("#tabs").hidden = [...$("#tabs").children].filter((t) => !t.hidden).length < 2;
  if (summary.loaded && app.wantTab) {
    const want = app.wantTab;
    app.wantTab = null;
    if (want === "mine" && hasMine) showTab("mine");
    else history.replaceState(null, "", address());
  }
  if (app.tab === "mine" && !hasMine && summary.loaded) showTab("worklist");
}

export function badge(node, n, title) {
  if (!node) return;
  node.hidden = !n;
  node.textContent = String(n);
  node.title = title;
  node.classList.toggle("hot", n > 0);
}

export function showTab(name) {
  app.tab = name;
  for (const t of Object.keys(TAB_PATH)) {
    const tab = $(`#tab-${t}`);
    if (!tab) continue;
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#${t}-view`).hidden = !on;
  }
  if (app.filters) history.replaceState(null, "", address());
}

/** Arrow keys move between tabs (the WAI-ARIA tabs pattern). */
export function onTabKey(ev) {
  const tabs = [...$("#tabs").querySelectorAll('[role="tab"]:not([hidden])')];
  const at = tabs.indexOf(ev.currentTarget);
  const step = { ArrowRight: 1, ArrowLeft: -1 }[ev.key];
  let next = null;
  if (step) next = tabs[(at + step + tabs.length) % tabs.length];
  else if (ev.key === "Home") next = tabs[0];
  else if (ev.key === "End") next = tabs[tabs.length - 1];
  if (!next) return;
  ev.preventDefault();
  next.focus();
  next.click();
}

