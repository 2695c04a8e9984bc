// CatLog Live – the elements any page can embed. An ES module, no build step:
//
//   <script type="module" src="https://live.example/static/catlog-live.js"></script>
//   <catlog-live-trending limit="10"></catlog-live-trending>
//   <catlog-live-feed limit="20" mal-id="5114"></catlog-live-feed>
//   <catlog-live-anime mal-id="5114"></catlog-live-anime>
//
// Every element of a page shares one WebSocket (live-client.js: reconnect,
// resume, no repeats) per server; the server is the one this module came
// from unless an element says `server="https://…"`. Access: a `token`
// attribute, or a getToken() callback (configure({ getToken }) or the
// element's `getToken` property) that is called before the token expires
// (the refresh goes in band, without reconnecting) and before any connect
// whose token is spent. See docs/embedding.md.
import { LiveClient } from "./live-client.js";

const HERE = new URL(".", import.meta.url);
const DEFAULT_SERVER = new URL("../", HERE).href;
const SVG_NS = "http://www.w3.org/2000/svg";
const KEPT = 100;               // recent updates kept for elements that attach later
const REFRESH_AT = 0.7;         // refresh a token when this much of its life is gone
const NOT_ALLOWED_RETRY_MS = 30000;
// "Live" only while data flows: silent for this many usual gaps (and at
// least STALE_MIN_MS) reads as stale.
const STALE_FACTOR = 10;
const STALE_MIN_MS = 30000;
const TYPE_LABELS = { SCORE_UPDATE: "Score", MEMBER_UPDATE: "Members", TRENDING_CHANGE: "Site rank" };

// Styles: fetched once (CORS), shared by every shadow root.
const sheet = new CSSStyleSheet();
try {
  const css = await fetch(new URL("catlog-live.css", HERE), { credentials: "omit" });
  if (css.ok) sheet.replaceSync(await css.text());
} catch (err) {
  console.warn("catlog-live: styles unavailable", err && err.message);
}

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
const isNum = (n) => n !== null && n !== undefined && n !== "" && Number.isFinite(Number(n));
const fmtInt = (n) => (isNum(n) ? Number(n).toLocaleString("en-US") : "–");
const fmtFixed = (n, d) => (isNum(n) ? Number(n).toFixed(d) : "–");
function fmtCompact(n) {
  const v = Number(n);
  if (Math.abs(v) >= 1e6) return `${Number((v / 1e6).toFixed(2))}M`;
  if (Math.abs(v) >= 1e3) return `${Number((v / 1e3).toFixed(1))}k`;
  return String(v);
}
function direction(change) {
  const text = String(change ?? "").trim();
  if (text.startsWith("-")) return "down";
  return parseFloat(text) ? "up" : "flat";
}
/** A change with its unit, as the server renders it. */
function changeText(type, change) {
  const text = String(change ?? "0").trim();
  const sign = text.startsWith("-") ? "-" : "+";
  const value = Math.abs(parseFloat(text) || 0);
  if (type === "MEMBER_UPDATE") {
    const m = Math.round(value * 1000);
    return m < 1000 ? `${sign}${m} members` : `${sign}${Number((m / 1000).toFixed(1))}k members`;
  }
  if (type === "TRENDING_CHANGE") {
    const p = Math.round(value);
    return `${sign}${p} ${p === 1 ? "place" : "places"}`;
  }
  return text;
}
function ago(iso, now) {
  const s = Math.floor((now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return "";
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
function timeEl(iso) {
  const node = el("time", { datetime: iso || "", part: "time" }, ago(iso, Date.now()));
  const date = new Date(iso);
  if (!Number.isNaN(date.getTime())) node.title = date.toLocaleString();
  return node;
}
const positiveInt = (text, fallback) => {
  const n = Number.parseInt(text, 10);
  return Number.isSafeInteger(n) && n > 0 ? n : fallback;
};
const serverOf = (element) => {
  const given = element.getAttribute("server");
  if (!given) return settings.server || DEFAULT_SERVER;
  const url = new URL(given, location.href);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url.href;
};

// ------------------------------------------------------------------ the shared connection

const settings = { server: null, token: null, getToken: null };
const connections = new Map();

/**
 * Page-wide settings, before or after the elements are on the page:
 * configure({ server, token, getToken: async () => "…" }).
 */
export function configure({ server, token, getToken } = {}) {
  if (server) settings.server = new URL(server, location.href).href.replace(/\/?$/, "/");
  if (token !== undefined) settings.token = token;
  if (getToken !== undefined) settings.getToken = getToken;
  for (const conn of connections.values()) conn.configure({ token, getToken });
}

/** The one connection to `server` this page has (made on first use). */
export function connectionTo(server, lastId = null) {
  let conn = connections.get(server);
  if (!conn) {
    conn = new Connection(server);
    connections.set(server, conn);
  }
  // Server-rendered rows: the connection resumes after them.
  if (lastId !== null && lastId !== "") conn.client.resumeAfter(Number(lastId));
  return conn;
}

class Connection extends EventTarget {
  constructor(server) {
    super();
    this.server = server;
    this.token = settings.token;
    this.getToken = settings.getToken;
    this.expiresAt = null;     // when the server ends this connection's token (local clock)
    this.refreshTimer = null;
    this.refreshing = null;    // the one token refresh under way
    this.spent = false;        // the token was refused or ran out: get another before connecting
    this.status = { state: "connecting", text: "Connecting…" };
    this.delayed = null;
    this.recent = [];          // newest first
    this.trending = [];
    this.rooms = new Map();    // malId -> number of elements following it
    this.anime = new Map();    // malId -> latest anime message
    this.unknown = new Set();  // malIds the server has not seen
    this.lastEventAt = null;
    this.gaps = [];
    this.client = new LiveClient({
      url: `${server}ws`,
      token: () => this.token,
      prepare: (info) => this.prepare(info),
    });
    const on = (type, fn) => this.client.addEventListener(type, (ev) => fn(ev.detail));
    on("state", (d) => this.onState(d));
    on("snapshot", ({ message, reset }) => {
      if (reset) this.recent = (message.updates || []).slice(0, KEPT);
      this.noteEvent();
      this.trending = message.trending || [];
      this.emit("reset");
      this.emit("trending");
    });
    on("update", (msg) => {
      this.noteEvent();
      this.recent.unshift(msg);
      if (this.recent.length > KEPT) this.recent.pop();
      this.emit("update", msg);
    });
    on("trending", (msg) => {
      this.trending = msg.items || [];
      this.emit("trending");
    });
    on("stats", (msg) => {
      this.delayed = msg.delayed && typeof msg.delayed === "object" ? msg.delayed : null;
      if (["live", "delayed", "stale"].includes(this.status.state)) this.onState({ state: "live" });
      this.emit("stats", msg);
    });
    on("anime", (msg) => {
      this.anime.set(msg.malId, msg);
      this.unknown.delete(msg.malId);
      this.emit("anime", msg);
    });
    on("error", (msg) => {
      const unseen = /no anime with malId (\d+)/.exec(String(msg.error || ""));
      if (unseen) {
        this.unknown.add(Number(unseen[1]));
        this.emit("unknown", Number(unseen[1]));
      } else {
        console.warn("catlog-live: the server says:", msg.error);
      }
    });
    on("token", (msg) => this.onToken(msg));
    on("closed", ({ code }) => {
      if (code === 4401) {
        this.spent = true;
        if (this.getToken) this.say("reconnecting", "Renewing access…");
        else this.say("not-allowed", "Not allowed: the token has expired");
      }
    });
    const wake = () => {
      if (document.visibilityState !== "hidden" && this.expiresAt !== null && this.expiresAt - Date.now() < 5000) {
        this.refresh().catch(() => {});
      }
    };
    document.addEventListener("visibilitychange", wake);
    window.addEventListener("online", wake);
    this.started = false;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  noteEvent() {
    const now = Date.now();
    if (this.lastEventAt) {
      this.gaps.push(now - this.lastEventAt);
      if (this.gaps.length > 20) this.gaps.shift();
    }
    this.lastEventAt = now;
    if (this.status.state === "stale") this.onState({ state: "live" });
  }

  /** Live, or stale after a silence far longer than usual (called every second). */
  checkFresh(now) {
    if (this.status.state !== "live" && this.status.state !== "stale") return;
    if (!this.lastEventAt) return;
    const sorted = this.gaps.slice().sort((a, b) => a - b);
    const usual = sorted.length >= 3 ? sorted[Math.floor(sorted.length / 2)] : 0;
    const idle = now - this.lastEventAt;
    if (idle <= Math.max(STALE_MIN_MS, usual * STALE_FACTOR)) return;
    const min = Math.floor(idle / 60000);
    const text = `Stale: no new events for ${min ? `${min} min` : `${Math.floor(idle / 10000) * 10} s`}`;
    if (this.status.text !== text) this.say("stale", text);
  }

  /** Starts once, after the scripts of this task (which may configure it) have run. */
  start() {
    if (this.started) return;
    this.started = true;
    setTimeout(() => this.client.start(), 0);
  }

  configure({ token, getToken }) {
    let changed = false;
    if (getToken !== undefined && getToken !== null && getToken !== this.getToken) {
      this.getToken = getToken;
      changed = true;
    }
    if (token !== undefined && token !== null && token !== this.token) {
      this.token = token;
      this.spent = false;
      changed = true;
      // A new token from the page: hand it over in band.
      this.client.send({ type: "token", token });
    }
    // Waiting for access (refused, or between tries): try again now.
    if (changed && this.started && !this.client.socket && !this.client.stopped) {
      this.probed = false;
      this.client.connect();
    }
  }

  follow(malId) {
    this.rooms.set(malId, (this.rooms.get(malId) || 0) + 1);
    if (this.rooms.get(malId) === 1) this.client.subscribe(malId);
  }

  unfollow(malId) {
    const n = (this.rooms.get(malId) || 0) - 1;
    if (n > 0) {
      this.rooms.set(malId, n);
      return;
    }
    this.rooms.delete(malId);
    this.anime.delete(malId);
    this.client.unsubscribe(malId);
  }

  say(state, text) {
    this.status = { state, text };
    this.emit("status", this.status);
  }

  onState({ state, reconnect, missed }) {
    switch (state) {
      case "connecting":
        if (this.status.state !== "not-allowed" && !this.spent) this.say("reconnecting", reconnect ? "Reconnecting…" : "Connecting…");
        break;
      case "recovering":
        if (reconnect) this.say("reconnecting", missed ? `Catching up: ${missed} missed updates` : "Catching up…");
        break;
      case "live":
      case "resynced":
        if (this.delayed) this.say("delayed", `Delayed — ${this.delayed.reason || "the data is behind"}`);
        else this.say("live", "Live");
        break;
      case "offline":
        if (!this.spent) this.say("reconnecting", "Offline — trying again");
        break;
      default:
        break;
    }
  }

  /** The server's word on the token: when to refresh, or why it was refused. */
  onToken(msg) {
    clearTimeout(this.refreshTimer);
    if (!isNum(msg.expiresInMs)) {
      this.expiresAt = null;
      return;
    }
    const left = Number(msg.expiresInMs);
    this.expiresAt = Date.now() + left;
    if (!msg.accepted) console.warn("catlog-live: token refused:", msg.reason);
    if (!this.getToken) return;
    const retry = msg.accepted ? left * REFRESH_AT : Math.min(5000, left / 2);
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => this.retryRefresh()), Math.max(250, retry));
  }

  retryRefresh() {
    clearTimeout(this.refreshTimer);
    const left = this.expiresAt === null ? 0 : this.expiresAt - Date.now();
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => this.retryRefresh()), Math.max(1000, Math.min(5000, left / 2)));
  }

  /** One fresh token from getToken(), however many ask at once; sent in band when connected. */
  refresh() {
    if (!this.getToken) return Promise.reject(new Error("no getToken"));
    if (!this.refreshing) {
      this.refreshing = Promise.resolve()
        .then(() => this.getToken())
        .then((token) => {
          if (typeof token !== "string" || !token) throw new Error("getToken() gave no token");
          this.token = token;
          this.spent = false;
          this.client.send({ type: "token", token });
          return token;
        })
        .finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }

  /**
   * Before each connect: a token that is spent (or about to be) is renewed
   * first, so a resume never goes out with an expired one; after a failed
   * connect (and the first time) the server says whether this page may
   * have data at all.
   */
  async prepare({ failures }) {
    const soon = this.expiresAt !== null && this.expiresAt - Date.now() < 3000;
    if (this.getToken && (!this.token || this.spent || soon)) await this.refresh();
    if (failures > 0 || !this.probed || (this.spent && !this.getToken)) {
      this.probed = true;
      let answer = null;
      try {
        const url = new URL("api/live/access", this.server);
        if (this.token) url.searchParams.set("token", this.token);
        const res = await fetch(url, { credentials: "omit", cache: "no-store" });
        answer = res.ok ? await res.json() : null;
      } catch {
        answer = null; // unreachable: the socket finds out and backs off
      }
      if (answer && !answer.allowed) {
        if (answer.originAllowed && this.getToken && answer.tokenNeeded) {
          this.spent = true;
          throw new Error(answer.reason);
        }
        this.say("not-allowed", `Not allowed: ${answer.reason}`);
        console.info("catlog-live: not allowed:", answer.reason);
        this.probed = false;
        return NOT_ALLOWED_RETRY_MS;
      }
    }
    return undefined;
  }
}

// ------------------------------------------------------------------ the elements

const ticking = new Set();
setInterval(() => {
  const now = Date.now();
  for (const conn of connections.values()) conn.checkFresh(now);
  for (const root of ticking) {
    for (const node of root.querySelectorAll("time[datetime]")) {
      const text = ago(node.getAttribute("datetime"), now);
      if (node.textContent !== text) node.textContent = text;
    }
  }
}, 1000);

/** What the three elements share: a shadow root, a heading, the state in words, the connection. */
class LiveElement extends HTMLElement {
  constructor() {
    super();
    // A server-rendered (declarative) shadow root is taken over as it is.
    this.root = this.shadowRoot || this.attachShadow({ mode: "open" });
    this.root.adoptedStyleSheets = [sheet];
    this.conn = null;
    this.off = [];
  }

  get getToken() { return this._getToken || null; }
  set getToken(fn) {
    this._getToken = fn;
    if (this.conn) this.conn.configure({ getToken: fn });
  }

  static get observedAttributes() { return ["limit", "mal-id", "token"]; }

  connectedCallback() {
    // A getToken set before the module defined the element (frameworks do).
    if (Object.prototype.hasOwnProperty.call(this, "getToken")) {
      const fn = this.getToken;
      delete this.getToken;
      this._getToken = fn;
    }
    if (!this.frame) this.build();
    this.conn = connectionTo(serverOf(this), this.getAttribute("last-id"));
    this.conn.configure({ token: this.getAttribute("token"), getToken: this._getToken });
    this.listen("status", (s) => this.showStatus(s));
    this.showStatus(this.conn.status);
    ticking.add(this.root);
    this.attach();
    this.conn.start();
  }

  disconnectedCallback() {
    for (const off of this.off) off();
    this.off = [];
    ticking.delete(this.root);
    this.detach();
  }

  attributeChangedCallback(name, old, value) {
    if (!this.conn || old === value) return;
    if (name === "token") this.conn.configure({ token: value });
    else {
      // Another title or limit: follow it from scratch.
      this.disconnectedCallback();
      this.connectedCallback();
    }
  }

  listen(type, fn) {
    const handler = (ev) => fn(ev.detail);
    this.conn.addEventListener(type, handler);
    this.off.push(() => this.conn.removeEventListener(type, handler));
  }

  /**
   * The frame: a heading, the state in words, and the body, as the server
   * renders it too (declarative shadow DOM): a rendered one is taken over.
   */
  build() {
    if (!this.root.querySelector(".frame")) {
      this.root.innerHTML = `<section class="frame" part="frame"><header class="head" part="header">` +
        `<h2 class="heading" part="heading"></h2><p class="status" part="status" role="status" data-state="connecting">Connecting…</p>` +
        `</header><div class="body" part="body">${this.skeleton()}</div></section>`;
      this.root.querySelector(".heading").textContent = this.label;
    }
    const part = (name) => this.root.querySelector(`[part~="${name}"]`);
    this.frame = part("frame");
    this.statusEl = part("status");
    this.heading = part("heading");
    this.list = part("list");
    this.empty = part("empty");
  }

  showStatus({ state, text }) {
    if (this.statusEl.dataset.state === state && this.statusEl.textContent === text) return;
    this.statusEl.dataset.state = state;
    this.statusEl.textContent = text;
    this.dataset.state = state;
  }

  get malId() {
    const n = Number.parseInt(this.getAttribute("mal-id"), 10);
    return Number.isSafeInteger(n) && n >= 1 ? n : null;
  }

  /**
   * A title: a link (`link="/anime/{malId}"`), a button that announces a
   * `catlog-live-select` event (`selectable`), or text.
   */
  titleEl(malId, title) {
    const template = this.getAttribute("link");
    const text = title || `#${malId}`;
    if (!template && this.hasAttribute("selectable")) {
      const button = el("button", { type: "button", class: "title", part: "title", "data-mal-id": malId, title: "Show this title's live panel" }, text);
      button.addEventListener("click", () => this.dispatchEvent(new CustomEvent("catlog-live-select", {
        bubbles: true, composed: true, detail: { malId, title: text },
      })));
      return button;
    }
    if (!template) return el("span", { class: "title", part: "title" }, text);
    return el("a", { class: "title", part: "title", href: template.replaceAll("{malId}", String(malId)) }, text);
  }

  attach() {}
  detach() {}
}

/** `<catlog-live-trending limit="10">`: the ranking by momentum, with movement. */
class TrendingElement extends LiveElement {
  get label() { return "Trending"; }

  skeleton() {
    return `<ol id="trending" class="list trending" part="list"></ol><p class="empty" part="empty">No trending ranking yet.</p>`;
  }

  attach() {
    this.listen("trending", () => this.render());
    this.render();
  }

  render() {
    const limit = positiveInt(this.getAttribute("limit"), 10);
    const items = this.conn.trending.slice(0, limit);
    const focused = this.root.activeElement && this.root.activeElement.closest("li");
    const focusId = focused ? focused.dataset.malId : null;
    this.list.replaceChildren(...items.map((item) => this.row(item)));
    this.empty.hidden = items.length > 0;
    if (focusId) {
      const again = this.list.querySelector(`li[data-mal-id="${focusId}"] .title`);
      if (again) again.focus();
    }
  }

  row(item) {
    const moved = isNum(item.previousRank) ? item.previousRank - item.rank : null;
    const kind = moved === null ? "new" : moved > 0 ? "up" : moved < 0 ? "down" : "same";
    const words = { up: `Up ${moved}`, down: `Down ${Math.abs(moved)}`, new: "New entry", same: "No change" }[kind];
    const badge = kind === "new" ? "NEW" : kind === "same" ? "–" : String(Math.abs(moved));
    return el("li", { "data-mal-id": item.malId, part: "item" },
      el("span", { class: "rank", part: "rank" }, String(item.rank)),
      el("span", { class: "main" },
        this.titleEl(item.malId, item.title),
        el("span", { class: "meta", part: "meta" },
          "Score ", el("span", { class: "score" }, fmtFixed(item.score, 2)),
          " · Members ", el("span", { class: "members" }, fmtInt(item.members)),
          " · Momentum ", el("span", { class: "momentum" }, fmtFixed(item.momentum, 1)))),
      el("span", { class: `movement ${kind}`, part: `movement movement-${kind}`, role: "img", "aria-label": words, title: "Places moved in the last 10 minutes" }, badge));
  }
}

/** `<catlog-live-feed limit="20" mal-id>`: every change as it happens, newest first. */
class FeedElement extends LiveElement {
  get label() { return "Live feed"; }

  skeleton() {
    return `<ol id="feed" class="list feed" part="list" aria-live="polite" aria-relevant="additions"></ol>` +
      `<p class="empty" part="empty">Waiting for the first update…</p>`;
  }

  attach() {
    const malId = this.malId;
    this.following = malId;
    this.list.replaceChildren();
    if (malId !== null) {
      this.conn.follow(malId);
      this.listen("anime", (msg) => msg.malId === malId && this.fromHistory(msg));
      const known = this.conn.anime.get(malId);
      if (known) this.fromHistory(known);
    }
    this.listen("reset", () => this.fromRecent(true));
    this.listen("update", (msg) => this.add(msg, true));
    this.fromRecent(false);
  }

  detach() {
    if (this.following !== null && this.following !== undefined && this.conn) this.conn.unfollow(this.following);
    this.following = null;
  }

  fromRecent(reset) {
    if (reset && this.malId === null) this.list.replaceChildren();
    for (const msg of this.conn.recent.slice().reverse()) this.add(msg, false);
    this.trim();
  }

  /** A title's room history as feed rows (it carries what the snapshot may not). */
  fromHistory(msg) {
    const title = (msg.current && msg.current.title) || `#${msg.malId}`;
    for (const h of (msg.history || []).slice().reverse()) {
      this.add({
        id: h.id,
        event: {
          malId: msg.malId, title, eventType: h.eventType, currentScore: h.currentScore,
          liveMembers: h.liveMembers, trendingRank: h.trendingRank, popularityChange: h.popularityChange, timestamp: h.timestamp,
        },
      }, false);
    }
  }

  add(msg, fresh) {
    const e = msg.event || {};
    const id = Number(msg.id);
    if (!Number.isFinite(id) || (this.malId !== null && e.malId !== this.malId)) return;
    if (this.list.querySelector(`li[data-id="${id}"]`)) return;
    let value = e.currentScore ?? "–";
    if (e.eventType === "MEMBER_UPDATE") value = fmtInt(e.liveMembers);
    else if (e.eventType === "TRENDING_CHANGE") value = isNum(e.trendingRank) ? `#${e.trendingRank}` : "–";
    const dir = direction(e.popularityChange);
    const row = el("li", { "data-id": id, "data-mal-id": e.malId, class: `update ${dir}${fresh ? " fresh" : ""}`, part: "item" },
      this.titleEl(e.malId, e.title),
      el("span", { class: "type", part: "type" }, TYPE_LABELS[e.eventType] || String(e.eventType || "Update")),
      el("span", { class: "value", part: "value" }, String(value)),
      el("span", { class: `change ${dir}`, part: `change change-${dir}` }, changeText(e.eventType, e.popularityChange)),
      timeEl(e.timestamp));
    let before = this.list.firstElementChild;
    while (before && Number(before.dataset.id) > id) before = before.nextElementSibling;
    this.list.insertBefore(row, before);
    this.trim();
  }

  trim() {
    const limit = positiveInt(this.getAttribute("limit"), 20);
    while (this.list.children.length > limit) this.list.lastElementChild.remove();
    this.empty.hidden = this.list.children.length > 0;
  }
}

/** `<catlog-live-anime mal-id="5114">`: one title's live score, members, ranks and chart (its room). */
class AnimeElement extends LiveElement {
  get label() { return "Loading…"; }

  skeleton() {
    return `<p id="anime-sub" class="sub" part="sub"></p><dl class="facts" part="facts"></dl>` +
      `<svg id="anime-chart" class="chart" part="chart" viewBox="0 0 360 170" role="img" aria-label="Score and members over time"></svg>`;
  }

  build() {
    super.build();
    this.heading.id = "anime-title";
    this.heading.tabIndex = -1;
    this.sub = this.root.querySelector('[part="sub"]');
    this.facts = this.root.querySelector('[part="facts"]');
    this.chart = this.root.querySelector('[part="chart"]');
  }

  connectedCallback() {
    if (this.hasAttribute("follow-selection") && !this.onSelect) {
      this.onSelect = (ev) => {
        const id = Number(ev.detail && ev.detail.malId);
        if (Number.isSafeInteger(id) && id !== this.malId) this.setAttribute("mal-id", String(id));
      };
      document.addEventListener("catlog-live-select", this.onSelect);
    }
    super.connectedCallback();
  }

  attach() {
    const malId = this.malId;
    this.following = malId;
    if (malId === null) {
      this.heading.textContent = "No title chosen";
      this.sub.textContent = "Set mal-id to a MyAnimeList id.";
      return;
    }
    this.heading.textContent = "Loading…";
    this.sub.textContent = `MAL #${malId}`;
    this.facts.replaceChildren();
    this.chart.replaceChildren();
    this.conn.follow(malId);
    this.listen("anime", (msg) => msg.malId === malId && this.render(msg));
    this.listen("trending", () => {
      const known = this.conn.anime.get(malId);
      if (known) this.render(known);
    });
    this.listen("unknown", (id) => id === malId && this.unseen());
    const known = this.conn.anime.get(malId);
    if (known) this.render(known);
    else if (this.conn.unknown.has(malId)) this.unseen();
  }

  detach() {
    if (this.following !== null && this.following !== undefined && this.conn) this.conn.unfollow(this.following);
    this.following = null;
  }

  unseen() {
    this.heading.textContent = `Anime #${this.malId}`;
    this.sub.textContent = "No live data for this title yet.";
  }

  render(msg) {
    const c = msg.current || {};
    this.heading.textContent = c.title || `Anime #${msg.malId}`;
    const last = c.popularityChange
      ? ` · last change: ${(TYPE_LABELS[c.lastEventType] || "").toLowerCase()} ${changeText(c.lastEventType, c.popularityChange)}`
      : "";
    this.sub.textContent = `MAL #${msg.malId}${last}`;
    const place = this.conn.trending.find((t) => t.malId === msg.malId);
    const fact = (name, value, hint) => el("div", { part: "fact" },
      el("dt", hint ? { title: hint } : {}, name), el("dd", { class: "num" }, value));
    this.facts.replaceChildren(
      fact("Score", c.currentScore ?? "–"),
      fact("Members", fmtInt(c.liveMembers)),
      fact("Momentum rank", place ? `#${place.rank}` : "not in the top 20", "Its place in the trending list: recent activity, halving every 10 minutes"),
      fact("Site rank", isNum(c.trendingRank) ? `#${c.trendingRank}` : "–", "The rank the catalog site reports for it"),
      el("div", { part: "fact" }, el("dt", {}, "Last update"), el("dd", {}, c.lastUpdate ? timeEl(c.lastUpdate) : "–")));
    this.draw(msg.history || []);
  }

  draw(history) {
    const P = { x0: 44, x1: 306, y0: 30, y1: 136 };
    const series = (field) => history.slice().reverse().filter((h) => isNum(h[field]))
      .map((h) => ({ t: Date.parse(h.timestamp), v: Number(h[field]) })).filter((p) => Number.isFinite(p.t));
    const score = series("currentScore");
    const members = series("liveMembers");
    const times = score.concat(members).map((p) => p.t);
    const tMin = Math.min(...times);
    const tMax = Math.max(...times);
    const nodes = [
      svg("line", { class: "key score", x1: P.x0, y1: 12, x2: P.x0 + 16, y2: 12 }),
      svg("text", { class: "legend", x: P.x0 + 20, y: 16 }, "Score (left)"),
      svg("line", { class: "key members", x1: P.x0 + 120, y1: 12, x2: P.x0 + 136, y2: 12 }),
      svg("text", { class: "legend", x: P.x0 + 140, y: 16 }, "Members (right)"),
      svg("line", { class: "grid", x1: P.x0, y1: P.y0, x2: P.x1, y2: P.y0 }),
      svg("line", { class: "grid", x1: P.x0, y1: P.y1, x2: P.x1, y2: P.y1 }),
    ];
    const plot = (points, cls, x, anchor, fmt) => {
      if (!points.length) return null;
      const vals = points.map((p) => p.v);
      const min = Math.min(...vals);
      const max = Math.max(...vals);
      const y = (v) => (max === min ? (P.y0 + P.y1) / 2 : P.y1 - ((v - min) / (max - min)) * (P.y1 - P.y0));
      const px = (p) => (tMax > tMin ? P.x0 + ((p.t - tMin) / (tMax - tMin)) * (P.x1 - P.x0) : P.x1);
      nodes.push(svg("path", { class: `line ${cls}`, d: points.map((p, i) => `${i ? "L" : "M"}${px(p).toFixed(1)} ${y(p.v).toFixed(1)}`).join(" ") }));
      for (const p of points.slice(-60)) nodes.push(svg("circle", { class: `dot ${cls}`, cx: px(p).toFixed(1), cy: y(p.v).toFixed(1), r: 2.2 }));
      if (min === max) nodes.push(svg("text", { class: `axis ${cls}`, x, y: (P.y0 + P.y1) / 2 + 4, "text-anchor": anchor }, fmt(min)));
      else {
        nodes.push(svg("text", { class: `axis ${cls}`, x, y: P.y0 + 4, "text-anchor": anchor }, fmt(max)));
        nodes.push(svg("text", { class: `axis ${cls}`, x, y: P.y1 + 4, "text-anchor": anchor }, fmt(min)));
      }
      return { min, max };
    };
    const s = plot(score, "score", P.x0 - 4, "end", (v) => v.toFixed(2));
    const m = plot(members, "members", P.x1 + 4, "start", fmtCompact);
    if (times.length) {
      const label = (t) => { const a = ago(new Date(t).toISOString(), Date.now()); return a === "just now" ? "now" : a; };
      nodes.push(svg("text", { class: "axis", x: P.x0, y: P.y1 + 18 }, label(tMin)));
      nodes.push(svg("text", { class: "axis", x: P.x1, y: P.y1 + 18, "text-anchor": "end" }, label(tMax)));
    }
    if (score.length < 2 || members.length < 2) {
      nodes.push(svg("text", { class: "note", x: (P.x0 + P.x1) / 2, y: P.y1 + 30, "text-anchor": "middle" }, "Waiting for more changes"));
    }
    this.chart.replaceChildren(...nodes);
    const say = (name, r, fmt) => (r ? `${name} from ${fmt(r.min)} to ${fmt(r.max)}` : `no ${name} changes yet`);
    this.chart.setAttribute("aria-label", `Chart of the last ${history.length} events: ${say("score", s, (v) => v.toFixed(2))}; ${say("members", m, fmtInt)}.`);
  }
}

customElements.define("catlog-live-trending", TrendingElement);
customElements.define("catlog-live-feed", FeedElement);
customElements.define("catlog-live-anime", AnimeElement);
