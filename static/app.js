// Pulseboard dashboard: keeps the server-rendered page live.
//
// - Connection: Server-Sent Events with resume (the last event id), reconnecting with capped
//   exponential backoff and jitter; after repeated stream failures it falls back to long-poll;
//   after the last attempt it stops and offers a Reconnect button.
// - Figures: updated from every snapshot, each with its change against one minute earlier and
//   against the same time yesterday and last week (the snapshot's `compare`; "—" when null).
// - Trust: the status line says up to when every received event is in the figures, and the
//   queue depth when events wait.
// - Charts: uPlot, backfilled from /api/dashboard/history and appended from each snapshot's
//   point; refetched after every reconnect so there is no gap, and when a late event revised a
//   minute (marked on the charts; at most once a minute, with jitter). The current minute is drawn apart, dashed, as partial. A
//   toggle (remembered in localStorage) overlays yesterday's or last week's series, faint,
//   from the history API's `compare`.
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
// Each card's figure as the snapshot's `compare` names it.
const compareKeys = {
  active_users: "active_users",
  orders_per_minute: "orders_per_minute",
  today_minor: "revenue_today_minor",
  last_hour_minor: "revenue_last_hour_minor",
};
const percent = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

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
  showComparison(snapshot.compare, figures);
  showTrust(snapshot.trust);
  setText("[data-seq]", snapshot.seq);
  setText("[data-ingest-state]", snapshot.ingest.state);
  lastUpdate = Date.parse(snapshot.generated_at) || now;
  ageLastUpdate();
  appendPoint(snapshot.point);
}

// The wall screen (kiosk) reuses this script with cards and charts only: every element of the
// snapshot path may be absent, and is then skipped.
function setText(selector, text) {
  const element = root.querySelector(selector);
  if (element) element.textContent = text;
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

// Each card's change against the same time yesterday and last week: absolute and percent,
// coloured by direction; "—" where the history does not reach back.
function showComparison(compare, figures) {
  for (const [name, value] of Object.entries(figures)) {
    for (const against of ["yesterday", "last_week"]) {
      const cell = root.querySelector(`[data-compare="${name}"] [data-against="${against}"]`);
      if (!cell) continue;
      const then = compare?.[against]?.[compareKeys[name]];
      if (then == null) {
        cell.textContent = "—";
        cell.dataset.direction = "none";
        continue;
      }
      const delta = value - then;
      const sign = delta > 0 ? "+" : delta < 0 ? "−" : "";
      const arrow = delta > 0 ? "▲ " : delta < 0 ? "▼ " : "• ";
      const share = then === 0 ? (delta === 0 ? "0 %" : "new") : `${sign}${percent.format(Math.abs(delta / then) * 100)} %`;
      cell.textContent = `${arrow}${sign}${formatters[name](Math.abs(delta))} (${share})`;
      cell.dataset.direction = delta > 0 ? "up" : delta < 0 ? "down" : "flat";
    }
  }
}

// ---------- trust ----------
let revised = new Set(); // minutes (Unix seconds) of the last hour revised by late events
window.pulseboardRevised = revised;
const clockTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });

function showTrust(trust) {
  const complete = root.querySelector("[data-complete]");
  const through = trust?.complete_through ? new Date(trust.complete_through) : null;
  if (complete) {
    complete.hidden = !through || Number.isNaN(through.getTime());
    const time = complete.querySelector("[data-complete-through]");
    if (!complete.hidden && time) {
      time.dateTime = through.toISOString();
      time.textContent = clockTime.format(through);
    }
  }
  const depth = trust?.queue_depth ?? 0;
  const queue = root.querySelector("[data-queue]");
  if (queue) {
    queue.hidden = depth === 0;
    const count = queue.querySelector("[data-queue-depth]");
    if (count) count.textContent = integer.format(depth);
  }
  const minutes = new Set((trust?.revised_minutes ?? []).map((m) => Date.parse(m) / 1000));
  // A minute newly revised: the chart's earlier points changed, which no snapshot carries.
  const fresh = [...minutes].some((m) => !revised.has(m) && m >= (series.xs[0] ?? Infinity));
  revised = minutes;
  window.pulseboardRevised = revised;
  if (fresh) scheduleRevisedRead();
}

// Late events revise minutes at any time, and every open page sees the same snapshot: the
// history is read again at most once a minute per page, after a random delay of up to
// REVISED_JITTER_MS, so that the pages' reads spread out instead of arriving together.
const REVISED_JITTER_MS = 10000;
let revisedReadAt = -Infinity;
let revisedTimer = null;
function scheduleRevisedRead() {
  if (revisedTimer !== null) return;
  const wait = Math.max(0, revisedReadAt + 60000 - Date.now()) + Math.random() * REVISED_JITTER_MS;
  revisedTimer = setTimeout(() => {
    revisedTimer = null;
    revisedReadAt = Date.now();
    backfill().catch(report);
  }, wait);
}

// ---------- last update, ageing visibly ----------
let lastUpdate = Date.parse(root.dataset.generatedAt) || null;
const updated = root.querySelector("[data-updated]");
function ageLastUpdate() {
  if (!lastUpdate || !updated) return;
  const seconds = Math.max(0, Math.round((Date.now() - lastUpdate) / 1000));
  updated.dateTime = new Date(lastUpdate).toISOString();
  updated.textContent = `${new Date(lastUpdate).toLocaleTimeString()} (${seconds} s ago)`;
  updated.parentElement?.classList.toggle("stale", seconds * 1000 > Math.max(10000, 8 * intervalMs));
}
setInterval(ageLastUpdate, 1000);

// ---------- charts ----------
let rangeMinutes = 60;
const series = { xs: [], orders: [], revenue: [], overlayOrders: [], overlayRevenue: [] };
const OVERLAYS = { "": null, "1d": "Yesterday", "7d": "Last week" };
// The stored choice applies only where the page has the toggle (not on the wall screen).
const hasOverlayToggle = root.querySelector("[data-overlay]") !== null;
let overlay = hasOverlayToggle ? localStorage.getItem("pulseboard-compare") ?? "" : "";
if (!(overlay in OVERLAYS)) overlay = "";
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

// Revised minutes: a small downward triangle at the top of the plot and a faint line down it.
function drawRevised(u) {
  const { ctx } = u;
  const min = u.scales.x.min;
  const max = u.scales.x.max;
  let drawn = 0;
  ctx.save();
  ctx.fillStyle = "#d97706";
  const size = 6 * devicePixelRatio;
  for (const minute of revised) {
    if (min == null || minute < min || minute > max) continue;
    const x = u.valToPos(minute, "x", true);
    const top = u.bbox.top;
    ctx.globalAlpha = 1;
    ctx.beginPath();
    ctx.moveTo(x - size, top);
    ctx.lineTo(x + size, top);
    ctx.lineTo(x, top + size * 1.5);
    ctx.closePath();
    ctx.fill();
    ctx.globalAlpha = 0.3;
    ctx.fillRect(x - devicePixelRatio, top, 2 * devicePixelRatio, u.bbox.height);
    drawn += 1;
  }
  ctx.restore();
  u.root.dataset.revisedDrawn = String(drawn);
}

function chartOptions(label, color, format, element) {
  const fontPx = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  const font = `${Math.round(fontPx * 0.8)}px system-ui, sans-serif`;
  const value = (u, v) => (v == null ? "—" : format(v));
  // A canvas knows no `currentColor`: the axes take the page's text colour (light when dark).
  const ink = getComputedStyle(element).color || "currentColor";
  return {
    ...chartSize(element),
    series: [
      {},
      { label, stroke: color, width: 2, fill: `${color}22`, value },
      // The current minute, still filling: dashed from the last whole minute, a hollow point.
      { label: "this minute so far", stroke: color, width: 2, dash: [6, 5], value, points: { show: true, size: 8, width: 2, fill: "transparent", stroke: color, filter: (u) => [u.data[0].length - 1] } },
      { label: OVERLAYS[overlay] ?? "Earlier", stroke: `${color}80`, width: 1.5, dash: [2, 3], show: overlay !== "", value },
    ],
    hooks: { draw: [drawRevised] },
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
    if (!element) return;
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
  place("orders", "Orders", "#2563eb", (v) => integer.format(v), chartData(series.orders, series.overlayOrders));
  place("revenue", "Revenue", "#16a34a", formatMoney, chartData(series.revenue, series.overlayRevenue));
}

// A chart's data: the whole minutes solid, the current (last) minute apart as partial, so that
// a minute still filling never reads as a dip; and the overlay, aligned by position.
function chartData(values, earlier) {
  const last = values.length - 1;
  const whole = values.map((v, i) => (i === last ? null : v));
  const partial = values.map((v, i) => (i >= last - 1 ? v : null));
  const overlaid = series.xs.map((_, i) => (overlay ? earlier[i] ?? null : null));
  return [series.xs, whole, partial, overlaid];
}

function redraw() {
  charts.orders?.setData(chartData(series.orders, series.overlayOrders));
  charts.revenue?.setData(chartData(series.revenue, series.overlayRevenue));
}

async function fetchHistory(query) {
  const response = await fetch(`/api/dashboard/history?minutes=${rangeMinutes}${query}`, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`history: ${response.status}`);
  return (await response.json()).points;
}

async function backfill() {
  const [points, earlier] = await Promise.all([fetchHistory(""), overlay ? fetchHistory(`&compare=${overlay}`) : null]);
  series.xs = points.map((p) => Date.parse(p.minute) / 1000);
  series.orders = points.map((p) => p.orders);
  series.revenue = points.map((p) => p.revenue_minor);
  setOverlay(earlier);
  // Snapshots that arrived while the history was on its way are newer than it.
  if (latestPoint) appendPoint(latestPoint);
  else redraw();
}

// The earlier series, aligned with today's from the right (both end at the current minute).
function setOverlay(points) {
  const shift = series.xs.length - (points?.length ?? 0);
  series.overlayOrders = series.xs.map((_, i) => points?.[i - shift]?.orders ?? null);
  series.overlayRevenue = series.xs.map((_, i) => points?.[i - shift]?.revenue_minor ?? null);
}

async function refreshOverlay() {
  if (!overlay) return;
  setOverlay(await fetchHistory(`&compare=${overlay}`));
  redraw();
}

function showOverlayChoice() {
  for (const b of root.querySelectorAll("[data-overlay]")) b.setAttribute("aria-pressed", String(b.dataset.overlay === overlay));
  root.dataset.compareOverlay = overlay;
  for (const chart of Object.values(charts)) {
    chart.setSeries(3, { show: overlay !== "" });
    const label = chart.root.querySelectorAll(".u-legend .u-series")[3]?.querySelector(".u-label");
    if (label) label.textContent = OVERLAYS[overlay] ?? "Earlier";
  }
}

for (const button of root.querySelectorAll("[data-overlay]")) {
  button.addEventListener("click", () => {
    overlay = button.dataset.overlay in OVERLAYS ? button.dataset.overlay : "";
    localStorage.setItem("pulseboard-compare", overlay);
    showOverlayChoice();
    if (overlay) refreshOverlay().catch(report);
    else redraw();
  });
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
    // A new minute: the earlier series moves on by one too.
    refreshOverlay().catch(report);
  }
  redraw();
}

function pushPoint(x, orders, revenue) {
  series.xs.push(x);
  series.orders.push(orders);
  series.revenue.push(revenue);
  series.overlayOrders.push(null);
  series.overlayRevenue.push(null);
  while (series.xs.length > rangeMinutes) {
    for (const name of ["xs", "orders", "revenue", "overlayOrders", "overlayRevenue"]) series[name].shift();
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
  if (!banner || dismissed.has(a.id) || banner.querySelector(`[data-announcement-id="${a.id}"]`)) return;
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

banner?.addEventListener("click", (event) => {
  const button = event.target.closest("[data-dismiss]");
  if (!button) return;
  const item = button.closest("[data-announcement-id]");
  dismissed.add(Number(item.dataset.announcementId));
  sessionStorage.setItem("pulseboard-dismissed", JSON.stringify([...dismissed]));
  item.remove();
});
for (const item of banner?.querySelectorAll("[data-announcement-id]") ?? []) {
  if (dismissed.has(Number(item.dataset.announcementId))) item.remove();
}

// ---------- connection ----------
const status = root.querySelector("[data-connection]");
const statusDot = status?.querySelector(".dot");
const statusText = status?.querySelector("[data-connection-text]");
// A page without the button gets a detached one: it simply never shows.
const reconnectButton = root.querySelector("[data-reconnect]") ?? document.createElement("button");
// A wall screen has nobody to press Reconnect: it tries for ever (every 30 s at most).
const reconnect = new Reconnect({ connect, setStatus, button: reconnectButton, maxAttempts: kiosk ? Infinity : undefined });

let lastEventId = root.dataset.lastEventId || "";
let streamFailures = 0;
let usePoll = false;
let source = null;
let everConnected = false;

function setStatus(state, text) {
  if (statusDot) statusDot.dataset.state = state;
  if (statusText) statusText.textContent = text;
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
showOverlayChoice();
backfill().catch(report);
ageLastUpdate();
connect();
