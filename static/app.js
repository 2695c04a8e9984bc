// CatLog Live – the page. It is built from the elements any page can embed
// (catlog-live.js: the feed, trending and anime views, one connection); the
// server renders them (declarative shadow DOM) so the page shows real
// content before any script runs. What is left here is the page's own: the
// indicator and figures in the header, the phone's tabs, and the panel a
// chosen title opens.
import { configure, connectionTo } from "./catlog-live.js";

const $ = (id) => document.getElementById(id);
document.documentElement.classList.add("js"); // the phone's tabs need the script

const token = new URLSearchParams(document.body.dataset.tokenQuery || "").get("token");
if (token) configure({ token });

const panel = $("anime-panel");
const anime = $("anime");
const feedEl = $("live-feed");
const conn = connectionTo(new URL("/", location.href).href);

// ---------------------------------------------------------------- the indicator

// The words the connection says, under the names the page's styles know.
const STATE_NAMES = { live: "connected", reconnecting: "reconnecting", connecting: "connecting", stale: "stale", delayed: "delayed", "not-allowed": "offline" };

function showStatus({ state, text }) {
  const node = $("status");
  const name = state === "reconnecting" && text.startsWith("Offline") ? "offline" : STATE_NAMES[state] || state;
  // Avoid repeated screen-reader announcements.
  if (node.dataset.state === name && node.textContent === text) return;
  node.dataset.state = name;
  node.textContent = text;
}
conn.addEventListener("status", (ev) => showStatus(ev.detail));
showStatus(conn.status);

const fmtInt = (n) => (Number.isFinite(Number(n)) ? Number(n).toLocaleString("en-US") : "–");
conn.addEventListener("stats", ({ detail: msg }) => {
  $("stats-connections").textContent = fmtInt(msg.connections);
  $("stats-connections-word").textContent = Number(msg.connections) === 1 ? "connection" : "connections";
  $("stats-events").textContent = fmtInt(msg.eventsLastMinute);
  $("stats-events-word").textContent = Number(msg.eventsLastMinute) === 1 ? "event" : "events";
});

// ---------------------------------------------------------------- following

// A title chosen in the feed or the trending list (click, Enter, Space):
// the anime element follows it (follow-selection); the panel opens.
document.addEventListener("catlog-live-select", () => {
  panel.hidden = false;
  requestAnimationFrame(() => {
    const title = anime.shadowRoot && anime.shadowRoot.getElementById("anime-title");
    if (title) title.focus();
    panel.scrollIntoView({ block: "nearest" });
  });
});

function closePanel() {
  const closed = anime.getAttribute("mal-id");
  anime.removeAttribute("mal-id");
  panel.hidden = true;
  // Focus back on a title for the same anime if one is still on screen.
  for (const host of [feedEl, $("live-trending")]) {
    const back = host.shadowRoot && host.shadowRoot.querySelector(`button.title[data-mal-id="${closed}"]`);
    if (back) {
      back.focus();
      return;
    }
  }
  feedEl.focus();
}

$("anime-close").addEventListener("click", closePanel);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !panel.hidden && panel.contains(document.activeElement)) closePanel();
});

// ---------------------------------------------------------------- the phone's tabs

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    $("layout").dataset.tab = tab.dataset.tab;
    for (const other of document.querySelectorAll(".tab")) {
      other.setAttribute("aria-selected", String(other === tab));
    }
  });
}
