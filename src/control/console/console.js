// The edgehook console: every operation of the control API (/v1) one click away. Everything it
// shows comes from parties nobody vetted (device ids and values, receivers' answers), so it is
// only ever set as text (el() below), never as markup; the page's Content-Security-Policy lets
// no other script run.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "edgehook-token";
const FINAL = ["succeeded", "failed", "timed_out", "expired", "rejected", "cancelled"];

/** An element with properties and children (strings become text nodes). */
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

/** A time from the API, said relative to now: "12 s ago", "in 3 min", "never". */
function when(t) {
  if (!t) return "never";
  const s = Math.round((Date.now() - Date.parse(t)) / 1000);
  const a = Math.abs(s);
  const span = a < 60 ? a + " s" : a < 3600 ? Math.round(a / 60) + " min" : a < 172800 ? Math.round(a / 3600) + " h" : Math.round(a / 86400) + " days";
  return s >= 0 ? span + " ago" : "in " + span;
}

// Logging in: `edgehook console` prints this page's URL with the token in its fragment
// (#token=...), which never reaches a server log; it is kept for this tab only.
function takeTokenFromUrl() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}
const token = () => sessionStorage.getItem(KEY);
function showLogin() {
  $("login").hidden = !!token();
  $("logout").hidden = !token();
}
function notice(text, ok) {
  $("notice").textContent = text;
  $("notice").className = ok ? "ok" : "bad";
}

/** One API call; its JSON, or an Error saying what the API said. */
const LOG_IN = "log in with the API token (`edgehook token` prints it; `edgehook console` prints a URL that logs in)";

async function call(method, path, body) {
  // Every change needs the token: without one, say so here rather than ask the server.
  if (method !== "GET" && !token()) {
    showLogin();
    throw new Error(LOG_IN);
  }
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) {
    if (t) sessionStorage.removeItem(KEY);
    showLogin();
    throw new Error(LOG_IN);
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) throw new Error(((data && data.error) || "HTTP " + r.status) + (data && data.field ? " (" + data.field + ")" : ""));
  return data;
}
const seg = encodeURIComponent;

// ---- devices and the detail of one ----
let devices = [];
let more = false;
let selected = null;
let forgetArmed = false;

function renderDevices() {
  const f = $("device-filter").value.trim().toLowerCase();
  const shown = devices.filter((d) => !f || [d.id, d.class || "", d.health].some((s) => s.toLowerCase().includes(f)));
  const rows = shown.map((d) => {
    const values = JSON.stringify(d.values);
    return el("tr", { "data-device": d.id, tabIndex: 0, title: "open " + d.id },
      el("td", {}, d.id), el("td", { class: "wide" }, d.class || ""),
      el("td", { class: d.health }, d.health + (d.stale ? ", stale" : "")),
      el("td", {}, when(d.last_seen)), el("td", { class: "values wide", title: values }, values));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "mute", colSpan: 5 }, devices.length ? "no device matches" : "no device heard from yet")));
  if (more) rows.push(el("tr", {}, el("td", { class: "mute", colSpan: 5 }, "the first 1,000 devices shown: filter, or `edgehook devices` for all")));
  $("devices").replaceChildren(...rows);
}

async function renderDetail() {
  if (!selected) { $("detail").hidden = true; return; }
  let d;
  try { d = await call("GET", "/v1/devices/" + seg(selected)); } catch (err) { $("detail-facts").replaceChildren(el("dd", { class: "bad" }, err.message)); return; }
  $("detail").hidden = false;
  $("detail-id").textContent = d.id;
  const facts = [["class", d.class || "-"], ["health", d.health + (d.stale ? ", stale" : "")], ["last seen", when(d.last_seen)],
    ["last reading", when(d.last_reading)], ["last report", when(d.last_report)], ["report pending", d.report_pending ? "yes" : "no"],
    ["version", d.version === null ? "-" : JSON.stringify(d.version)], ["state fields", JSON.stringify(d.state)],
    ["sync", d.sync ? (d.sync.in_sync ? "in sync" : "differs since " + when(d.sync.differs_since)) + " (reported " + JSON.stringify(d.sync.reported) + ")" : "-"],
    ["desired", d.desired === null ? "-" : JSON.stringify(d.desired)]];
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const changes = (d.health_history || []).slice().reverse();
  $("detail-history").replaceChildren(...(changes.length ? changes.map((c) => el("li", {},
    el("span", { class: c.health }, c.health), " " + when(c.at) + " (" + (c.at || "").replace("T", " ").slice(0, 19) + ")")) :
    [el("li", { class: "mute" }, "no change of health told yet")]));
  $("detail-values").textContent = JSON.stringify(d.values, null, 2);
  // The actions its class takes: the form offers those alone (kept as chosen while it refreshes).
  const pick = $("act").elements["name"], actions = d.actions || [];
  if ([...pick.options].map((o) => o.value).join() !== actions.join()) {
    pick.replaceChildren(...actions.map((a) => el("option", { value: a }, a)));
  }
  $("act").hidden = !actions.length;
  $("act-none").hidden = !!actions.length;
  $("act-none").textContent = "Its class (" + (d.class || "none") + ") takes no actions: device_classes.actions in the configuration.";
}

// ---- endpoints: their buttons, a message per row, deletes confirmed inline ----
const rowMsg = {};
const deleting = {};

function endpointButtons(x) {
  const b = (act, label, cls) => el("button", { type: "button", "data-act": act, class: cls || "" }, label);
  if (deleting[x.name]) {
    return [el("span", { class: "msg" }, x.pending ? x.pending + " event(s) pending:" : "Delete?"),
      b("delete-drain", x.pending ? "Deliver them, then delete" : "Delete", "danger"), " ",
      ...(x.pending ? [b("delete-purge", "Delete them too", "danger"), " "] : []), b("delete-cancel", "Cancel")];
  }
  const out = [x.state === "paused" ? b("resume", "Resume") : b("pause", "Pause"), " ", b("test", "Test")];
  if (x.state === "disabled") out.push(" ", b("enable", "Enable"));
  if (x.source === "api") out.push(" ", b("edit", "Edit"), " ", b("delete", "Delete", "danger"));
  return out;
}

function renderEndpoints(list) {
  $("endpoints").replaceChildren(...list.map((x) => {
    const m = rowMsg[x.name];
    return el("tr", { "data-endpoint": x.name },
      el("td", { title: x.description || "" }, x.name, " ", el("span", { class: "mute" }, x.source),
        x.last_error ? el("span", { class: "msg bad", title: x.last_error }, "last error: " + x.last_error) : null),
      el("td", { class: x.state }, x.state), el("td", {}, x.pending), el("td", { class: "wide" }, x.dead_letters), el("td", { class: "wide" }, when(x.last_success)),
      el("td", {}, ...endpointButtons(x), m ? el("span", { class: "msg " + (m.ok ? "ok" : "bad"), "data-msg": "" }, m.text) : null));
  }));
}

let endpointsNow = [];
let editing = null;

/** The create form, filled with endpoint `x`'s settings, to save as an edit (a JSON merge patch). */
function startEdit(x) {
  const f = $("create"), st = x.settings || {};
  editing = x.name;
  $("create-title").textContent = "Edit webhook " + x.name;
  $("edit-cancel").hidden = false;
  f.elements["name"].value = x.name;
  f.elements["name"].readOnly = true;
  f.elements["description"].value = x.description || "";
  f.elements["url"].value = st.url || x.url;
  f.elements["format"].value = st.format || "edgehook";
  f.elements["active"].checked = x.active;
  const events = st.events || ["*"];
  for (const i of f.querySelectorAll("input[name=events]")) i.checked = events.includes("*") || events.includes(i.value);
  f.elements["secret"].required = false;
  f.elements["secret"].placeholder = "unchanged when left empty";
  f.querySelector("button[type=submit]").textContent = "Save changes";
  $("msg").textContent = "";
  f.scrollIntoView({ block: "nearest" });
}
function stopEdit() {
  const f = $("create");
  editing = null;
  f.reset();
  f.elements["name"].readOnly = false;
  f.elements["secret"].required = true;
  f.elements["secret"].placeholder = "";
  f.querySelector("button[type=submit]").textContent = "Create webhook";
  $("create-title").textContent = "Create webhook";
  $("edit-cancel").hidden = true;
}

async function endpointAction(name, act) {
  const path = "/v1/endpoints/" + seg(name);
  if (act === "edit") { startEdit(endpointsNow.find((x) => x.name === name)); return; }
  if (act === "delete") { deleting[name] = true; return; }
  if (act === "delete-cancel") { delete deleting[name]; return; }
  if (act === "delete-drain" || act === "delete-purge") {
    delete deleting[name];
    await call("DELETE", path + "?pending=" + (act === "delete-purge" ? "purge" : "drain"));
    notice("endpoint " + name + " deleted" + (act === "delete-drain" ? " (what was pending is delivered first)" : ""), true);
    return;
  }
  const r = await call("POST", path + "/" + act);
  rowMsg[name] = act === "test"
    ? { ok: r.delivered, text: r.delivered ? "test delivered: HTTP " + r.status + " in " + r.ms + " ms" : "test not delivered: " + (r.error || "HTTP " + r.status) }
    : { ok: true, text: act === "pause" ? "paused" : act === "resume" ? "resumed" : "enabled" };
}

// ---- the outbox: each queue, its pending list, purge ----
let pendingOf = null;
const purging = {};

function renderQueues(queues) {
  $("queues").replaceChildren(...queues.map((q) => {
    const b = (act, label, cls) => el("button", { type: "button", "data-qact": act, class: cls || "" }, label);
    const acts = purging[q.endpoint]
      ? [el("span", { class: "msg" }, "Delete for good?"), b("purge-yes", "Purge " + q.pending + " pending", "danger"), " ", b("purge-no", "Cancel")]
      : [b("list", "Pending list"), ...(q.pending ? [" ", b("purge", "Purge…", "danger")] : [])];
    return el("tr", { "data-queue": q.endpoint },
      el("td", {}, q.endpoint, " ", el("span", { class: "mute" }, q.state)), el("td", {}, q.pending),
      el("td", { class: "wide" }, when(q.oldest_pending)), el("td", {}, q.dead_letters), el("td", {}, ...acts));
  }));
}

async function renderPending() {
  const r = await call("GET", "/v1/outbox/events?endpoint=" + seg(pendingOf) + "&limit=50");
  $("pending-box").hidden = false;
  $("pending-name").textContent = pendingOf;
  $("pending").replaceChildren(...(r.events.length ? r.events.map((e) => el("tr", { title: e.event_id, "data-event": e.event_id },
    el("td", {}, e.type), el("td", {}, e.lane), el("td", {}, when(e.created)))) : [el("tr", {}, el("td", { class: "mute", colSpan: 3 }, "nothing pending"))]));
}

async function queueAction(name, act) {
  if (act === "list") { pendingOf = name; await renderPending(); return; }
  if (act === "purge") { purging[name] = true; return; }
  if (act === "purge-no") { delete purging[name]; return; }
  delete purging[name];
  const r = await call("POST", "/v1/outbox/purge", { endpoint: name });
  notice("purged " + r.purged + " pending event(s) of " + name + " for good", true);
}

// ---- the live delivery log, and one delivery opened ----
let attempts = [];
let opened = null;
/** An attempt's lane said for a person: the device or workspace it is about. */
const subject = (lane) => (lane || "").replace(/^(device|workspace|group):/, "");
const result = (a) => a.ok ? "delivered " + a.status : "failed: " + (a.error || a.status);
function renderDeliveries() {
  const f = $("delivery-filter").value.trim().toLowerCase();
  const shown = attempts.filter((a) => !f || [a.endpoint, a.event_id, a.type || "", a.lane || "", a.ok ? "ok delivered " + a.status : "failed " + (a.error || a.status)].some((s) => String(s).toLowerCase().includes(f)));
  $("deliveries").replaceChildren(...shown.map((a) => el("tr", { "data-attempt": a.event_id, "data-endpoint": a.endpoint, tabIndex: 0, title: "open event " + a.event_id },
    el("td", {}, (a.at || "").slice(11, 19)),
    el("td", { class: "brk" }, a.type || a.event_id, a.lane ? el("span", { class: "mute msg" }, subject(a.lane)) : null),
    el("td", {}, a.endpoint), el("td", { class: a.ok ? "ok" : "bad" }, result(a)), el("td", { class: "wide" }, a.ms))));
}
/** What was sent and what came back, as text: `part` is a request or an answer, or null. */
function showBody(id, part, missing) {
  const note = $(id + "-note");
  if (!part) { $(id).textContent = ""; note.textContent = missing; return; }
  let text = part.body;
  try { if (text) text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* shown as it came */ }
  $(id).textContent = text || "(empty)";
  note.textContent = (part.status ? "HTTP " + part.status + ", " : "") + part.bytes + " bytes" + (part.truncated ? ", only the start kept" : "");
}
async function renderDelivery() {
  if (!opened) { $("delivery").hidden = true; return; }
  let d;
  try { d = await call("GET", "/v1/deliveries/" + seg(opened.id) + "?endpoint=" + seg(opened.endpoint)); } catch (err) { notice(err.message, false); return; }
  $("delivery").hidden = false;
  $("delivery-id").textContent = d.event_id;
  const last = d.attempts[d.attempts.length - 1] || {};
  $("delivery-facts").replaceChildren(...[["type", last.type || "-"], ["about", last.lane || "-"], ["endpoint", opened.endpoint],
    ["attempts", String(d.attempts.length)]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("delivery-attempts").replaceChildren(...d.attempts.slice().reverse().map((a) => el("tr", {},
    el("td", {}, (a.at || "").replace("T", " ").slice(0, 19)), el("td", {}, a.endpoint), el("td", { class: a.ok ? "ok" : "bad" }, result(a)), el("td", {}, a.ms))));
  const x = d.exchange;
  const gone = "not kept any more (the bodies of the latest 64 requests are kept, until a restart)";
  showBody("delivery-request", x && x.request, gone);
  showBody("delivery-response", x && x.response, x ? "no answer: " + (last.error || "the receiver never answered") : gone);
}
function addDelivery(a) {
  attempts.unshift(a);
  if (attempts.length > 100) attempts.length = 100;
  renderDeliveries();
  // The delivery opened is read again when it has a new attempt (not on every refresh: that
  // reads the delivery log).
  if (opened && a.event_id === opened.id) renderDelivery();
}
async function follow() {
  try { attempts = (await call("GET", "/v1/deliveries?limit=30")).deliveries.reverse(); renderDeliveries(); } catch (e) { /* shown by refresh */ }
  for (;;) {
    try {
      const headers = token() ? { Authorization: "Bearer " + token() } : {};
      const r = await fetch("/v1/deliveries/stream", { headers });
      if (!r.ok) throw new Error("HTTP " + r.status);
      $("live").textContent = "· live";
      const rd = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await rd.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let ev = "", data = "";
          for (const l of block.split("\n")) {
            if (l.startsWith("event: ")) ev = l.slice(7);
            else if (l.startsWith("data: ")) data += l.slice(6);
          }
          if (ev === "delivery" && data) addDelivery(JSON.parse(data));
        }
      }
    } catch (e) { /* reconnect below */ }
    $("live").textContent = "· reconnecting";
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// ---- everything, every 2 s ----
async function refresh() {
  try {
    const g = await call("GET", "/v1/gateway");
    $("gw").textContent = g.id + " · v" + g.version + " · up " + Math.round(g.uptime_seconds / 60) + " min · broker " +
      (g.mqtt.enabled ? (g.mqtt.connected ? "connected" : "DISCONNECTED") : "not used") +
      (g.serial.ports.length ? " · serial " + g.serial.open + "/" + g.serial.ports.length + " open" : "") +
      (g.modbus.buses.length ? " · Modbus " + g.modbus.open + "/" + g.modbus.buses.length + " open" : "") +
      " · " + g.outbox.pending + " pending";
    $("ready").textContent = g.ready ? "ready" : "NOT READY: " + g.not_ready;
    $("ready").className = g.ready ? "ok" : "bad";
    if (!$("types").childElementCount) {
      $("types").replaceChildren(...g.event_types.map((t) => el("label", {}, el("input", { type: "checkbox", name: "events", value: t, checked: true, defaultChecked: true }), " " + t)));
    }
    const d = await call("GET", "/v1/devices?limit=1000");
    devices = d.devices;
    more = d.next !== null;
    renderDevices();
    await renderDetail();
    const w = await call("GET", "/v1/workspaces");
    const bookings = (await call("GET", "/v1/bookings")).bookings;
    const span = (b) => (b.start || "").replace("T", " ").slice(0, 16) + " – " + (b.end || "").slice(11, 16);
    $("workspaces").replaceChildren(...(w.workspaces.length ? w.workspaces.map((x) => {
      const own = bookings.filter((b) => b.workspace_id === x.id);
      return el("div", { class: "ws " + x.status, "data-workspace": x.id },
        el("b", {}, x.id), x.status, x.since ? el("span", { class: "mute" }, " " + when(x.since)) : null,
        el("div", { class: "mute" }, x.sensors.length + " sensor(s)" + (x.display ? ", display " + x.display : "")),
        own.length ? el("ul", { "aria-label": "bookings of " + x.id }, ...own.map((b) => el("li", { "data-booking": b.booking_id, title: b.booking_id },
          span(b), b.details && b.details.title ? " " + b.details.title : "", " (" + b.booking_id + ")"))) : null);
    }) : [el("span", { class: "mute" }, "no workspace configured")]));
    endpointsNow = (await call("GET", "/v1/endpoints")).endpoints;
    renderEndpoints(endpointsNow);
    renderQueues((await call("GET", "/v1/outbox")).queues);
    if (pendingOf) await renderPending();
    const dl = await call("GET", "/v1/outbox/events?dead=true&limit=50");
    $("replay-all").hidden = !dl.events.length;
    $("dead").replaceChildren(...(dl.events.length ? dl.events.map((x) => el("tr", { "data-event": x.event_id },
      el("td", {}, x.endpoint), el("td", { title: x.event_id }, x.type),
      el("td", { class: "bad" }, x.dead.reason + (x.dead.last_status ? " (HTTP " + x.dead.last_status + ")" : "") + ": " + x.dead.last_error),
      el("td", {}, el("button", { type: "button", "data-replay": x.event_id, "data-endpoint": x.endpoint }, "Replay")))) :
      [el("tr", {}, el("td", { class: "mute", colSpan: 4 }, "none"))]));
  } catch (err) {
    $("gw").textContent = "cannot read the gateway: " + err.message;
  }
}

// ---- wiring ----
function wire() {
  takeTokenFromUrl();
  showLogin();
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    if (!t) return;
    sessionStorage.setItem(KEY, t);
    $("token-input").value = "";
    showLogin();
    notice("logged in", true);
    refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin();
    notice("logged out: reading on loopback needs no token; every change does", true);
  });
  $("device-filter").addEventListener("input", renderDevices);
  $("delivery-filter").addEventListener("input", renderDeliveries);
  $("devices").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-device]");
    if (!tr) return;
    selected = tr.dataset.device;
    forgetArmed = false;
    $("forget").textContent = "Forget this device";
    $("forget-msg").textContent = "";
    $("act-msg").textContent = "";
    $("desire-msg").textContent = "";
    renderDetail();
  });
  $("devices").addEventListener("keydown", (ev) => { if (ev.key === "Enter") ev.target.click(); });
  $("deliveries").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-attempt]");
    if (!tr) return;
    opened = { id: tr.dataset.attempt, endpoint: tr.dataset.endpoint };
    renderDelivery().then(() => $("delivery").scrollIntoView({ block: "nearest" }));
  });
  $("deliveries").addEventListener("keydown", (ev) => { if (ev.key === "Enter") ev.target.click(); });
  $("delivery-close").addEventListener("click", () => { opened = null; renderDelivery(); });
  $("detail-close").addEventListener("click", () => { selected = null; renderDetail(); });
  $("forget").addEventListener("click", async () => {
    if (!forgetArmed) { forgetArmed = true; $("forget").textContent = "Click again to forget " + selected; return; }
    forgetArmed = false;
    try {
      await call("DELETE", "/v1/devices/" + seg(selected));
      notice("forgot " + selected + " (device.unregistered sent; heard again, it registers anew)", true);
      selected = null;
      refresh();
    } catch (err) { $("forget-msg").textContent = err.message; $("forget-msg").className = "bad"; }
    $("forget").textContent = "Forget this device";
  });
  const desire = async (value) => {
    const m = $("desire-msg");
    try {
      const d = await call("PUT", "/v1/devices/" + seg(selected) + "/desired", { value });
      m.className = "ok";
      m.textContent = value === null ? "back to the class's value" : "desired " + JSON.stringify(d.desired);
      renderDetail();
    } catch (err) { m.className = "bad"; m.textContent = err.message; }
  };
  $("desire").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ev.target.elements["value"].value.trim();
    if (!text) return;
    let value;
    try { value = JSON.parse(text); } catch (e) { value = text; } // a plain word is a string
    desire(value);
  });
  $("desire-clear").addEventListener("click", () => desire(null));
  $("act").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target, m = $("act-msg");
    let params = null;
    try { params = f.elements["params"].value.trim() ? JSON.parse(f.elements["params"].value) : null; } catch (e) { m.className = "bad"; m.textContent = "parameters: not JSON (" + e.message + ")"; return; }
    const id = "console-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
    try {
      let a = await call("POST", "/v1/actions", { id, device: selected, name: f.elements["name"].value, params });
      for (;;) {
        m.className = a.status === "succeeded" ? "ok" : FINAL.includes(a.status) ? "bad" : "";
        m.dataset.status = a.status;
        m.textContent = "action " + a.id + ": " + a.status + (a.reason ? " (" + a.reason + ")" : "");
        if (FINAL.includes(a.status)) break;
        await new Promise((ok) => setTimeout(ok, 500));
        a = await call("GET", "/v1/actions/" + seg(id));
      }
    } catch (err) { m.className = "bad"; m.textContent = err.message; }
  });
  $("endpoints").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-act]");
    if (!b) return;
    const name = b.closest("tr").dataset.endpoint;
    try { await endpointAction(name, b.dataset.act); } catch (err) { rowMsg[name] = { ok: false, text: err.message }; }
    refresh();
  });
  $("dead").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-replay]");
    if (!b) return;
    try {
      await call("POST", "/v1/outbox/replay", { event_id: b.dataset.replay, endpoint: b.dataset.endpoint });
      notice("queued again: " + b.dataset.replay, true);
    } catch (err) { notice(err.message, false); }
    refresh();
  });
  $("queues").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-qact]");
    if (!b) return;
    try { await queueAction(b.closest("tr").dataset.queue, b.dataset.qact); } catch (err) { notice(err.message, false); }
    refresh();
  });
  $("pending-close").addEventListener("click", () => { pendingOf = null; $("pending-box").hidden = true; });
  $("edit-cancel").addEventListener("click", stopEdit);
  $("replay-all").addEventListener("click", async () => {
    try {
      const r = await call("POST", "/v1/outbox/replay", { all_dead: true });
      notice("queued again: " + r.replayed + " dead letter(s)" + (r.damaged_skipped ? ", " + r.damaged_skipped + " damaged ones passed over" : ""), true);
    } catch (err) { notice(err.message, false); }
    refresh();
  });
  $("create").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target, m = $("msg");
    const name = f.elements["name"].value.trim();
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) { m.className = "bad"; m.textContent = "name: 1-64 letters, digits, - or _"; return; }
    const body = { name, url: f.elements["url"].value.trim(), secret: f.elements["secret"].value, format: f.elements["format"].value,
      active: f.elements["active"].checked, events: [...f.querySelectorAll("input[name=events]:checked")].map((i) => i.value) };
    if (f.elements["description"].value.trim()) body.description = f.elements["description"].value.trim();
    if (f.elements["key_header"].value.trim()) body.headers = { [f.elements["key_header"].value.trim()]: f.elements["key_value"].value };
    try {
      if (editing) {
        if (!body.secret) delete body.secret;
        if (!body.description) body.description = "";
        delete body.name;
        await call("PATCH", "/v1/endpoints/" + seg(editing), body);
        m.className = "ok";
        m.textContent = "saved " + name;
        stopEdit();
      } else {
        await call("POST", "/v1/endpoints", body);
        m.className = "ok";
        m.textContent = "created " + name;
        f.reset();
      }
      refresh();
    } catch (err) { m.className = "bad"; m.textContent = err.message; }
  });
  refresh();
  follow();
  setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", wire);
