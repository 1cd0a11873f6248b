// The audit's reports (GET /api/reports/{name}), for coordinators and admins: the
// session is the worklist page's (sessionStorage, this tab), sent as a bearer token; the
// server scopes every figure to the token's tenant.

const $ = (sel) => document.querySelector(sel);

function session() {
  try {
    return JSON.parse(sessionStorage.getItem("session") || "null");
  } catch {
    return null;
  }
}

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

function say(text) {
  $("#report-message").textContent = text;
}

async function fetchReport(format) {
  const s = session();
  if (!s) {
    say("Log in on the worklist first.");
    return null;
  }
  const name = $("#report-name").value;
  const query = new URLSearchParams({ from: $("#report-from").value, to: $("#report-to").value });
  if (format) query.set("format", format);
  const resp = await fetch(`/api/reports/${name}?${query}`, {
    headers: { Authorization: `Bearer ${s.token}` },
  });
  if (!resp.ok) {
    let message = `The report failed (${resp.status}).`;
    try {
      const error = (await resp.json()).error;
      message = error.reason || error.message || message;
    } catch {
      // not JSON: keep the status
    }
    say(message);
    return null;
  }
  say("");
  return resp;
}

function render(body) {
  const rows = body.rows || [];
  const columns = rows.length ? Object.keys(rows[0]) : [];
  const head = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c.replaceAll("_", " ");
    head.append(th);
  }
  $("#report-table thead").replaceChildren(head);
  const out = rows.map((r) => {
    const tr = document.createElement("tr");
    for (const c of columns) {
      const td = document.createElement("td");
      td.textContent = r[c] === null || r[c] === undefined ? "" : String(r[c]);
      tr.append(td);
    }
    return tr;
  });
  $("#report-table tbody").replaceChildren(...out);
  $("#report-caption").textContent =
    `${rows.length} row${rows.length === 1 ? "" : "s"} · ${body.tenant} · days in ${body.time_zone}`;
}

async function show(event) {
  event?.preventDefault();
  const resp = await fetchReport(null);
  if (resp) render(await resp.json());
}

async function download() {
  const resp = await fetchReport("csv");
  if (!resp) return;
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${$("#report-name").value}-${$("#report-from").value}-${$("#report-to").value}.csv`;
  a.click();
  URL.revokeObjectURL(url);
}

const s = session();
$("#tenant").textContent = s ? s.user.tenant : "";
const today = new Date();
$("#report-to").value = isoDay(today);
$("#report-from").value = isoDay(new Date(today.getTime() - 6 * 86_400_000));
$("#report-form").addEventListener("submit", show);
$("#report-csv").addEventListener("click", download);
if (!s) say("Log in on the worklist first.");
