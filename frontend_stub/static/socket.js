// One WebSocket that comes back by itself: exponential backoff with jitter, a heartbeat
// that notices a half-open connection, and the browser's online/offline events.
// What to send after a reconnect (auth, resume) is the caller's business: `onOpen`.

const BASE_MS = 500;
const CAP_MS = 5000;
const PING_AFTER_MS = 20000; // quiet this long: ask the server for a pong
const DEAD_AFTER_MS = 35000; // quiet this long: the connection is gone, reconnect

// Close codes after which reconnecting cannot help (gateway/protocol.py CloseCode).
const FATAL = new Set([1008, 4003, 4004]);

export class LiveSocket {
  /**
   * @param {string} url
   * @param {{onFrame: Function, onDown: Function, onFatal: Function}} handlers
   *   onFrame(frame) per parsed frame (batches are unpacked);
   *   onDown(code, attempt) when a connection ended and a retry is scheduled;
   *   onFatal(code) when it ended for good (log in again, or refused by policy).
   */
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers;
    this.ws = null;
    this.attempt = 0;
    this.backoff = BASE_MS;
    this.timer = null;
    this.stopped = false;
    this.lastSeen = Date.now();
    this.pingSeq = 0;
    this.beat = setInterval(() => this._heartbeat(), 5000);
    this._online = () => this.reconnectNow();
    this._offline = () => this.drop(4000, "browser offline");
    window.addEventListener("online", this._online);
    window.addEventListener("offline", this._offline);
  }

  start() {
    this._open();
  }

  /** The session is healthy again (it got its worklist): the next retry starts fast. */
  healthy() {
    this.attempt = 0;
    this.backoff = BASE_MS;
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  /** End the current connection (it will be retried). */
  drop(code = 4000, reason = "") {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    this._down(ws, code);
    try {
      ws.close(code, reason);
    } catch {
      ws.close();
    }
  }

  reconnectNow() {
    if (this.stopped || this.open) return;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) return; // a connection attempt is already under way
    this._open();
  }

  /** Close for good (log out). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.beat);
    window.removeEventListener("online", this._online);
    window.removeEventListener("offline", this._offline);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "bye");
  }

  _open() {
    if (this.stopped) return;
    const ws = new WebSocket(this.url, "ris.v1");
    this.ws = ws;
    this.lastSeen = Date.now();
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastSeen = Date.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === "batch") frame.frames.forEach((f) => this.h.onFrame(f));
      else this.h.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return; // dropped on purpose; already handled
      this.ws = null;
      this._down(ws, ev.code);
    };
  }

  _down(ws, code) {
    if (this.stopped) return;
    if (FATAL.has(code)) {
      this.stopped = true;
      this.h.onFatal(code);
      return;
    }
    this.attempt += 1;
    // Exponential backoff with jitter: somewhere in the upper half of the current step,
    // so a restarted gateway is not hit by every browser in the same instant.
    const delay = this.backoff / 2 + Math.random() * (this.backoff / 2);
    this.backoff = Math.min(this.backoff * 2, CAP_MS);
    this.h.onDown(code, this.attempt);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.ws) this._open();
    }, delay);
  }

  _heartbeat() {
    if (!this.open) return;
    const quiet = Date.now() - this.lastSeen;
    if (quiet > DEAD_AFTER_MS) this.drop(4000, "no answer");
    else if (quiet > PING_AFTER_MS) this.send({ type: "ping", id: `hb-${++this.pingSeq}` });
  }
}
