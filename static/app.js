// CatLog Live – the page. Vanilla JS modules, no build step.
// The server renders the initial feed/trending markup and, in <template>
// elements, the same markup empty: this script clones those for live rows,
// so the markup and its words are written once (templates/index.html).
// The connection (reconnect, resume, no repeats) is live-client.js.
import { LiveClient } from "./live-client.js";

(function () {
  "use strict";

  const MAX_FEED = 50;
  // "Live" only while data flows: connected but silent for far longer than
  // the usual gap between events reads as stale.
  const STALE_FACTOR = 10;        // … this many usual gaps without an event
  const STALE_MIN_MS = 30000;     // … and never sooner than this
  const GAPS_KEPT = 20;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TYPE_LABELS = JSON.parse(document.body.dataset.typeLabels || "{}");

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  document.documentElement.classList.add("js"); // the phone's tabs need the script
  const feed = $("feed");
  const trending = $("trending");
  const panel = $("anime-panel");
  const chart = $("anime-chart");

  const state = {
    followed: null,        // malId shown in the detail panel, or null
    delayed: null,         // the server's {reason, since} when its data is behind
    lastEventAt: null,     // when the newest event arrived (ms, this clock)
    gaps: [],              // recent gaps between arriving events (ms)
    statsGapMs: null,      // the server's recent rate, as a gap (ms)
    trending: [],          // the latest ranking, for the panel's momentum rank
  };

  // ---------------------------------------------------------------- helpers

  /** Create an element: el("span", { class: "x", "data-id": 1 }, child, "text"). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    node.append(...children);
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const isNum = (n) => n !== null && n !== undefined && n !== "" && Number.isFinite(Number(n));
  const fmtInt = (n) => (isNum(n) ? Number(n).toLocaleString("en-US") : "–");
  const fmtFixed = (n, digits) => (isNum(n) ? Number(n).toFixed(digits) : "–");

  /**
   * A change with its unit, as the server renders it (page.rs change_with_unit):
   * score points as they are, thousands of members as members, places as places.
   */
  function changeText(eventType, change) {
    const text = String(change ?? "0").trim();
    const sign = text.startsWith("-") ? "-" : "+";
    const value = Math.abs(parseFloat(text) || 0);
    if (eventType === "MEMBER_UPDATE") {
      const members = Math.round(value * 1000);
      if (members < 1000) return `${sign}${members} members`;
      return `${sign}${String(Number((members / 1000).toFixed(1)))}k members`;
    }
    if (eventType === "TRENDING_CHANGE") {
      const places = Math.round(value);
      return `${sign}${places} ${places === 1 ? "place" : "places"}`;
    }
    return text;
  }

  /** 3332647 → "3.33M", 389503 → "390k": for axis labels. */
  function fmtCompact(n) {
    if (!isNum(n)) return "–";
    const v = Number(n);
    if (Math.abs(v) >= 1e6) return `${Number((v / 1e6).toFixed(2))}M`;
    if (Math.abs(v) >= 1e3) return `${Number((v / 1e3).toFixed(1))}k`;
    return String(v);
  }

  /** "+0.05" → up, "-1.2" → down, "0" / "+0.00" → flat. */
  function changeDirection(change) {
    const text = String(change ?? "").trim();
    if (text.startsWith("-")) return "down";
    const value = parseFloat(text);
    return !value ? "flat" : "up"; // 0 and NaN are flat
  }

  /** "just now", "12 s ago", "3 min ago", "2 h ago", "4 d ago". */
  function relativeTime(iso, now) {
    const seconds = Math.floor((now - Date.parse(iso)) / 1000);
    if (!Number.isFinite(seconds)) return "";
    if (seconds < 5) return "just now"; // also covers small clock skew into the future
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function timeEl(iso) {
    const node = el("time", { class: "ago", datetime: iso }, relativeTime(iso, Date.now()));
    const date = new Date(iso);
    if (!Number.isNaN(date.getTime())) node.title = date.toLocaleString();
    return node;
  }

  /** Refresh every relative timestamp and the freshness (called once a second). */
  function tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll("time.ago[datetime]")) {
      const text = relativeTime(node.getAttribute("datetime"), now);
      if (node.textContent !== text) node.textContent = text;
    }
    checkFreshness(now);
  }

  // ---------------------------------------------------------------- freshness

  /** The usual gap between events: the median of recent gaps, else the server's rate. */
  function usualGapMs() {
    if (state.gaps.length >= 3) {
      const sorted = state.gaps.slice().sort((a, b) => a - b);
      return sorted[Math.floor(sorted.length / 2)];
    }
    return state.statsGapMs;
  }

  /** An event arrived (now), or a snapshot showed one from `at`. */
  function noteEvent(at) {
    const when = Math.min(at, Date.now());
    if (!Number.isFinite(when)) return;
    if (state.lastEventAt !== null && when > state.lastEventAt) {
      state.gaps.push(when - state.lastEventAt);
      if (state.gaps.length > GAPS_KEPT) state.gaps.shift();
    }
    if (state.lastEventAt === null || when > state.lastEventAt) state.lastEventAt = when;
    checkFreshness(Date.now());
  }

  /** "45 s", "2 min", "3 h": coarse, so a screen reader is not told every second. */
  function idleText(ms) {
    const seconds = Math.floor(ms / 1000);
    if (seconds < 60) return `${Math.floor(seconds / 10) * 10} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  /** Connected: Live while events flow, stale after a long silence, delayed when the server says why. */
  function checkFreshness(now) {
    const current = $("status").dataset.state;
    if (current !== "connected" && current !== "stale" && current !== "delayed") return;
    if (state.delayed) {
      setStatus("delayed", `Delayed — ${state.delayed.reason || "the data is behind"}`);
      return;
    }
    if (state.lastEventAt === null) {
      setStatus("connected");
      return;
    }
    const gap = usualGapMs();
    const limit = Math.max(STALE_MIN_MS, gap ? gap * STALE_FACTOR : STALE_MIN_MS);
    const idle = now - state.lastEventAt;
    if (idle > limit) setStatus("stale", `Stale: no new events for ${idleText(idle)}`);
    else setStatus("connected");
  }

  // ---------------------------------------------------------------- feed

  /** Normalise an `update` message ({id, event}) into the fields the markup needs. */
  function updateView(msg) {
    const e = msg.event || {};
    let value = e.currentScore ?? "–";
    if (e.eventType === "MEMBER_UPDATE") value = fmtInt(e.liveMembers);
    else if (e.eventType === "TRENDING_CHANGE") value = isNum(e.trendingRank) ? `#${e.trendingRank}` : "–";
    const change = String(e.popularityChange ?? "0");
    return {
      id: Number(msg.id), malId: e.malId, title: e.title || `#${e.malId}`,
      eventType: e.eventType, label: TYPE_LABELS[e.eventType] || String(e.eventType || "Update"),
      value, change, changeText: changeText(e.eventType, change), direction: changeDirection(change),
      timestamp: e.timestamp,
    };
  }

  /** A fresh copy of the row the server rendered into <template id=…>. */
  function fromTemplate(id) {
    return $(id).content.firstElementChild.cloneNode(true);
  }

  function fillTime(node, iso) {
    node.setAttribute("datetime", iso || "");
    node.textContent = relativeTime(iso, Date.now());
    const date = new Date(iso);
    if (!Number.isNaN(date.getTime())) node.title = date.toLocaleString();
  }

  function updateItem(v) {
    const item = fromTemplate("update-template");
    item.className = `update ${v.direction}`;
    item.dataset.id = v.id;
    item.dataset.malId = v.malId;
    const link = item.querySelector(".anime-link");
    link.dataset.malId = v.malId;
    link.textContent = v.title;
    const type = item.querySelector(".event-type");
    type.dataset.eventType = v.eventType;
    type.textContent = v.label;
    item.querySelector(".value").textContent = v.value;
    item.querySelector(".change").className = `change ${v.direction}`;
    item.querySelector(".change-text").textContent = v.changeText;
    fillTime(item.querySelector("time"), v.timestamp);
    return item;
  }

  const syncFeedEmpty = () => { $("feed-empty").hidden = feed.children.length > 0; };

  /**
   * Insert one update, newest first, unless its id is already shown.
   * Normally this is a plain prepend; ordered insertion keeps the list
   * correct when a reconnect snapshot merges in slightly older items.
   */
  function addUpdate(msg, highlight) {
    const v = updateView(msg);
    if (!Number.isFinite(v.id) || feed.querySelector(`li[data-id="${v.id}"]`)) return;
    const item = updateItem(v);
    if (highlight) {
      item.classList.add("fresh");
      item.addEventListener("animationend", () => item.classList.remove("fresh"), { once: true });
    }
    let before = feed.firstElementChild;
    while (before && Number(before.dataset.id) > v.id) before = before.nextElementSibling;
    feed.insertBefore(item, before);
    while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();
    syncFeedEmpty();
  }

  function replaceFeed(updates) {
    const items = updates.slice(0, MAX_FEED).map((msg) => updateItem(updateView(msg)));
    feed.replaceChildren(...items);
    syncFeedEmpty();
  }

  // ---------------------------------------------------------------- trending

  /** The movement badge: its class draws the arrow; its words come from the markup. */
  function fillMovement(badge, item) {
    const moved = isNum(item.previousRank) ? item.previousRank - item.rank : null;
    const kind = moved === null ? "new" : moved > 0 ? "up" : moved < 0 ? "down" : "same";
    const word = badge.dataset[`label${kind[0].toUpperCase()}${kind.slice(1)}`] || kind;
    badge.className = `movement ${kind}`;
    badge.textContent = kind === "new" ? "NEW" : kind === "same" ? "–" : String(Math.abs(moved));
    badge.setAttribute("aria-label", kind === "up" || kind === "down" ? `${word} ${Math.abs(moved)}` : word);
  }

  function trendingItem(item) {
    const row = fromTemplate("trending-template");
    row.dataset.malId = item.malId;
    row.querySelector(".rank").textContent = String(item.rank);
    const link = row.querySelector(".anime-link");
    link.dataset.malId = item.malId;
    link.textContent = item.title || `#${item.malId}`;
    row.querySelector(".score").textContent = fmtFixed(item.score, 2);
    row.querySelector(".members").textContent = fmtInt(item.members);
    row.querySelector(".momentum").textContent = fmtFixed(item.momentum, 1);
    fillMovement(row.querySelector(".movement"), item);
    return row;
  }

  function renderTrending(items) {
    state.trending = items || [];
    if (state.followed !== null && !panel.hidden) setText("anime-momentum-rank", momentumRank(state.followed));
    // Rebuilding destroys the focused button, so remember and restore keyboard focus.
    const focused = trending.contains(document.activeElement) ? document.activeElement.dataset.malId : null;
    trending.replaceChildren(...(items || []).map(trendingItem));
    $("trending-empty").hidden = trending.children.length > 0;
    if (focused) {
      const again = trending.querySelector(`button.anime-link[data-mal-id="${focused}"]`);
      if (again) again.focus();
    }
  }

  // ---------------------------------------------------------------- detail panel

  const setText = (id, text) => { $(id).textContent = text; };

  const PANEL_FIELDS = ["anime-score", "anime-members", "anime-momentum-rank", "anime-rank", "anime-events", "anime-last-update"];

  function showLoading(title) {
    panel.hidden = false;
    panel.setAttribute("aria-busy", "true");
    setText("anime-title", "Loading…");
    setText("anime-sub", title || "");
    for (const id of PANEL_FIELDS) setText(id, "–");
    chart.replaceChildren();
    $("anime-title").focus();
    panel.scrollIntoView({ block: "nearest" });
  }

  /** Its place in the trending list now, if it has one. */
  function momentumRank(malId) {
    const item = state.trending.find((t) => t.malId === malId);
    return item ? `#${item.rank}` : "not in the top 20";
  }

  function renderPanel(msg) {
    const c = msg.current || {};
    panel.hidden = false;
    panel.removeAttribute("aria-busy");
    setText("anime-title", c.title || `Anime #${msg.malId}`);
    const lastType = TYPE_LABELS[c.lastEventType] || "";
    const last = c.popularityChange
      ? ` · last change: ${lastType.toLowerCase()} ${changeText(c.lastEventType, c.popularityChange)}`
      : "";
    setText("anime-sub", `MAL #${msg.malId}${last}`);
    setText("anime-score", c.currentScore ?? "–");
    setText("anime-members", fmtInt(c.liveMembers));
    setText("anime-momentum-rank", momentumRank(msg.malId));
    setText("anime-rank", isNum(c.trendingRank) ? `#${c.trendingRank}` : "–");
    setText("anime-events", fmtInt(c.eventCount));
    $("anime-last-update").replaceChildren(c.lastUpdate ? timeEl(c.lastUpdate) : "–");
    drawChart(msg.history || []);
  }

  // Chart geometry (viewBox 0 0 360 170): the legend along the top, score
  // on the left axis, members on the right, time along the bottom.
  const PLOT = { x0: 44, x1: 306, y0: 30, y1: 136 };

  /** History is newest first; returns oldest-first {t, v} points for one field. */
  function series(history, field) {
    return history.slice().reverse()
      .filter((h) => isNum(h[field]))
      .map((h) => ({ t: Date.parse(h.timestamp), v: Number(h[field]) }))
      .filter((p) => Number.isFinite(p.t));
  }

  /**
   * One series scaled to its own min/max on a time axis shared by both:
   * its path, a dot per point (so a few points show), and its range.
   */
  function plotSeries(points, tMin, tMax, cls) {
    if (points.length === 0) return { nodes: [], min: null, max: null };
    const vals = points.map((p) => p.v);
    const min = Math.min(...vals);
    const max = Math.max(...vals);
    const y = (v) => (max === min ? (PLOT.y0 + PLOT.y1) / 2 : PLOT.y1 - ((v - min) / (max - min)) * (PLOT.y1 - PLOT.y0));
    const span = tMax - tMin;
    const x = (p) => (span > 0 ? PLOT.x0 + ((p.t - tMin) / span) * (PLOT.x1 - PLOT.x0) : PLOT.x1);
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p).toFixed(1)} ${y(p.v).toFixed(1)}`).join(" ");
    const nodes = [svgEl("path", { class: `line ${cls}`, d })];
    for (const p of points.slice(-60)) {
      nodes.push(svgEl("circle", { class: `dot ${cls}`, cx: x(p).toFixed(1), cy: y(p.v).toFixed(1), r: 2.2 }));
    }
    return { nodes, min, max };
  }

  /** "12 min ago"-style label for an axis end. */
  function agoLabel(t, now) {
    const text = relativeTime(new Date(t).toISOString(), now);
    return text === "just now" ? "now" : text;
  }

  function drawChart(history) {
    const score = series(history, "currentScore");
    const members = series(history, "liveMembers");
    const times = score.concat(members).map((p) => p.t);
    const tMin = Math.min(...times);
    const tMax = Math.max(...times);
    const s = plotSeries(score, tMin, tMax, "score");
    const m = plotSeries(members, tMin, tMax, "members");
    const now = Date.now();

    const nodes = [
      // Legend with units: colour plus dash pattern, so the series differ without colour.
      svgEl("line", { class: "key score", x1: PLOT.x0, y1: 12, x2: PLOT.x0 + 16, y2: 12 }),
      svgEl("text", { class: "legend", x: PLOT.x0 + 20, y: 16 }, "Score (0–10, left)"),
      svgEl("line", { class: "key members", x1: PLOT.x0 + 140, y1: 12, x2: PLOT.x0 + 156, y2: 12 }),
      svgEl("text", { class: "legend", x: PLOT.x0 + 160, y: 16 }, "Members (right)"),
      svgEl("line", { class: "grid", x1: PLOT.x0, y1: PLOT.y0, x2: PLOT.x1, y2: PLOT.y0 }),
      svgEl("line", { class: "grid", x1: PLOT.x0, y1: PLOT.y1, x2: PLOT.x1, y2: PLOT.y1 }),
      ...s.nodes,
      ...m.nodes,
    ];
    // Each axis labels its series' range (one label when the series is flat).
    const axis = (sr, cls, x, anchor, fmt) => {
      if (sr.min === null) return;
      if (sr.min === sr.max) {
        nodes.push(svgEl("text", { class: `axis ${cls}`, x, y: (PLOT.y0 + PLOT.y1) / 2 + 4, "text-anchor": anchor }, fmt(sr.min)));
        return;
      }
      nodes.push(svgEl("text", { class: `axis ${cls}`, x, y: PLOT.y0 + 4, "text-anchor": anchor }, fmt(sr.max)));
      nodes.push(svgEl("text", { class: `axis ${cls}`, x, y: PLOT.y1 + 4, "text-anchor": anchor }, fmt(sr.min)));
    };
    axis(s, "score", PLOT.x0 - 4, "end", (v) => v.toFixed(2));
    // Compact member counts, unless that makes both ends read the same.
    const membersLabel = fmtCompact(m.min) === fmtCompact(m.max) ? fmtInt : fmtCompact;
    axis(m, "members", PLOT.x1 + 4, "start", membersLabel);
    if (times.length) {
      nodes.push(svgEl("text", { class: "axis", x: PLOT.x0, y: PLOT.y1 + 18 }, agoLabel(tMin, now)));
      nodes.push(svgEl("text", { class: "axis", x: PLOT.x1, y: PLOT.y1 + 18, "text-anchor": "end" }, agoLabel(tMax, now)));
    }
    const sparse = [];
    if (score.length < 2) sparse.push("score");
    if (members.length < 2) sparse.push("members");
    if (sparse.length) {
      nodes.push(svgEl("text", { class: "note", x: (PLOT.x0 + PLOT.x1) / 2, y: PLOT.y1 + 30, "text-anchor": "middle" },
        `Waiting for more ${sparse.join(" and ")} changes`));
    }
    chart.replaceChildren(...nodes);

    const describe = (name, sr, fmt) => (sr.min === null ? `no ${name} changes yet` : `${name} from ${fmt(sr.min)} to ${fmt(sr.max)}`);
    chart.setAttribute("aria-label",
      `Chart of the last ${history.length} events: ${describe("score", s, (v) => v.toFixed(2))}; ${describe("members", m, fmtInt)}.`);
  }

  // ---------------------------------------------------------------- following

  function follow(malId, title) {
    if (!Number.isFinite(malId)) return;
    if (malId === state.followed) {
      $("anime-title").focus(); // already shown: just bring it into view
      return;
    }
    if (state.followed !== null) live.unsubscribe(state.followed);
    state.followed = malId;
    live.subscribe(malId); // if offline, the client sends it on connect
    showLoading(title);
  }

  function closePanel() {
    const closed = state.followed;
    if (closed !== null) live.unsubscribe(closed);
    state.followed = null;
    panel.hidden = true;
    // Return focus to a button for the same anime if one is still on screen.
    const back = document.querySelector(`button.anime-link[data-mal-id="${closed}"]`) || feed;
    back.focus();
  }

  // ---------------------------------------------------------------- messages

  const handlers = {
    // Only a view starting again (a first connect without a resume point, or
    // after a resync) comes as a snapshot the client hands on as a reset.
    snapshot({ message, reset }) {
      const updates = message.updates || [];
      if (reset) replaceFeed(updates);
      renderTrending(message.trending);
      const newest = updates.length ? Date.parse(updates[0].event && updates[0].event.timestamp) : NaN;
      noteEvent(Number.isFinite(newest) ? newest : Date.now());
    },
    update(msg) {
      addUpdate(msg, true);
      noteEvent(Date.now());
    },
    trending: (msg) => renderTrending(msg.items),
    stats(msg) {
      setText("stats-connections", fmtInt(msg.connections));
      setText("stats-connections-word", Number(msg.connections) === 1 ? "connection" : "connections");
      setText("stats-events", fmtInt(msg.eventsLastMinute));
      setText("stats-events-word", Number(msg.eventsLastMinute) === 1 ? "event" : "events");
      const perMinute = Number(msg.eventsLastMinute);
      state.statsGapMs = perMinute > 0 ? 60000 / perMinute : null;
      state.delayed = msg.delayed && typeof msg.delayed === "object" ? msg.delayed : null;
      checkFreshness(Date.now());
    },
    anime: (msg) => msg.malId === state.followed && renderPanel(msg),
    error: (msg) => console.error("server error:", msg.error),
  };

  // ---------------------------------------------------------------- connection

  const STATUS_TEXT = {
    connecting: "Connecting…", connected: "Live", reconnecting: "Reconnecting…",
    recovering: "Catching up…", offline: "Offline",
  };

  function setStatus(name, text) {
    const node = $("status");
    const words = text || STATUS_TEXT[name];
    // Avoid repeated screen-reader announcements.
    if (node.dataset.state === name && node.textContent === words) return;
    node.dataset.state = name;
    node.textContent = words;
  }

  /** The client's state, in words. */
  function onState({ state: name, reconnect, missed, reason }) {
    switch (name) {
      case "connecting":
        setStatus(reconnect ? "reconnecting" : "connecting");
        break;
      case "recovering":
        // Only a reconnect says so: the first connect resumes from the page as rendered.
        if (reconnect) setStatus("recovering", missed ? `Catching up: ${missed} missed updates` : undefined);
        break;
      case "resynced":
        console.info("the feed started again from the server's current view:", reason);
        setStatus("connected");
        checkFreshness(Date.now());
        break;
      case "live":
        setStatus("connected");
        checkFreshness(Date.now());
        break;
      case "offline":
        setStatus("offline");
        break;
      default:
        break;
    }
  }

  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const rendered = Number(body.dataset.lastId);
  const live = new LiveClient({
    url: scheme + location.host + "/ws" + (body.dataset.tokenQuery || ""),
    // The rows the server rendered are applied: resume after them.
    lastId: Number.isSafeInteger(rendered) && rendered >= 0 ? rendered : null,
  });
  live.addEventListener("state", (ev) => onState(ev.detail));
  for (const [type, handler] of Object.entries(handlers)) {
    live.addEventListener(type, (ev) => handler(ev.detail));
  }

  // ---------------------------------------------------------------- wiring

  // One delegated listener serves every title button, present and future.
  // Buttons already turn Enter/Space into clicks.
  document.addEventListener("click", (ev) => {
    const target = ev.target instanceof Element ? ev.target : null;
    if (!target) return;
    const link = target.closest("button.anime-link");
    if (link) {
      follow(Number(link.dataset.malId), link.textContent.trim());
    } else if (target.closest("#anime-close")) {
      closePanel();
    }
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !panel.hidden && panel.contains(document.activeElement)) closePanel();
  });

  // The phone's tabs: one tap between the feed and the trending list.
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      $("layout").dataset.tab = tab.dataset.tab;
      for (const other of document.querySelectorAll(".tab")) {
        other.setAttribute("aria-selected", String(other === tab));
      }
    });
  }

  // The newest row the server rendered is the last event seen so far (a
  // resume sends no snapshot to say so).
  const newestShown = feed.querySelector("time[datetime]");
  if (newestShown) noteEvent(Date.parse(newestShown.getAttribute("datetime")));

  tick();
  setInterval(tick, 1000);
  live.start();
})();
