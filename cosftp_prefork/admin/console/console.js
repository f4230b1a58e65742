// The cosftp-prefork web console: polls the admin API (/api/v1/) and draws what it answers.
// No build step, no library. Everything that came from a client (user names, file names,
// commands), from Redis or from COS is set as text, never as HTML, its control characters
// escaped (shown()). The token lives in this tab's sessionStorage and
// goes out only in the Authorization header of requests to this origin.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "cosftp-admin-token";
  const POLL_MS = 1000;
  const SLOW_EVERY = 5; // accounts, quotas and events: every 5th poll
  const TIMEOUT_MS = 15000;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let writable = false;
  let polls = 0;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  // What no text on the page shows raw: C0 and C1 controls, DEL, the line and paragraph
  // separators, every format character (Unicode category Cf: the bidirectional controls,
  // whose right-to-left override in a file name would reorder what the operator reads, zero
  // width space, the byte order mark, soft hyphen, tag characters...) and lone surrogates;
  // the set and the spelling of the server's log (logfiles.escape_controls): \n, \x1b,
  // \u202e, \U000e0041.
  const UNSAFE = new RegExp(
    "[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\xad\\u0600-\\u0605\\u061c\\u06dd\\u070f" +
    "\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u206f\\ufeff" +
    "\\ufff9-\\ufffb\\u{110bd}\\u{110cd}\\u{13430}-\\u{1343f}\\u{1bca0}-\\u{1bca3}" +
    "\\u{1d173}-\\u{1d17a}\\u{e0001}\\u{e0020}-\\u{e007f}\\ud800-\\udfff]", "gu");
  const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

  function shown(text) {
    return String(text).replace(UNSAFE, (char) => {
      const code = char.codePointAt(0);
      if (NAMED[char] !== undefined) return NAMED[char];
      if (code < 0x100) return `\\x${code.toString(16).padStart(2, "0")}`;
      return code < 0x10000 ? `\\u${code.toString(16).padStart(4, "0")}`
        : `\\U${code.toString(16).padStart(8, "0")}`;
    });
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== undefined && value !== null) node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : shown(child));
      }
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
    return `${n.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.floor(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return `${h}:${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  }

  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleString() : "-";
  }

  function bar(value, max, label) {
    const known = typeof max === "number" && max > 0;
    const meter = el("progress", known ? { max, value: Math.min(value, max) } : {});
    return el("span", { className: "bar" }, meter, el("span", { className: "figure" }, label));
  }

  // Rows are kept across polls, keyed by the item's id, and only their cells change: a
  // button the operator is about to click stays the same element.
  function setCell(td, content) {
    const text = content instanceof Node ? null : shown(content);
    if (text === null) td.replaceChildren(content);
    else if (td.children.length || td.textContent !== text) td.textContent = text;
  }

  function syncRows(table, items, keyName, key, cells, action) {
    const body = table.tBodies[0];
    const old = new Map([...body.rows].map((tr) => [tr.dataset[keyName], tr]));
    body.replaceChildren(...items.map((item) => {
      const content = cells(item);
      let tr = old.get(String(key(item)));
      if (!tr) {
        tr = el("tr", { dataset: { [keyName]: String(key(item)) } },
          ...content.map(() => el("td")),
          ...(action ? [el("td", { className: "actions rw" }, writable ? action(item) : null)] : []));
      }
      content.forEach((c, i) => setCell(tr.cells[i], c));
      return tr;
    }));
    return body;
  }

  class SignedOut extends Error {}

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    const init = { method, headers, cache: "no-store", credentials: "omit",
                   signal: AbortSignal.timeout(TIMEOUT_MS) };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    const answer = await response.json().catch(() => ({}));
    if (response.status === 401) throw new SignedOut(answer.error || "signed out");
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    return answer;
  }

  function say(text, bad) {
    const message = $("message");
    message.textContent = shown(text);
    message.className = bad ? "bad" : "";
  }

  // --- drawing

  function drawServer(status) {
    const m = status.master, r = status.reload;
    const facts = [
      ["Master", `pid ${m.pid}, up ${duration(m.uptime_seconds)}`],
      ["State", {running: "running", starting: "starting: no worker serves yet"}[m.state]
        ?? `${m.state}: new connections refused, then the server exits`],
      ["Generation", `${m.generation} (${m.workers} workers)`],
      ["FTP port", `${m.ftp_port}${m.auth_tls ? " (AUTH TLS)" : ""}` +
        (m.implicit_tls_port ? `, implicit FTPS ${m.implicit_tls_port}` : "")],
      ["Logins", `${status.logins.logged_in} logged in, ${status.logins.waiting} waiting`],
      ["Reload", `${r.state} (${r.count} so far)`],
      ["Banned addresses", status.bans],
    ];
    $("server").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("reload-errors").replaceChildren(...r.errors.map((e) => el("li", {}, e)));
    $("whoami").textContent = shown(`token ${status.you.token} (${status.you.writable ? "read-write" : "read-only"})`);
    writable = status.you.writable;
    document.body.classList.toggle("read-only", !writable);
  }

  function drawWorkers(workers) {
    const body = syncRows($("workers"), workers, "worker", (w) => w.pid, (w) => [
      w.index, w.pid, w.generation, w.health, w.sessions, `${w.uploads} / ${w.downloads}`,
      bar(w.rss_bytes || 0, w.rss_limit_bytes, bytes(w.rss_bytes)),
      w.heartbeat_age_seconds === null ? "-" : `${w.heartbeat_age_seconds.toFixed(1)} s`]);
    workers.forEach((w, i) => { body.rows[i].className = `health-${w.health}`; });
  }

  function transfer(t) {
    if (!t) return "-";
    const arrow = t.direction === "upload" ? "\u2191" : "\u2193";
    const total = t.expected_bytes === null ? "" : ` of ${bytes(t.expected_bytes)}`;
    const state = t.in_flight ? `${bytes(t.rate)}/s` : "ended";
    return el("span", { className: "transfer" },
      el("span", { className: "file" }, `${arrow} ${t.file}`),
      bar(t.bytes, t.expected_bytes, `${bytes(t.bytes)}${total}, ${state}`));
  }

  function drawSessions(sessions) {
    syncRows($("sessions"), sessions, "session", (s) => s.id, (s) => [
      s.id, s.user || "(not logged in)", s.client, s.command || "-", duration(s.idle_seconds),
      transfer(s.transfer)],
    (s) => el("button", { type: "button", className: "kick",
      onclick: () => act(`session ${s.id} closed`, "DELETE", `/sessions/${s.id}`) }, "Kick"));
  }

  function drawBans(answer) {
    syncRows($("bans"), answer.bans, "address", (b) => b.address, (b) => [
      b.address + (b.allowlisted ? " (allowlisted)" : ""), b.failures, when(b.banned_until),
      duration(b.seconds_left), b.copy === null ? "-" : b.copy ? "copy" : "own"],
    (b) => el("button", { type: "button", className: "lift",
      onclick: () => act(`${b.address}: ban lifted`, "DELETE",
        `/bans/${encodeURIComponent(b.address)}`) }, "Lift"));
  }

  // A bar for each limit an account's quota has; its usage is "?" until its home's first
  // scan (the first session of one of its accounts since the server started).
  function quotaBars(q) {
    if (!q || q.unlimited) return "unlimited";
    const bars = [];
    if (q.size.limit !== null) {
      bars.push(bar(q.size.used || 0, q.size.limit,
        `${q.size.used === null ? "?" : bytes(q.size.used)} of ${bytes(q.size.limit)}`));
    }
    if (q.files.limit !== null) {
      bars.push(bar(q.files.used || 0, q.files.limit,
        `${q.files.used === null ? "?" : q.files.used} of ${q.files.limit} files`));
    }
    return el("span", { className: "quota" }, ...bars);
  }

  // Then the virtual folders with a quota (one row per bucket and prefix they are mounted
  // at), under the accounts, while there are any.
  function drawAccounts(accounts, quotas) {
    const usage = new Map(quotas.quotas.map((q) => [q.user, q]));
    syncRows($("accounts"), accounts.accounts, "user", (a) => a.user, (a) => [
      a.user, a.bucket + (a.prefix ? `/${a.prefix}` : ""), a.home_dir,
      a.authority + (a.delete_enable ? "" : ", no delete"), quotaBars(usage.get(a.user))]);
    $("folder-quotas").hidden = quotas.folders.length === 0;
    syncRows($("folder-quotas"), quotas.folders, "folder",
      (f) => `${f.folder} ${f.bucket}/${f.prefix || ""}`, (f) => [
        f.folder, f.bucket + (f.prefix ? `/${f.prefix}` : ""), f.users.join(", "),
        quotaBars(f)]);
  }

  // The spool is shown while it holds anything, also under a configuration that stopped
  // sending events (what was spooled before is still delivered).
  function drawEvents(e) {
    const facts = e.enabled || e.queued || e.dead_letters ? [
      ["Queued", `${e.queued} event${e.queued === 1 ? "" : "s"}`],
      ["Oldest waiting", duration(e.oldest_queued_seconds)],
      ["Spool", bar(e.spool_bytes, e.spool_limit_bytes,
        `${bytes(e.spool_bytes)} of ${bytes(e.spool_limit_bytes)}`)],
      ["Dead letters", e.dead_letters],
    ] : [["Events", "not enabled on this server"]];
    $("events").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  // --- polling and actions

  async function refresh() {
    const status = await api("GET", "/status");
    drawServer(status);
    drawWorkers(status.workers);
    drawSessions((await api("GET", "/sessions")).sessions);
    drawBans(await api("GET", "/bans"));
    if (polls % SLOW_EVERY === 0) {
      drawAccounts(await api("GET", "/accounts"), await api("GET", "/quotas"));
      drawEvents(await api("GET", "/events"));
    }
    polls += 1;
  }

  async function poll() {
    timer = null;
    try {
      await refresh();
      document.body.dataset.polled = String(polls);
    } catch (error) {
      if (error instanceof SignedOut) { signOut(error.message); return; }
      say(`cannot reach the server: ${error.message}`, true);
    }
    if (token) timer = setTimeout(poll, POLL_MS);
  }

  async function act(done, method, path, body) {
    try {
      await api(method, path, body);
      say(done, false);
    } catch (error) {
      if (error instanceof SignedOut) { signOut(error.message); return; }
      say(error.message, true);
    }
    polls = 0;
    if (timer !== null) { clearTimeout(timer); poll(); }
  }

  function signOut(why) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("console").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("whoami").textContent = "";
    $("signin-error").textContent = shown(why || "");
    for (const table of document.querySelectorAll("main table")) table.tBodies[0].replaceChildren();
  }

  function signIn(newToken) {
    token = newToken;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("signin").hidden = true;
    $("console").hidden = false;
    $("signout").hidden = false;
    $("signin-error").textContent = "";
    polls = 0;
    poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const given = $("signin-token").value.trim();
      $("signin-token").value = "";
      if (given) signIn(given);
    });
    $("signout").addEventListener("click", () => signOut("signed out"));
    $("reload").addEventListener("click", () => act("configuration reloaded", "POST", "/reload"));
    $("ban-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const address = $("ban-address").value.trim();
      if (address) act(`${address} banned`, "POST", "/bans", { address });
    });
    if (token) signIn(token);
  });
})();
