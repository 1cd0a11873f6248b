// Logging in and out, and keeping the token fresh (the demo login, or a provider's).

import { el } from "./format.js";
import { enter, request } from "./app.js";
import { $, address, app } from "./state.js";

// ---- tokens --------------------------------------------------------------------------

export function scheduleRefresh(expiresAt) {
  clearTimeout(app.refreshTimer);
  const wait = Math.max(5_000, expiresAt - Date.now() - 60_000);
  app.refreshTimer = setTimeout(refreshToken, wait);
}

// Demo mode: a fresh token from the login endpoint, sent in-band so the session (and
// its claims) carries on. Elsewhere the server closes with 4004 and the login returns.
export async function refreshToken() {
  try {
    const fresh = await postLogin(app.session.user.sub);
    app.session = fresh;
    sessionStorage.setItem("session", JSON.stringify(fresh));
    app.socket.send({ type: "auth", id: "reauth", token: fresh.token });
  } catch {
    // Nothing to do: the token runs out and the page returns to the login.
  }
}

export async function postLogin(sub) {
  const resp = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: sub }),
  });
  if (!resp.ok) throw new Error(`login refused (${resp.status})`);
  return resp.json();
}

// ---- login / logout ------------------------------------------------------------------

export async function showLogin() {
  const message = sessionStorage.getItem("loginMessage");
  sessionStorage.removeItem("loginMessage");
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#conn").hidden = true;
  $("#login").hidden = false;
  if (message) $("#login-message").textContent = message;
  let users = [];
  try {
    users = await (await fetch("/api/demo-users")).json();
  } catch {
    $("#login-message").textContent = "The gateway cannot be reached. Reload to try again.";
    return;
  }
  let tenants = [];
  try {
    tenants = await (await fetch("/api/tenants")).json();
  } catch {
    tenants = [];
  }
  const list = $("#users");
  list.replaceChildren();
  if (!users.length) {
    $("#login-message").textContent = "Sign in through your organisation's identity provider.";
    return;
  }
  const byTenant = new Map();
  for (const u of users) {
    if (!byTenant.has(u.tenant)) byTenant.set(u.tenant, []);
    byTenant.get(u.tenant).push(u);
  }
  for (const [tenant, group] of byTenant) {
    const head = el("li", "tenant-head", tenants.find((t) => t.code === tenant)?.name || tenant);
    list.append(head);
    for (const u of group) {
      const li = el("li");
      const b = el("button", "user");
      b.type = "button";
      b.dataset.user = u.sub;
      b.append(el("span", "user-name", u.name), el("span", "title", u.title));
      b.onclick = async () => {
        b.disabled = true;
        try {
          const session = await postLogin(u.sub);
          sessionStorage.setItem("session", JSON.stringify(session));
          sessionStorage.removeItem("held");
          $("#login").hidden = true;
          await enter(session);
        } catch {
          b.disabled = false;
          $("#login-message").textContent = "The login was refused; try again.";
        }
      };
      li.append(b);
      list.append(li);
    }
  }
}

export async function logout() {
  // Give back what this page holds so colleagues can take it at once.
  const waits = [...app.tokens].map(
    (examId) =>
      new Promise((resolve) => {
        const id = request({ type: "release", exam_id: examId }, { background: true });
        if (!id) return resolve();
        const poll = setInterval(() => {
          if (!app.requests.has(id)) {
            clearInterval(poll);
            resolve();
          }
        }, 25);
      }),
  );
  await Promise.race([Promise.all(waits), new Promise((r) => setTimeout(r, 1500))]);
  app.socket?.stop();
  sessionStorage.removeItem("session");
  sessionStorage.removeItem("held");
  location.reload(); // the same address: logging back in lands on the same view
}

export function endSession(code) {
  app.socket?.stop();
  sessionStorage.removeItem("session");
  sessionStorage.removeItem("held");
  const why =
    code === 4004
      ? "Your session expired. Log in again."
      : code === 1008
        ? "This page's origin is not allowed to connect."
        : "Please log in again.";
  sessionStorage.setItem("loginMessage", why);
  location.reload(); // the same address: logging back in lands on the same view
}

