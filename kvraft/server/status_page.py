"""The status page served at `/` of the metrics listener: one self-contained HTML
document (inline CSS and script, nothing fetched from elsewhere) that fetches
`status.json` (status.py) every REFRESH_MS and renders it.

Everything shown is set with `textContent`, never parsed as HTML: member addresses and
names come from operators and peers. When a fetch fails, the page says so at the top,
greys out what it still shows and labels it with its age, instead of showing stale
numbers as if current. `<body data-state>` is "loading", "live", "stale" (the member
answers but its event loop has not published for a while) or "down" (no answer); the
browser test reads it.
"""
from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvraft status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#banner { padding: .5em .8em; border-radius: 4px; margin: .6em 0; }
body[data-state=live] #banner { background: #e6f4ea; color: #0d5223; }
body[data-state=loading] #banner { background: #eee; }
body[data-state=stale] #banner, body[data-state=down] #banner {
  background: #fce8e6; color: #8c1d18; font-weight: bold; }
body[data-state=down] main, body[data-state=stale] main { opacity: .45; }
.leader { font-weight: bold; color: #0b57d0; }
.muted { color: #666; }
li.alarm { color: #8c1d18; font-weight: bold; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: 0; }
dt { color: #555; }
dd { margin: 0; }
</style>
</head>
<body data-state="loading">
<h1>kvraft member <span id="member-id">?</span></h1>
<div id="banner" role="status">Loading status.json</div>
<main>
<dl id="summary"></dl>
<h2>Members</h2>
<table>
<thead><tr><th>ID</th><th>Name</th><th>Peer address</th><th>Client address</th>
<th>Role</th><th>Match index</th><th>Lag</th><th>Replication</th></tr></thead>
<tbody id="members"></tbody>
</table>
<p id="lag-note" class="muted"></p>
<h2>Alarms</h2>
<ul id="alarms"></ul>
<h2>Recent leader changes</h2>
<table>
<thead><tr><th>When (UTC)</th><th>Term</th><th>Leader</th></tr></thead>
<tbody id="leader-changes"></tbody>
</table>
</main>
<script>
"use strict";
const REFRESH_MS = 2000, TIMEOUT_MS = 1500;
let lastGood = null;   // when the last good answer arrived (Date), for the banner

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function num(v) { return el("td", v === null || v === undefined ? "\\u2014" : v, "num"); }
function utc(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ");
}
function leaderName(id) { return id ? String(id) : "none"; }
function setBanner(state, text) {
  document.body.dataset.state = state;
  document.getElementById("banner").textContent = text;
}

function render(s) {
  document.getElementById("member-id").textContent = String(s.member_id);
  document.title = "kvraft " + s.member_id + " \\u00b7 " + s.role;
  const summary = [["Role", s.role], ["Term", s.term], ["Leader", leaderName(s.leader_id)],
    ["Commit index", s.commit_index], ["Applied index", s.applied_index],
    ["Last index", s.last_index], ["Cluster", s.cluster_id], ["Version", s.version]];
  document.getElementById("summary").replaceChildren(
    ...summary.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  document.getElementById("members").replaceChildren(...s.members.map(m => {
    const tr = el("tr");
    tr.dataset.memberId = String(m.id);
    const role = el("td", m.role + (m.id === s.member_id ? " (this member)" : ""),
                    m.role === "leader" ? "leader" : "");
    const repl = m.replication === null ? "\\u2014"
      : m.replication + (m.active === false ? ", not responding" : "");
    tr.append(num(m.id), el("td", m.name || "\\u2014"), el("td", m.peer_address || "\\u2014"),
              el("td", m.client_address || "\\u2014"), role, num(m.match_index), num(m.lag),
              el("td", repl));
    return tr;
  }));
  document.getElementById("lag-note").textContent = s.lag_known ? ""
    : "Match index and lag are known to the leader only: open the leader's status page.";
  const alarms = s.alarms.map(a => el("li", a.alarm + " on member " + a.member_id, "alarm"));
  if (s.alarms_error) alarms.push(el("li", "alarms unknown: " + s.alarms_error));
  if (!alarms.length) alarms.push(el("li", "none", "muted"));
  document.getElementById("alarms").replaceChildren(...alarms);
  document.getElementById("leader-changes").replaceChildren(...s.leader_changes.map(c => {
    const tr = el("tr");
    tr.append(el("td", utc(c.at)), num(c.term), el("td", leaderName(c.leader_id)));
    return tr;
  }));
}

async function refresh() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const r = await fetch("status.json", {cache: "no-store", signal: abort.signal});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    render(s);
    lastGood = new Date();
    if (s.stale) {
      setBanner("stale", "Member " + s.member_id + " answers, but its event loop has not " +
                "published its state for " + s.age_s.toFixed(1) + " s: the numbers below are old.");
    } else {
      setBanner("live", (s.stopping ? "Shutting down. " : "Live. ") + "Updated " +
                utc(lastGood.getTime() / 1000) + " UTC, every " + REFRESH_MS / 1000 + " s.");
    }
  } catch (e) {
    const reason = e.name === "AbortError" ? "no answer within " + TIMEOUT_MS / 1000 + " s"
                                           : String(e.message || e);
    setBanner("down", "Cannot reach this member (" + reason + "). " + (lastGood
      ? "Below is its state as of " + utc(lastGood.getTime() / 1000) + " UTC, not current."
      : "Nothing to show."));
  } finally {
    clearTimeout(timer);
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
"""

PAGE_BYTES = PAGE.encode()
