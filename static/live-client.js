// CatLog Live – the WebSocket client the page uses. An ES module, no build step.
//
// It connects, reconnects with exponential backoff and full jitter, and
// resumes each new connection with /ws?lastId=<the last update it applied>,
// so whichever server answers replays what was missed from the history.
// Its resume point moves only with updates it applied, never with a
// snapshot's lastId, unless it took that snapshot as a reset (a first
// connect without a resume point, or after `resync`). An update at or
// below the resume point is a repeat and is ignored: nothing is shown
// twice and nothing is skipped.
//
//   const client = new LiveClient({ url: "ws://host/ws", lastId: 1042 });
//   client.addEventListener("update", (e) => show(e.detail));
//   client.addEventListener("state", (e) => say(e.detail.state));
//   client.start();
//
// Embedding pages (catlog-live.js) also pass `token` (a function giving the
// token to put in ?token= at each connect) and `prepare` (an async function
// awaited before each connect: it may refresh the token, or answer a number
// of milliseconds to wait before trying again, e.g. when not allowed).
//
// Events (CustomEvent, the message or the state in `detail`):
//   state     {state: "connecting" | "live" | "recovering" | "resynced" | "offline",
//              reconnect, missed (recovering: updates replayed so far),
//              reason (resynced), retryInMs (connecting, offline)}
//   update    an `update` message, once per id, ids rising
//   snapshot  {message, reset}: reset when the view starts again from it
//   trending, stats, anime, error, resumed, token: the server's message as it came
//   closed    {code, reason}: a connection ended (4401: its token expired)

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const OFFLINE_AFTER_FAILURES = 5;

export class LiveClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url WebSocket URL of /ws (it may carry ?token=)
   * @param {number|null} [options.lastId] the newest update already shown
   *   (the server-rendered page's), or null to start from a snapshot
   */
  constructor({ url, lastId = null, token = null, prepare = null, backoffMinMs = BACKOFF_MIN_MS, backoffMaxMs = BACKOFF_MAX_MS, offlineAfter = OFFLINE_AFTER_FAILURES }) {
    super();
    this.url = url;
    this.token = token;
    this.prepare = prepare;
    this.preparing = false;
    this.applied = Number.isSafeInteger(lastId) && lastId >= 0 ? lastId : null;
    this.backoffMinMs = backoffMinMs;
    this.backoffMaxMs = backoffMaxMs;
    this.offlineAfter = offlineAfter;
    this.rooms = new Set();
    this.socket = null;
    this.timer = null;
    this.failures = 0;       // connections in a row that never became live
    this.wasLive = false;    // once live, later connections are reconnects
    this.live = false;       // this connection finished its snapshot or replay
    this.awaitingReset = false; // the next snapshot starts the view again
    this.resyncReason = null;
    this.missed = 0;         // updates replayed in this recovery
    this.stopped = true;
    this.onOnline = () => { if (!this.socket && !this.preparing && !this.stopped) this.connect(); };
  }

  /** Before start: resume after `lastId`, the newest update the page already shows. */
  resumeAfter(lastId) {
    if (this.stopped && this.applied === null && Number.isSafeInteger(lastId) && lastId >= 0) this.applied = lastId;
  }

  /** The last update applied: the resume point (null before any). */
  get lastId() {
    return this.applied;
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    this.setState("connecting", {});
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    const ws = this.socket;
    this.socket = null;
    if (ws) ws.close();
  }

  /** Follows an anime's room, now and after every reconnect. */
  subscribe(malId) {
    this.rooms.add(malId);
    this.send({ type: "subscribe", malId });
  }

  unsubscribe(malId) {
    this.rooms.delete(malId);
    this.send({ type: "unsubscribe", malId });
  }

  /** Sends a message if connected; false when not (rooms are sent again on connect). */
  send(message) {
    const ws = this.socket;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, extra) {
    this.emit("state", { state, reconnect: this.wasLive, ...extra });
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped || this.preparing) return;
    if (!this.prepare) {
      this.open();
      return;
    }
    this.preparing = true;
    Promise.resolve()
      .then(() => this.prepare({ failures: this.failures, reconnect: this.wasLive }))
      .then((wait) => {
        this.preparing = false;
        if (this.stopped) return;
        if (typeof wait === "number") this.timer = setTimeout(() => this.connect(), wait);
        else this.open();
      }, (err) => {
        this.preparing = false;
        console.warn("cannot prepare the connection:", err && err.message ? err.message : err);
        this.lost();
      });
  }

  open() {
    const url = new URL(this.url, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : url.protocol === "http:" ? "ws:" : url.protocol;
    if (this.applied !== null) url.searchParams.set("lastId", String(this.applied));
    const token = this.token ? this.token() : null;
    if (token) url.searchParams.set("token", token);
    this.live = false;
    this.missed = 0;
    this.awaitingReset = this.applied === null;
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      console.error("cannot open WebSocket", err);
      this.lost();
      return;
    }
    this.socket = ws;
    ws.addEventListener("open", () => {
      if (ws !== this.socket) return;
      if (this.applied !== null) this.setState("recovering", { missed: 0 });
      for (const malId of this.rooms) this.send({ type: "subscribe", malId });
    });
    ws.addEventListener("message", (ev) => {
      if (ws === this.socket) this.onMessage(ev.data);
    });
    // "error" is always followed by "close": handle the first, once per socket.
    const lost = (ev) => {
      if (ws !== this.socket) return;
      this.socket = null;
      this.emit("closed", { code: ev && ev.code, reason: ev && ev.reason });
      this.lost();
    };
    ws.addEventListener("close", lost);
    ws.addEventListener("error", lost);
  }

  /** The connection ended: try again after an exponential backoff with full jitter. */
  lost() {
    if (this.stopped) return;
    if (!this.live) this.failures += 1;
    this.live = false;
    const cap = Math.min(this.backoffMaxMs, this.backoffMinMs * 2 ** Math.min(this.failures, 16));
    const retryInMs = Math.round(Math.random() * cap);
    const offline = this.failures >= this.offlineAfter || navigator.onLine === false;
    this.setState(offline ? "offline" : "connecting", { retryInMs });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), retryInMs);
  }

  becameLive(state, extra) {
    this.live = true;
    this.wasLive = true;
    this.failures = 0;
    this.setState(state, extra);
  }

  onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      console.warn("ignoring non-JSON frame", err);
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    switch (msg.type) {
      case "update": {
        const id = Number(msg.id);
        // Before the snapshot a view starts from, or a repeat: not applied.
        if (!Number.isSafeInteger(id) || this.awaitingReset) return;
        if (this.applied !== null && id <= this.applied) return;
        this.applied = id;
        if (!this.live) {
          this.missed += 1;
          this.setState("recovering", { missed: this.missed });
        }
        this.emit("update", msg);
        return;
      }
      case "resumed":
        this.emit("resumed", msg);
        this.becameLive("live", { missed: this.missed });
        return;
      case "resync":
        console.info("resync requested by the server:", msg.reason);
        this.awaitingReset = true;
        this.resyncReason = String(msg.reason || "");
        return;
      case "snapshot": {
        const reset = this.awaitingReset;
        if (reset) {
          const lastId = Number(msg.lastId);
          this.applied = Number.isSafeInteger(lastId) && lastId >= 0 ? lastId : 0;
          this.awaitingReset = false;
        }
        this.emit("snapshot", { message: msg, reset });
        if (reset) {
          const reason = this.resyncReason;
          this.resyncReason = null;
          if (reason === null) this.becameLive("live", {});
          else this.becameLive("resynced", { reason });
        }
        return;
      }
      default:
        this.emit(msg.type, msg);
    }
  }
}
