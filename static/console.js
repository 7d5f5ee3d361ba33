// Pulseboard operations console: the /console page over the /ws/console WebSocket.
//
// - Command line: `name` or `name {json payload}`; ↑/↓ walk the history, Tab completes a
//   command name from `help`. Each command is shown with its reply under it (matched by id).
// - While disconnected, commands are queued (shown as queued) and sent in order on reconnect;
//   reconnects use capped exponential backoff with jitter, and the status indicator is the
//   dashboard's (Connected / Reconnecting (attempt n, next try in s) / Disconnected).
// - Panes: cluster status (asked every few seconds), operators present, the live event tail
//   and the audit trail (pushes of the `snapshots`, `presence`, `events` and `audit` topics).
// - `ingest.pause` and `dlq.purge` ask for confirmation first.

import { Reconnect } from "./reconnect.js";

const root = document.querySelector("[data-console]");

const STATUS_EVERY_MS = 5000;
const KEEP_TAIL = 50;
const KEEP_AUDIT = 50;
const NEEDS_CONFIRMATION = {
  "ingest.pause": "Pause ingestion on every instance? Events will wait in the queue until resumed.",
  "dlq.purge": "Drop every dead letter? This cannot be undone.",
};

// Errors are kept for the browser tests, and shown in the console as usual.
window.pulseboardErrors = [];
window.addEventListener("error", (e) => window.pulseboardErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.pulseboardErrors.push(String(e.reason)));
document.addEventListener("securitypolicyviolation", (e) => window.pulseboardErrors.push(`CSP blocked ${e.blockedURI} (${e.violatedDirective})`));

const $ = (css) => root.querySelector(css);
const transcript = $("[data-transcript]");
const input = $("[data-command-input]");
const form = $("[data-command-form]");
const names = $("[data-command-names]");
const statusDot = $("[data-connection] .dot");
const statusText = $("[data-connection-text]");
const reconnectButton = $("[data-reconnect]");
const reconnect = new Reconnect({ connect, setStatus, button: reconnectButton });

let commands = (root.dataset.commands || "").split(" ").filter(Boolean);
let socket = null;
let open = false;
let nextId = 0;
const queue = []; // entries typed while disconnected, in order
const pending = new Map(); // id -> entry (shown in the transcript) or a handler
const history = [];
let historyAt = 0;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(state, text) {
  statusDot.dataset.state = state;
  statusText.textContent = text;
  root.dataset.connection = state;
}

function showCommands() {
  names.replaceChildren(...commands.map((name) => { const o = el("option"); o.value = name; return o; }));
}

// ---------- parsing what was typed ----------
function parse(line) {
  const text = line.trim();
  const space = text.search(/\s/);
  const type = space < 0 ? text : text.slice(0, space);
  const rest = space < 0 ? "" : text.slice(space + 1).trim();
  if (!rest) return { type };
  return { type, payload: JSON.parse(rest) };
}

// ---------- the transcript ----------
function addEntry(line) {
  const item = el("li", "entry");
  const command = el("div", "command");
  command.append(el("span", "prompt", ">"), el("code", "", line));
  const state = el("span", "state");
  command.append(state);
  const reply = el("pre", "reply");
  item.append(command, reply);
  transcript.append(item);
  item.scrollIntoView({ block: "nearest" });
  return { item, state, reply };
}

function setEntryState(entry, state, text) {
  entry.item.dataset.state = state;
  entry.state.textContent = text;
}

function showReply(entry, frame) {
  if (frame.ok) {
    setEntryState(entry, "ok", "ok");
    entry.reply.textContent = JSON.stringify(frame.payload, null, 2);
  } else {
    setEntryState(entry, "error", frame.error.code);
    entry.reply.textContent = frame.error.message;
  }
  entry.item.dataset.replied = "true";
}

// ---------- sending ----------
function send(type, payload, onAnswer) {
  const id = `c-${++nextId}`;
  const frame = payload === undefined ? { id, type } : { id, type, payload };
  pending.set(id, onAnswer);
  socket.send(JSON.stringify(frame));
  return id;
}

function sendEntry(entry) {
  const id = send(entry.type, entry.payload, (frame) => showReply(entry.view, frame));
  entry.view.item.dataset.id = id;
  setEntryState(entry.view, "sent", "…");
}

function submit(line) {
  let parsed;
  try {
    parsed = parse(line);
  } catch (error) {
    const view = addEntry(line);
    setEntryState(view, "error", "not sent");
    view.reply.textContent = `The payload is not JSON: ${error.message}`;
    return;
  }
  const view = addEntry(line);
  const entry = { ...parsed, view };
  const question = NEEDS_CONFIRMATION[parsed.type];
  if (question) {
    confirmThen(question, () => {
      if (parsed.type === "dlq.purge") entry.payload = { ...(entry.payload || {}), confirm: true };
      dispatch(entry);
    }, () => setEntryState(view, "cancelled", "cancelled"));
  } else {
    dispatch(entry);
  }
}

function dispatch(entry) {
  if (open) {
    sendEntry(entry);
  } else {
    queue.push(entry);
    setEntryState(entry.view, "queued", "queued");
  }
}

function flushQueue() {
  while (open && queue.length) sendEntry(queue.shift());
}

// ---------- confirmation ----------
const confirmBox = $("[data-confirm]");
function confirmThen(question, yes, no) {
  $("[data-confirm-text]").textContent = question;
  confirmBox.hidden = false;
  const done = (action) => () => {
    confirmBox.hidden = true;
    $("[data-confirm-yes]").onclick = null;
    $("[data-confirm-no]").onclick = null;
    action();
    input.focus();
  };
  $("[data-confirm-yes]").onclick = done(yes);
  $("[data-confirm-no]").onclick = done(no);
  $("[data-confirm-yes]").focus();
}

// ---------- the command line ----------
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const line = input.value.trim();
  if (!line) return;
  history.push(line);
  historyAt = history.length;
  input.value = "";
  submit(line);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "ArrowUp" && historyAt > 0) {
    historyAt -= 1;
    input.value = history[historyAt];
    event.preventDefault();
  } else if (event.key === "ArrowDown" && historyAt < history.length) {
    historyAt += 1;
    input.value = history[historyAt] ?? "";
    event.preventDefault();
  } else if (event.key === "Tab" && input.value && !input.value.includes(" ")) {
    const matches = commands.filter((name) => name.startsWith(input.value));
    if (matches.length) {
      event.preventDefault();
      input.value = matches.length === 1 ? `${matches[0]} ` : commonPrefix(matches);
    }
  }
});

function commonPrefix(words) {
  let prefix = words[0];
  for (const word of words) while (!word.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix;
}

// ---------- panes ----------
function showStatus(payload) {
  $("[data-leader]").textContent = payload.leader ?? "none";
  $("[data-ingest-state]").textContent = payload.ingest ?? "unknown";
  $("[data-queue-depth]").textContent = payload.queue_depth;
  $("[data-dead-letters]").textContent = payload.dead_letters;
  const rows = payload.nodes.map((node) => {
    const row = el("tr");
    row.dataset.state = node.state;
    const c = node.connections || {};
    for (const text of [node.node, node.state, node.is_leader ? "leader" : "follower", node.ingest ?? "—",
      node.state === "ok" ? `${c.sse ?? 0} / ${c.ws ?? 0} / ${c.poll ?? 0}` : "—"]) {
      row.append(el("td", "", text));
    }
    return row;
  });
  $("[data-nodes] tbody").replaceChildren(...rows);
  $("[data-status-age]").textContent = `as of ${new Date().toLocaleTimeString()}`;
}

function showPresence(payload) {
  const items = payload.operators.map((o) => el("li", "", `${o.user} on ${o.node}`));
  $("[data-presence]").replaceChildren(...items);
}

function showEvent(payload) {
  const e = payload.event;
  const amount = e.amount_minor == null ? "" : ` ${e.amount_minor}`;
  const item = el("li", "", `${e.occurred_at.slice(11, 19)} ${e.type} ${e.user_id}${amount}`);
  const tail = $("[data-tail]");
  tail.prepend(item);
  while (tail.children.length > KEEP_TAIL) tail.lastChild.remove();
  if (payload.skipped) $("[data-tail-skipped]").textContent = `(${payload.skipped} skipped before the last one)`;
}

function showAudit(row, atEnd) {
  const item = el("li", `outcome-${row.outcome === "ok" ? "ok" : "error"}`,
    `${row.at.slice(11, 19)} ${row.user}@${row.node} ${row.command} → ${row.outcome}`);
  item.title = `${JSON.stringify(row.payload)} ${row.detail}`;
  const audit = $("[data-audit]");
  if (atEnd) audit.append(item); else audit.prepend(item);
  while (audit.children.length > KEEP_AUDIT) audit.lastChild.remove();
}

function askStatus() {
  if (open) send("status", undefined, (frame) => { if (frame.ok) showStatus(frame.payload); });
}

// ---------- the connection ----------
function onFrame(frame) {
  if (frame.id != null && pending.has(frame.id)) {
    const handle = pending.get(frame.id);
    pending.delete(frame.id);
    handle(frame);
    return;
  }
  switch (frame.type) {
    case "welcome":
      commands = frame.payload.commands;
      showCommands();
      break;
    case "snapshot":
      $("[data-ingest-state]").textContent = frame.payload.ingest.state;
      $("[data-leader]").textContent = frame.payload.ingest.leader ?? "none";
      break;
    case "presence": showPresence(frame.payload); break;
    case "event": showEvent(frame.payload); break;
    case "audit": showAudit(frame.payload, false); break;
    default: break;
  }
}

function connected() {
  open = true;
  reconnect.connected();
  setStatus("connected", "Connected");
  send("subscribe", { topics: ["snapshots", "presence", "events", "audit"] }, () => {});
  send("audit.tail", { limit: 20 }, (frame) => {
    if (!frame.ok) return;
    $("[data-audit]").replaceChildren();
    for (const row of frame.payload.entries) showAudit(row, true);
  });
  askStatus();
  flushQueue();
}

function connect() {
  reconnect.begin();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws/console`);
  socket.addEventListener("open", connected);
  socket.addEventListener("message", (event) => {
    try {
      onFrame(JSON.parse(event.data));
    } catch (error) {
      report(error);
    }
  });
  socket.addEventListener("close", () => {
    const wasOpen = open;
    open = false;
    socket = null;
    // Commands sent but never answered are shown as lost, not silently pending.
    for (const [id, handle] of pending) {
      handle({ id, ok: false, error: { code: "unavailable", message: "the connection closed before the reply" } });
    }
    pending.clear();
    if (wasOpen) reconnect.connected();
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  reconnect.schedule();
}

reconnectButton.addEventListener("click", () => reconnect.restart());

function report(error) {
  console.warn("pulseboard console:", error);
}

// ---------- start ----------
showCommands();
setInterval(askStatus, STATUS_EVERY_MS);
connect();
input.focus();
