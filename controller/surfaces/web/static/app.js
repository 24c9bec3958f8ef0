// vigil's web page: status polled from /status once a second, live and recorded HLS through the
// vendored hls.js, charts from /history, the recorded-span timeline, clip export and the
// operator's actions. Plain script, no build step; everything comes from this origin.
"use strict";

const POLL_MS = 1000;          // /status at most once a second
const HISTORY_MS = 60000;      // the ring samples once a minute
const LIVE_RETRY_MS = 2000;    // no footage yet: ask again
const VOD_MAX_SECONDS = 3600;  // one playback asks for at most this much after the click
const $ = (id) => document.getElementById(id);
const page = { session: null, status: null, spans: [], view: null, selected: null, live: null,
               playback: null, reachable: null, lastSeen: null,
               errors: [] };  // the players' fatal errors, newest last (for DevTools)
window.vigil = page;  // for people (and tests) looking at the page from DevTools

// --- small helpers --------------------------------------------------------------------------

function iso(seconds) { return new Date(seconds * 1000).toISOString().replace(".000Z", "Z"); }
function clock(seconds) { return new Date(seconds * 1000).toISOString().slice(11, 19); }
function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
        m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}
function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function svgNode(name, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text != null) { const t = document.createElementNS(node.namespaceURI, "title"); t.textContent = text; node.append(t); }
  return node;
}
async function getJSON(path) {
  const reply = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try { body = await reply.json(); } catch (e) { body = null; }
  return { status: reply.status, body };
}
function reason(body, fallback) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return fallback;
}

// --- login and what it opens ----------------------------------------------------------------

async function loadSession() {
  const { status, body } = await getJSON("/session");
  if (status !== 200) return;
  page.session = body;
  const role = body.role;
  $("role").textContent = role === "operator" ? "logged in as operator: footage and actions"
    : role === "viewer" ? "logged in as viewer: footage, no actions"
    : body.footage_public ? "footage is public; log in with the action token to act"
    : body.login_possible ? "not logged in: footage needs the viewer token"
    : "no token is configured on this unit (api.viewer_token_file, api.token_file)";
  $("login-form").hidden = role != null;
  $("logout").hidden = role == null;
  // The viewer sees but cannot act: no action controls at all, not merely disabled ones.
  $("actions-section").hidden = !(role === "operator" && body.actions_enabled);
  if (body.footage) { startLive(); loadSpans(); } else { stopLive("log in to see the camera"); }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const reply = await fetch("/login", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: $("token").value }) });
  if (reply.status === 204) { $("token").value = ""; await loadSession(); return; }
  let body = null;
  try { body = await reply.json(); } catch (e) { body = null; }
  $("login-error").textContent = `login refused (${reply.status}): ${reason(body, reply.statusText)}`;
});
$("logout").addEventListener("click", async () => {
  // Players first: a fragment they asked for after the cookies went would be a 401.
  stopLive("logged out");
  if (page.playback) { page.playback.destroy(); page.playback = null; }
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  await loadSession();
});

// --- status ---------------------------------------------------------------------------------

async function pollStatus() {
  try {
    const { status, body } = await getJSON("/status");
    if (status !== 200 || body == null) throw new Error(`HTTP ${status}`);
    page.status = body;
    page.lastSeen = Date.now();
    setReachable(true, "");
    showStatus(body);
  } catch (err) {
    setReachable(false, String(err.message || err));
  }
  setTimeout(pollStatus, POLL_MS);
}

function setReachable(ok, why) {
  const conn = $("connection");
  if (ok) {
    conn.textContent = "connected";
    conn.classList.remove("unreachable");
  } else {
    const since = page.lastSeen ? `; last answer ${duration((Date.now() - page.lastSeen) / 1000)} ago` : "";
    conn.textContent = `daemon unreachable (${why})${since}: what is shown may be stale`;
    conn.classList.add("unreachable");
    $("state-badge").dataset.state = "unreachable";
    $("state-badge").textContent = "unreachable";
  }
  if (ok && page.reachable === false) loadSession();  // back: the daemon may have restarted
  page.reachable = ok;
}

function showStatus(s) {
  $("state-badge").dataset.state = s.state;
  $("state-badge").textContent = s.state;
  $("state").textContent = s.state;
  $("state-for").textContent = `for ${duration(Date.now() / 1000 - s.since)} (since ${iso(s.since)})`;
  const health = s.health;
  $("health").textContent = health ? `${Math.round(health.score)} / 100` : "–";
  $("health-reason").textContent = health ? health.reason : "no health score yet";
  const achieved = s.fps_achieved == null ? "–" : s.fps_achieved.toFixed(1);
  $("fps").textContent = `${achieved} of ${s.configured_fps} fps`;
  const disk = s.disk;
  if (disk) {
    const pct = disk.total_bytes ? ` (${(100 * disk.free_bytes / disk.total_bytes).toFixed(1)} %)` : "";
    $("disk").textContent = `${bytes(disk.free_bytes)} of ${bytes(disk.total_bytes)}${pct}`;
    $("reserve").textContent = disk.warning ? disk.warning
      : disk.seconds_until_reserve != null ? `reserve reached in ${duration(disk.seconds_until_reserve)}`
      : disk.reserve_bytes != null ? "reserve: not approaching (nothing being written)" : "";
  } else {
    $("disk").textContent = "unknown";
    $("reserve").textContent = "";
  }
  $("segment").textContent = s.current_segment || "none open";
  showAlerts(s.alerts || []);
}

function showAlerts(alerts) {
  const list = $("alerts");
  const key = alerts.map((a) => a.time).join(",");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...alerts.slice().reverse().map((a) => {
    const item = document.createElement("li");
    item.className = a.kind;
    item.textContent = `${a.at} ${a.kind}: ${a.message}`;
    return item;
  }));
  if (!alerts.length) list.replaceChildren(Object.assign(document.createElement("li"),
                                                         { textContent: "none", className: "muted" }));
}

// --- video ----------------------------------------------------------------------------------

function hlsPlayer(video, url, note, { live }) {
  if (window.Hls && Hls.isSupported()) {
    const hls = new Hls({ enableWorker: false, lowLatencyMode: false, liveSyncDurationCount: 2,
                          manifestLoadingMaxRetry: 0, backBufferLength: 30,
                          // Marks the page's own requests: their 401 then carries no Basic
                          // challenge, which would pop a login dialog over the page.
                          xhrSetup(xhr, url) {
                            if (!xhr.readyState) xhr.open("GET", url, true);
                            xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
                          } });
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (!data.fatal) return;
      const code = data.response && data.response.code;
      page.errors.push({ live, details: data.details, code, url: data.frag ? data.frag.url : data.url,
                         at: Date.now() / 1000 });
      hls.destroy();
      if (live) {
        note.textContent = code === 404 ? "nothing recorded yet to play live; trying again"
          : `live view interrupted (${data.details}); reconnecting`;
        page.live = null;
        setTimeout(startLive, LIVE_RETRY_MS);
      } else {
        note.textContent = code === 404 ? "no recorded footage to play there"
          : `playback failed: ${data.details}`;
      }
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => { video.play().catch(() => {}); });
    hls.loadSource(url);
    hls.attachMedia(video);
    return hls;
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) {  // Safari plays HLS itself
    video.src = url;
    video.play().catch(() => {});
    return { destroy() { video.removeAttribute("src"); video.load(); } };
  }
  note.textContent = "this browser plays neither HLS nor Media Source Extensions";
  return null;
}

function startLive() {
  if (page.live) return;
  $("live-note").textContent = "live, about two seconds behind the camera";
  page.live = hlsPlayer($("live"), "/live.m3u8", $("live-note"), { live: true });
}
function stopLive(why) {
  if (page.live) { page.live.destroy(); page.live = null; }
  $("live-note").textContent = why;
}

function playFrom(t, span) {
  const end = Math.min(span.end_seconds, t + VOD_MAX_SECONDS);
  if (page.playback) page.playback.destroy();
  const video = $("playback");
  video.dataset.start = String(t);
  $("playback-note").textContent = `playing from ${iso(t)} (from the keyframe at or before it)`;
  page.playback = hlsPlayer(video, `/vod.m3u8?start=${encodeURIComponent(iso(t))}&end=${encodeURIComponent(iso(end))}`,
                            $("playback-note"), { live: false });
  drawTimeline();
  const cursor = $("timeline").querySelector(".cursor");
  if (cursor) cursor.remove();
  if (page.view) {
    const x = xOf(t);
    $("timeline").append(svgNode("line", { class: "cursor", x1: x, x2: x, y1: 0, y2: 60 }));
  }
}

// --- the timeline of recorded spans ---------------------------------------------------------

function dayBounds() {
  const day = $("day").value || new Date().toISOString().slice(0, 10);
  const start = Date.parse(`${day}T00:00:00Z`) / 1000;
  return [start, start + 86400];
}

async function loadSpans() {
  const [t0, t1] = dayBounds();
  const { status, body } = await getJSON(`/recordings/spans?start=${iso(t0)}&end=${iso(t1)}`);
  if (status !== 200) {
    $("timeline-note").textContent = `spans not available (${status}): ${reason(body, "")}`;
    page.spans = [];
  } else {
    page.spans = body.spans;
    $("timeline-note").textContent = body.spans.length
      ? `${body.spans.length} recorded span(s); click the bar to play from that moment`
        + (body.truncated ? " (more than one answer lists)" : "")
      : "nothing recorded that day";
  }
  drawTimeline();
  listSpans();
}

function xOf(t) { const [v0, v1] = page.view; return 1000 * (t - v0) / (v1 - v0); }

function drawTimeline() {
  const svg = $("timeline");
  const [d0, d1] = dayBounds();
  const spans = page.spans;
  let v0 = d0, v1 = d1;
  if (!$("whole-day").checked && spans.length) {
    // Zoom to what was recorded, so gaps of seconds stay visible; a margin on each side.
    const first = spans[0].start_seconds, last = spans[spans.length - 1].end_seconds;
    const pad = Math.max(1, (last - first) * 0.03);
    v0 = Math.max(d0, first - pad);
    v1 = Math.min(d1, last + pad);
  }
  page.view = [v0, v1];
  const nodes = [];
  spans.forEach((s, i) => {
    if (i > 0) {
      const prev = spans[i - 1];
      nodes.push(svgNode("rect", { class: "gap", x: xOf(prev.end_seconds), y: 0, height: 60,
        width: Math.max(1, xOf(s.start_seconds) - xOf(prev.end_seconds)),
        "data-start": prev.end_seconds, "data-end": s.start_seconds },
        `no recording ${clock(prev.end_seconds)}–${clock(s.start_seconds)} (${duration(s.start_seconds - prev.end_seconds)})`));
    }
    const selected = page.selected && page.selected.start_seconds === s.start_seconds;
    nodes.push(svgNode("rect", { class: selected ? "span selected" : "span", x: xOf(s.start_seconds), y: 8,
      height: 44, width: Math.max(1, xOf(s.end_seconds) - xOf(s.start_seconds)), "data-index": i,
      "data-start": s.start_seconds, "data-end": s.end_seconds },
      `recorded ${clock(s.start_seconds)}–${clock(s.end_seconds)}, ${s.frames} frames`));
  });
  svg.replaceChildren(...nodes);
  $("axis-start").textContent = iso(v0);
  $("axis-end").textContent = iso(v1);
}

$("timeline").addEventListener("click", (event) => {
  if (!page.view || !page.spans.length) return;
  const box = $("timeline").getBoundingClientRect();
  const [v0, v1] = page.view;
  const t = v0 + (event.clientX - box.left) / box.width * (v1 - v0);
  let span = page.spans.find((s) => s.start_seconds <= t && t < s.end_seconds);
  let from = t;
  if (!span) {  // in a gap: play from the next recorded moment
    span = page.spans.find((s) => s.start_seconds > t);
    if (!span) { $("playback-note").textContent = `nothing recorded after ${iso(t)}`; return; }
    from = span.start_seconds;
  }
  select(span);
  playFrom(from, span);
});

function listSpans() {
  const list = $("spans");
  list.replaceChildren(...page.spans.map((s) => {
    const item = document.createElement("li");
    const label = `${clock(s.start_seconds)}–${clock(s.end_seconds)}`;
    item.textContent = `${label} · ${duration(s.seconds)} · ${s.frames} frames`;
    const play = Object.assign(document.createElement("button"), { type: "button", textContent: "Play" });
    play.setAttribute("aria-label", `Play ${label}`);
    play.addEventListener("click", () => { select(s); playFrom(s.start_seconds, s); });
    const pick = Object.assign(document.createElement("button"), { type: "button", textContent: "Select" });
    pick.setAttribute("aria-label", `Select ${label} for download`);
    pick.addEventListener("click", () => select(s));
    item.append(play, pick);
    return item;
  }));
}

function select(span) {
  page.selected = span;
  const most = page.session ? page.session.export_max_seconds : Infinity;
  // Whole milliseconds that still cover the span: start rounded down, end rounded up. The end
  // reaches up to a second into the gap after it (never into the next span): /export places
  // a file that starts a little before the previous one ended right after it, so its clock
  // can run a few tens of milliseconds behind the span index's, and the span's last frame
  // would be left out of a clip cut at the index's end.
  const start = Math.floor(span.start_seconds * 1000) / 1000;
  const next = page.spans.find((s) => s.start_seconds > span.start_seconds);
  const past = next ? Math.min(next.start_seconds, span.end_seconds + 1) : span.end_seconds;
  const end = Math.min(Math.ceil(past * 1000) / 1000, start + most);
  $("export-start").value = new Date(start * 1000).toISOString();
  $("export-end").value = new Date(end * 1000).toISOString();
  updateDownload();
  drawTimeline();
}

function updateDownload() {
  const link = $("download");
  const start = $("export-start").value.trim(), end = $("export-end").value.trim();
  if (!start || !end) { link.setAttribute("aria-disabled", "true"); link.href = "#"; return; }
  link.href = `/export?start=${encodeURIComponent(start)}&end=${encodeURIComponent(end)}`;
  link.setAttribute("aria-disabled", "false");
}
$("export-start").addEventListener("input", updateDownload);
$("export-end").addEventListener("input", updateDownload);
$("export-form").addEventListener("submit", (event) => event.preventDefault());
$("day").addEventListener("change", loadSpans);
$("whole-day").addEventListener("change", drawTimeline);
$("refresh-spans").addEventListener("click", loadSpans);

// --- history charts -------------------------------------------------------------------------

const CHARTS = [
  { title: "Health (0–100)", value: (s) => s.health, fixed: [0, 100] },
  { title: "Frames per second (achieved; dashed: configured)", value: (s) => s.fps, second: (s) => s.fps_configured },
  { title: "Dropped frames per minute", value: (s) => s.frames_dropped, bars: true },
  { title: "Errors per minute (all categories)", value: (s) => Object.values(s.errors || {}).reduce((a, b) => a + b, 0),
    bars: true, label: (s) => Object.entries(s.errors || {}).map(([k, v]) => `${k} ${v}`).join(", ") },
  { title: "Disk free", value: (s) => s.disk_free_bytes, format: bytes },
];

async function loadHistory() {
  try {
    const { status, body } = await getJSON("/history?hours=24");
    if (status === 404) {
      drawHistory(noHistory());  // the charts keep their place: the page below does not jump
      $("history-note").textContent = "no history yet (this daemon keeps none, or has not sampled a minute)";
    } else if (status !== 200 || !body) {
      $("history-note").textContent = `history not available (${status}): ${reason(body, "")}`;
    } else {
      drawHistory(body);
    }
  } catch (err) {
    $("history-note").textContent = "history not available: daemon unreachable";
  }
  setTimeout(loadHistory, HISTORY_MS);
}

function noHistory() { return { samples: [], alerts: [], now: Date.now() / 1000 }; }

function drawHistory(history) {
  const samples = history.samples || [], alerts = history.alerts || [];
  const step = history.interval_seconds || 60;
  const t1 = history.now, t0 = t1 - 24 * 3600;
  $("history-note").textContent = samples.length
    ? `${samples.length} minute(s) sampled; ${alerts.length} alert(s) marked; gaps are minutes the daemon was not running`
    : "no samples yet";
  const x = (t) => 1000 * (t - t0) / (t1 - t0);
  $("charts").replaceChildren(...CHARTS.map((chart) => {
    const values = samples.map(chart.value).concat(chart.second ? samples.map(chart.second) : []).filter((v) => v != null);
    let [lo, hi] = chart.fixed || [0, Math.max(1, ...values)];
    if (hi <= lo) hi = lo + 1;
    const y = (v) => 76 - 72 * (v - lo) / (hi - lo);
    const svg = svgNode("svg", { viewBox: "0 0 1000 80", preserveAspectRatio: "none", role: "img",
                                 "aria-label": chart.title });
    const line = (get, cls) => {
      let d = "", prev = null;
      for (const s of samples) {
        const v = get(s);
        if (v == null) { prev = null; continue; }
        // A missing minute (daemon not running) breaks the line.
        d += `${prev != null && s.t - prev <= step * 1.5 ? "L" : "M"}${x(s.t).toFixed(1)},${y(v).toFixed(1)}`;
        prev = s.t;
      }
      if (d) svg.append(svgNode("path", { class: cls, d }));
    };
    if (chart.bars) {
      for (const s of samples) {
        const v = chart.value(s);
        if (!v) continue;
        svg.append(svgNode("rect", { class: "bar", x: x(s.t), width: Math.max(2, x(s.t + step) - x(s.t)), y: y(v),
          height: 76 - y(v), "data-t": s.t, "data-value": v }, `${iso(s.t)}: ${chart.label ? chart.label(s) : v}`));
      }
    } else {
      if (chart.second) line(chart.second, "line second");
      line(chart.value, "line");
    }
    for (const a of alerts) {
      const ax = x(a.t);
      svg.append(svgNode("line", { class: `alert ${a.severity === "info" ? "recovery" : ""}`, x1: ax, x2: ax, y1: 0,
        y2: 80, "data-t": a.t, "data-name": a.name }, `${iso(a.t)} ${a.name}: ${a.message}`));
    }
    const box = document.createElement("figure");
    box.className = "chart";
    box.style.margin = "0";
    const title = document.createElement("h3");
    title.textContent = chart.title;
    const fmt = chart.format || ((v) => String(Math.round(v * 10) / 10));
    const range = document.createElement("div");
    range.className = "range";
    range.append(Object.assign(document.createElement("span"), { textContent: clock(t0) }),
                 Object.assign(document.createElement("span"), { textContent: `max ${fmt(hi)}` }),
                 Object.assign(document.createElement("span"), { textContent: `${clock(t1)} UTC` }));
    box.append(title, svg, range);
    return box;
  }));
}

// --- operator actions -----------------------------------------------------------------------

async function act(action) {
  const out = $("action-result");
  out.textContent = `${action}: asked…`;
  out.dataset.status = "";
  try {
    const reply = await fetch(`/actions/${action}`, { method: "POST", credentials: "same-origin",
      headers: { [page.session.action_header]: "1" } });
    let body = null;
    try { body = await reply.json(); } catch (e) { body = null; }
    out.dataset.status = String(reply.status);
    out.dataset.transitions = body && body.transitions ? body.transitions.join(" ") : "";
    const path = body && body.transitions && body.transitions.length ? ` (${body.transitions.join(", ")})` : "";
    out.textContent = `${action}: ${reply.status} ${body && body.detail ? body.detail : reason(body, reply.statusText)}${path}`;
  } catch (err) {
    out.dataset.status = "unreachable";
    out.textContent = `${action}: the daemon did not answer (${err.message || err})`;
  }
}

for (const button of document.querySelectorAll("#actions-section [data-action]")) {
  button.addEventListener("click", () => {
    if (button.dataset.action === "reset") {
      $("confirm-reset").returnValue = "";
      $("confirm-reset").showModal();
    }
    else act(button.dataset.action);
  });
}
$("confirm-reset").addEventListener("close", () => {
  if ($("confirm-reset").returnValue === "yes") act("reset");
});

// --- start ----------------------------------------------------------------------------------

$("day").value = new Date().toISOString().slice(0, 10);
drawHistory(noHistory());  // empty charts until /history answers, so nothing below them moves
$("history-note").textContent = "loading history…";
loadSession();
pollStatus();
loadHistory();
