// Non-blocking messages: a stack of toasts in #notice (an aria-live region), each
// dismissable, each fading on its own. Nothing here ever steals focus.

import { el } from "./format.js";

const MAX = 4;

export function notify(text, kind = "info", timeoutMs = 9000) {
  const box = document.getElementById("notice");
  const item = el("div", `toast toast-${kind}`);
  item.append(el("span", "toast-text", text));
  const close = el("button", "toast-close", "\u00d7");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss message");
  close.onclick = () => item.remove();
  item.append(close);
  box.append(item);
  while (box.children.length > MAX) box.firstElementChild.remove();
  if (timeoutMs > 0) setTimeout(() => item.remove(), timeoutMs);
  return item;
}
