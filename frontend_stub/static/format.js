// Small, pure helpers shared by the page's modules: domain constants, clocks, names.

export const PRIORITIES = ["STAT", "URGENT", "ROUTINE"];
export const PRIORITY_RANK = { STAT: 0, URGENT: 1, ROUTINE: 2 };
export const MODALITIES = ["CT", "MR", "XR", "US", "NM", "MG"];
// Workflow order (gateway: dynamo/states.py); also the order the Status column sorts in.
export const STATUSES = [
  "SCHEDULED", "ARRIVED", "IN_PROGRESS", "COMPLETED", "PRELIMINARY", "FINAL", "AMENDED", "CANCELLED",
];
export const STATUS_LABEL = {
  SCHEDULED: "Scheduled",
  ARRIVED: "Arrived",
  IN_PROGRESS: "Scanning",
  COMPLETED: "Completed",
  PRELIMINARY: "Preliminary",
  FINAL: "Final",
  AMENDED: "Amended",
  CANCELLED: "Cancelled",
};
// An exam can be claimed for reading in these states only.
export const CLAIMABLE = new Set(["COMPLETED", "PRELIMINARY"]);

/** "1h 05m" above an hour, "4m 09s" below it; negative values get a minus sign. */
export function clock(ms) {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  const text = h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return neg ? `\u2212${text}` : text;
}

/** HL7 "FAMILY^GIVEN" as "FAMILY, GIVEN". */
export function patientName(hl7) {
  const [family, given] = String(hl7 || "").split("^");
  return given ? `${family}, ${given}` : family;
}

export function timeOfDay(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const SVG = "http://www.w3.org/2000/svg";

/** A small padlock (closed, or open for a lapsed lease), drawn inline: no icon font. */
export function lockIcon(open = false) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "12");
  svg.setAttribute("height", "12");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("lock");
  const body = document.createElementNS(SVG, "rect");
  for (const [k, v] of Object.entries({ x: 3, y: 7, width: 10, height: 8, rx: 1.5 })) body.setAttribute(k, v);
  const shackle = document.createElementNS(SVG, "path");
  shackle.setAttribute("d", open ? "M5 7V4.5a3 3 0 0 1 5.8-1" : "M5 7V4.5a3 3 0 0 1 6 0V7");
  shackle.setAttribute("fill", "none");
  shackle.setAttribute("stroke", "currentColor");
  shackle.setAttribute("stroke-width", "1.6");
  body.setAttribute("fill", "currentColor");
  svg.append(shackle, body);
  return svg;
}

/** An element with a class and text, the page's most common building block. */
export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

/** "Tue 14:05": a deadline a few days away, in the reader's own clock. */
export function dayTime(ms) {
  return new Date(ms).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
}

/** How far a deadline is: "in 2d 23h", "in 4h 10m", "in 3m"; past it, "5m overdue". */
export function dueIn(ms, now) {
  const left = ms - now;
  let m = Math.floor(Math.abs(left) / 60_000);
  const d = Math.floor(m / 1440);
  m -= d * 1440;
  const h = Math.floor(m / 60);
  m -= h * 60;
  const text = d ? `${d}d ${h}h` : h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m`;
  return left < 0 ? `${text} overdue` : `in ${text}`;
}
