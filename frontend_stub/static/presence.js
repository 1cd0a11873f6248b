// Who is online in the tenant and what each is reading (presence_state replaces the
// list, presence_diff patches it), shown in the side panel.

import { el } from "./format.js";

export class PresencePanel {
  constructor(list, count, me, describe) {
    this.list = list; // <ul>
    this.count = count; // <span> in the heading
    this.me = me; // my sub
    this.describe = describe; // exam_id -> short text, or "" when not in my view
    this.users = new Map();
  }

  replace(users) {
    this.users = new Map(users.map((u) => [u.sub, u]));
    this.render();
  }

  patch(joins, leaves) {
    for (const sub of leaves) this.users.delete(sub);
    for (const u of joins) this.users.set(u.sub, u);
    this.render();
  }

  clear() {
    this.users.clear();
    this.render();
  }

  render() {
    const users = [...this.users.values()].sort(
      (a, b) => (b.sub === this.me) - (a.sub === this.me) || a.name.localeCompare(b.name),
    );
    const items = users.map((u) => {
      const li = el("li", "person");
      li.dataset.user = u.sub;
      const line = el("div", "person-line");
      line.append(el("span", "dot"), el("span", "person-name", u.name));
      if (u.sub === this.me) line.append(el("span", "muted", " (you)"));
      li.append(line);
      const roles = u.roles.filter((r) => r !== "radiologist").join(", ");
      if (roles) li.append(el("div", "person-roles", roles));
      if (u.reading.length) {
        const reading = el("ul", "reading");
        reading.setAttribute("aria-label", `${u.name} is reading`);
        for (const id of u.reading) {
          const item = el("li", "", "");
          item.append(el("span", "exam-id", id));
          const what = this.describe(id);
          if (what) item.append(el("span", "muted", ` ${what}`));
          reading.append(item);
        }
        li.append(reading);
      } else {
        li.append(el("div", "idle muted", "browsing"));
      }
      return li;
    });
    this.list.replaceChildren(...items);
    this.count.textContent = String(users.length);
  }
}
