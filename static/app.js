// Pulseboard dashboard: keeps the server-rendered page live.
//
// - Connection: Server-Sent Events with resume (the last event id), reconnecting with capped
//   exponential backoff and jitter; after repeated stream failures it falls back to long-poll;
//   after the last attempt it stops and offers a Reconnect button.
// - Figures: updated from every snapshot, each with its change against one minute earlier.
// - Charts: uPlot, backfilled from /api/dashboard/history and appended from each snapshot's
//   point; refetched after every reconnect so there is no gap.
// - Announcements: a banner, newest first, dismissible; missed ones arrive on resume.
// - The wall screen (/kiosk, `data-kiosk`) runs this same module: it never stops reconnecting,
//   and when its stream fails it asks whether its link is still good (the snapshot's 401 says
//   it is not): then it stops and says "this screen's link was revoked".
import uPlot from "./vendor/uplot/uPlot.esm.js";
import { Reconnect } from "./reconnect.js";

const root = document.querySelector("[data-dashboard]");
const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const currency = root.dataset.currency || "USD";
const intervalMs = Number(root.dataset.intervalMs) || 250;
const kiosk = root.hasAttribute("data-kiosk");

const STREAM_FAILURES_BEFORE_POLL = 3;
const POLL_TIMEOUT_S = 25;

// Errors are kept for the browser tests, and shown in the console as usual.
window.pulseboardErrors = [];
window.addEventListener("error", (e) => window.pulseboardErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.pulseboardErrors.push(String(e.reason)));
document.addEventListener("securitypolicyviolation", (e) => window.pulseboardErrors.push(`CSP blocked ${e.blockedURI} (${e.violatedDirective})`));

// ---------- formatting ----------
const money = new Intl.NumberFormat(undefined, { style: "currency", currency });
const minorDigits = money.resolvedOptions().maximumFractionDigits;
const formatMoney = (minor) => money.format(minor / 10 ** minorDigits);
const integer = new Intl.NumberFormat();
const formatters = {
  active_users: (v) => integer.format(v),
  orders_per_minute: (v) => integer.format(v),
  today_minor: formatMoney,
  last_hour_minor: formatMoney,
};

// ---------- figures ----------
const history = []; // [{at, figures}] for the trend against one minute earlier

function figuresOf(snapshot) {
  return {
    active_users: snapshot.active_users,
    orders_per_minute: snapshot.orders_per_minute,
    today_minor: snapshot.revenue.today_minor,
    last_hour_minor: snapshot.revenue.last_hour_minor,
  };
}

function showSnapshot(snapshot) {
  const figures = figuresOf(snapshot);
  const now = Date.now();
  history.push({ at: now, figures });
  while (history.length > 1 && history[1].at <= now - 60000) history.shift();
  const minuteAgo = history[0].at <= now - 55000 ? history[0].figures : null;
  for (const [name, value] of Object.entries(figures)) {
    const cell = root.querySelector(`[data-figure="${name}"]`);
    if (cell) cell.textContent = formatters[name](value);
    const trend = root.querySelector(`[data-trend="${name}"]`);
    if (trend) showTrend(trend, name, minuteAgo ? value - minuteAgo[name] : null);
  }
  root.querySelector("[data-seq]").textContent = snapshot.seq;
  root.querySelector("[data-ingest-state]").textContent = snapshot.ingest.state;
  lastUpdate = Date.parse(snapshot.generated_at) || now;
  ageLastUpdate();
  appendPoint(snapshot.point);
}

function showTrend(element, name, delta) {
  if (delta === null) {
    element.textContent = "";
    element.dataset.direction = "none";
    return;
  }
  const arrow = delta > 0 ? "▲" : delta < 0 ? "▼" : "•";
  const size = formatters[name](Math.abs(delta));
  element.textContent = `${arrow} ${delta === 0 ? "no change" : size} vs a minute ago`;
  element.dataset.direction = delta > 0 ? "up" : delta < 0 ? "down" : "flat";
}

// ---------- last update, ageing visibly ----------
let lastUpdate = Date.parse(root.dataset.generatedAt) || null;
const updated = root.querySelector("[data-updated]");
function ageLastUpdate() {
  if (!lastUpdate) return;
  const seconds = Math.max(0, Math.round((Date.now() - lastUpdate) / 1000));
  updated.dateTime = new Date(lastUpdate).toISOString();
  updated.textContent = `${new Date(lastUpdate).toLocaleTimeString()} (${seconds} s ago)`;
  updated.parentElement.classList.toggle("stale", seconds * 1000 > Math.max(10000, 8 * intervalMs));
}
setInterval(ageLastUpdate, 1000);

// ---------- charts ----------
let rangeMinutes = 60;
const series = { xs: [], orders: [], revenue: [] };
window.pulseboardSeries = series; // read by the browser tests
const charts = {};
window.pulseboardCharts = charts; // read by the browser tests

// Charts follow their box: its width, a height from the viewport, text from the root font size
// (so a wall screen gets large labels as the rest of the page does).
// A wall screen's charts fill the room its layout leaves them instead (kiosk.css).
function chartSize(element) {
  const width = Math.max(240, element.clientWidth);
  if (kiosk) return { width, height: Math.max(120, element.clientHeight) };
  return {
    width,
    height: Math.round(Math.min(520, Math.max(200, window.innerHeight * 0.28))),
  };
}

// The y axis grows to its longest label: a fixed width cut "$60,000.00" to "0,000.00". It never
// gets narrower than `minimum`, which also leaves room for the first time label below it.
// uPlot calls this while it lays the chart out, first without labels, then with each new set
// of ticks; after two rounds it keeps the size it has, so the layout settles.
const measure = document.createElement("canvas").getContext("2d");
function labelAxisSize(font, minimum) {
  return (u, values, axisIndex, cycle) => {
    const axis = u.axes[axisIndex];
    if (cycle > 1) return axis._size;
    measure.font = font;
    const widest = Math.max(0, ...(values ?? []).map((v) => measure.measureText(v).width));
    return Math.max(minimum, Math.ceil(axis.ticks.size + axis.gap + widest));
  };
}

function chartOptions(label, color, format, element) {
  const fontPx = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  const font = `${Math.round(fontPx * 0.8)}px system-ui, sans-serif`;
  // A canvas knows no `currentColor`: the axes take the page's text colour (light when dark).
  const ink = getComputedStyle(element).color || "currentColor";
  return {
    ...chartSize(element),
    series: [{}, { label, stroke: color, width: 2, fill: `${color}22`, value: (u, v) => (v == null ? "—" : format(v)) }],
    axes: [
      { stroke: ink, font },
      { stroke: ink, font, values: (u, ticks) => ticks.map(format), size: labelAxisSize(font, Math.round(fontPx * 4.5)) },
    ],
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
  };
}

function makeCharts() {
  const place = (name, label, color, format, data) => {
    const element = root.querySelector(`[data-chart="${name}"]`);
    charts[name] = new uPlot(chartOptions(label, color, format, element), data, element);
    // Only a change of the box's width resizes the chart, on the next frame: resizing inside the
    // observer's callback would notify it again in the same frame.
    let width = element.clientWidth;
    let height = element.clientHeight;
    new ResizeObserver(() => {
      if (element.clientWidth === width && (!kiosk || element.clientHeight === height)) return;
      width = element.clientWidth;
      height = element.clientHeight;
      requestAnimationFrame(() => charts[name].setSize(chartSize(element)));
    }).observe(element);
  };
  place("orders", "Orders", "#2563eb", (v) => integer.format(v), [series.xs, series.orders]);
  place("revenue", "Revenue", "#16a34a", formatMoney, [series.xs, series.revenue]);
}

function redraw() {
  charts.orders?.setData([series.xs, series.orders]);
  charts.revenue?.setData([series.xs, series.revenue]);
}

async function backfill() {
  const response = await fetch(`/api/dashboard/history?minutes=${rangeMinutes}`, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`history: ${response.status}`);
  const { points } = await response.json();
  series.xs = points.map((p) => Date.parse(p.minute) / 1000);
  series.orders = points.map((p) => p.orders);
  series.revenue = points.map((p) => p.revenue_minor);
  // Snapshots that arrived while the history was on its way are newer than it.
  if (latestPoint) appendPoint(latestPoint);
  else redraw();
}

let latestPoint = null;

function appendPoint(point) {
  if (!point) return;
  latestPoint = point;
  if (series.xs.length === 0) return;
  const x = Date.parse(point.minute) / 1000;
  const last = series.xs.length - 1;
  if (x === series.xs[last]) {
    series.orders[last] = point.orders;
    series.revenue[last] = point.revenue_minor;
  } else if (x > series.xs[last]) {
    // Minutes without a snapshot in between are zeros, as the history has them.
    for (let m = series.xs[last] + 60; m < x; m += 60) pushPoint(m, 0, 0);
    pushPoint(x, point.orders, point.revenue_minor);
  }
  redraw();
}

function pushPoint(x, orders, revenue) {
  series.xs.push(x);
  series.orders.push(orders);
  series.revenue.push(revenue);
  while (series.xs.length > rangeMinutes) {
    series.xs.shift();
    series.orders.shift();
    series.revenue.shift();
  }
}

for (const button of root.querySelectorAll("[data-range]")) {
  button.addEventListener("click", () => {
    rangeMinutes = Number(button.dataset.range);
    for (const b of root.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b === button));
    backfill().catch(report);
  });
}

// ---------- announcements ----------
const banner = root.querySelector("[data-announcements]");
const dismissed = new Set(JSON.parse(sessionStorage.getItem("pulseboard-dismissed") || "[]"));

function showAnnouncement(a) {
  if (dismissed.has(a.id) || banner.querySelector(`[data-announcement-id="${a.id}"]`)) return;
  const item = document.createElement("div");
  item.className = `announcement level-${a.level}`;
  item.dataset.announcementId = a.id;
  item.setAttribute("role", a.level === "critical" ? "alert" : "status");
  const text = document.createElement("p");
  const level = document.createElement("strong");
  level.textContent = a.level;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = ` — ${a.author}, ${new Date(a.created_at).toLocaleString()}`;
  text.append(level, ` ${a.message}`, meta);
  const close = document.createElement("button");
  close.type = "button";
  close.className = "dismiss";
  close.dataset.dismiss = "";
  close.setAttribute("aria-label", "Dismiss announcement");
  close.textContent = "×";
  item.append(text, close);
  banner.prepend(item);
}

banner.addEventListener("click", (event) => {
  const button = event.target.closest("[data-dismiss]");
  if (!button) return;
  const item = button.closest("[data-announcement-id]");
  dismissed.add(Number(item.dataset.announcementId));
  sessionStorage.setItem("pulseboard-dismissed", JSON.stringify([...dismissed]));
  item.remove();
});
for (const item of banner.querySelectorAll("[data-announcement-id]")) {
  if (dismissed.has(Number(item.dataset.announcementId))) item.remove();
}

// ---------- connection ----------
const status = root.querySelector("[data-connection]");
const statusDot = status.querySelector(".dot");
const statusText = status.querySelector("[data-connection-text]");
const reconnectButton = root.querySelector("[data-reconnect]");
// A wall screen has nobody to press Reconnect: it tries for ever (every 30 s at most).
const reconnect = new Reconnect({ connect, setStatus, button: reconnectButton, maxAttempts: kiosk ? Infinity : undefined });

let lastEventId = root.dataset.lastEventId || "";
let streamFailures = 0;
let usePoll = false;
let source = null;
let everConnected = false;

function setStatus(state, text) {
  statusDot.dataset.state = state;
  statusText.textContent = text;
  root.dataset.connection = state;
}

function onEvent(kind, data, id) {
  if (id) lastEventId = id;
  const payload = JSON.parse(data);
  if (kind === "snapshot") showSnapshot(payload);
  else if (kind === "announcement") showAnnouncement(payload);
}

function connected() {
  const reconnected = everConnected;
  everConnected = true;
  reconnect.connected();
  streamFailures = 0;
  setStatus("connected", usePoll ? "Connected (long-poll)" : "Connected");
  // After an outage the history fills the minutes that were missed.
  if (reconnected) backfill().catch(report);
}

function openStream() {
  const query = lastEventId ? `?lastEventId=${encodeURIComponent(lastEventId)}` : "";
  source = new EventSource(`/api/dashboard/stream${query}`);
  source.addEventListener("open", connected);
  for (const kind of ["snapshot", "announcement"]) {
    source.addEventListener(kind, (e) => onEvent(kind, e.data, e.lastEventId));
  }
  source.addEventListener("error", () => {
    // EventSource would retry on its own, without backoff: take over.
    source.close();
    source = null;
    streamFailures += 1;
    if (streamFailures >= STREAM_FAILURES_BEFORE_POLL) usePoll = true;
    connectionFailed();
  });
}

async function pollLoop() {
  let first = true;
  while (usePoll && !reconnect.waiting) {
    const url = `/api/dashboard/poll?timeout=${first ? 0 : POLL_TIMEOUT_S}${lastEventId ? `&after=${encodeURIComponent(lastEventId)}` : ""}`;
    let body;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`poll: ${response.status}`);
      body = await response.json();
    } catch {
      connectionFailed();
      return;
    }
    if (first) {
      connected();
      first = false;
    }
    for (const event of body.events) onEvent(event.event, JSON.stringify(event.data), event.id);
  }
}

function connect() {
  reconnect.begin();
  if (usePoll) pollLoop();
  else openStream();
}

function scheduleReconnect() {
  reconnect.schedule();
}

// The connection failed or was closed: try again, unless this is a wall screen whose link is
// no longer good.
function connectionFailed() {
  if (!kiosk) return scheduleReconnect();
  linkRevoked().then((revoked) => (revoked ? showRevoked() : scheduleReconnect()));
}

async function linkRevoked() {
  try {
    const response = await fetch("/api/dashboard/snapshot", { credentials: "same-origin", cache: "no-store" });
    return response.status === 401;
  } catch {
    return false; // the instance is away: reconnect
  }
}

function showRevoked() {
  usePoll = false;
  root.setAttribute("data-revoked-link", "");
  root.querySelector("[data-revoked]").hidden = false;
  setStatus("disconnected", "Link revoked");
}

reconnectButton?.addEventListener("click", () => {
  usePoll = false;
  streamFailures = 0;
  reconnect.restart();
});

// ---------- refresh ----------
const refreshButton = root.querySelector("[data-refresh]");
refreshButton?.addEventListener("click", async () => {
  refreshButton.disabled = true;
  try {
    const response = await fetch("/api/dashboard/refresh", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
    });
    if (response.ok) showSnapshot(await response.json());
  } catch (error) {
    report(error);
  } finally {
    refreshButton.disabled = false;
  }
});

function report(error) {
  console.warn("pulseboard:", error);
}

// ---------- start ----------
makeCharts();
backfill().catch(report);
ageLastUpdate();
connect();
