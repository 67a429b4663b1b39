// The Custos console: hand-written, no dependencies. Every value from the server is put in
// the page as text (textContent), never as HTML. Passkeys: WebAuthn in this browser; the
// signing challenge is the SHA-256 of the exact signature input, computed here from the
// bytes shown, and compared with the object's id before anything is signed.
"use strict";

const $main = () => document.getElementById("main");
let session = null;
let timers = [];
let flash = null;  // a message for the page the next navigation shows

// -- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function badge(text, cls) { return h("span", {class: "badge " + (cls || text)}, text); }

function table(header, rows, onclick) {
  return h("table", {},
    h("thead", {}, h("tr", {}, header.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows.map((r, i) => h("tr", onclick ? {class: "clickable", onclick: () => onclick(i)} : {},
      r.map((c) => h("td", {}, c)))) : h("tr", {}, h("td", {colspan: header.length, class: "muted"}, "none"))));
}

function card(title, ...children) { return h("section", {class: "card"}, title ? h("h2", {}, title) : null, ...children); }

function b64urlToBytes(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function b64ToBytes(s) { return b64urlToBytes(s.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")); }
function bytesToB64url(buf) {
  const bytes = new Uint8Array(buf);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
function hex(buf) { return Array.from(new Uint8Array(buf)).map((b) => b.toString(16).padStart(2, "0")).join(""); }
async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)); }

function banner(text, info) {
  const b = document.getElementById("banner");
  if (!text) { b.hidden = true; return; }
  b.textContent = text;
  b.className = info ? "info" : "";
  b.hidden = false;
}

async function api(method, path, body) {
  const opts = {method, credentials: "same-origin", headers: {}};
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = {error: "HTTP " + r.status}; }
  if (r.status === 401 && !path.startsWith("/api/login")) {
    session = null; renderWho(); location.hash = "#/login";
    throw new Error(data.error || "not logged in");
  }
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function poll(fn, ms) { const t = setInterval(fn, ms); timers.push(t); return t; }
function clearTimers() { for (const t of timers) clearInterval(t); timers = []; }

function when(t) { return !t || t === "-" ? "-" : t.replace("T", " ").replace(/\.\d+Z$/, "Z"); }

function fmtSecs(s) {
  if (s === null || s === undefined) return "n/a";
  return Number(s).toFixed(3) + " s";
}
function countdown(seconds) {
  const neg = seconds < 0; let s = Math.abs(Math.floor(seconds));
  const hh = Math.floor(s / 3600); s -= hh * 3600; const mm = Math.floor(s / 60); const ss = s - mm * 60;
  const t = `${hh}:${String(mm).padStart(2, "0")}:${String(ss).padStart(2, "0")}`;
  return neg ? `overdue by ${t}` : `${t} left`;
}

// -- passkeys ------------------------------------------------------------------------

function credentialRequest(pk) {
  return {publicKey: {
    challenge: b64urlToBytes(pk.challenge), rpId: pk.rpId, timeout: pk.timeout || 120000,
    userVerification: pk.userVerification || "required",
    allowCredentials: (pk.allowCredentials || []).map((c) => ({type: "public-key", id: b64urlToBytes(c.id)})),
  }};
}

function assertionBody(cred) {
  const r = cred.response;
  return {credential_id: bytesToB64url(cred.rawId), authenticator_data: bytesToB64url(r.authenticatorData),
          client_data_json: bytesToB64url(r.clientDataJSON), signature: bytesToB64url(r.signature)};
}

// Sign ``signable`` (the server's view of the exact bytes) with the passkey ``credentialId``:
// the challenge is computed here, from the bytes, and must equal the object's id.
async function signWithPasskey(signable, expectedIdHex, credentialId, uv) {
  const input = b64ToBytes(signable.signature_input_b64);
  const digest = await sha256(input);
  if (hex(digest) !== expectedIdHex) throw new Error("refusing to sign: the bytes shown do not hash to the id");
  const cred = await navigator.credentials.get({publicKey: {
    challenge: digest, rpId: session.rp_id, timeout: 120000, userVerification: uv ? "required" : "preferred",
    allowCredentials: [{type: "public-key", id: b64urlToBytes(credentialId)}],
  }});
  return assertionBody(cred);
}

// What the signer signs, shown byte for byte, with the digest recomputed in this browser.
function signableCard(title, signable, idHex, what) {
  const computed = h("dd", {class: "mono"}, "computing…");
  const check = h("dd", {class: "check"}, "");
  const input = b64ToBytes(signable.signature_input_b64);
  sha256(input).then((d) => {
    computed.textContent = hex(d);
    if (hex(d) === idHex) { check.textContent = "✓ matches the " + what + " id: this is exactly what the passkey signs"; check.className = "check ok"; }
    else { check.textContent = "✗ does NOT match the " + what + " id: do not sign"; check.className = "check bad"; }
  });
  return card(title,
    h("p", {class: "muted"}, `The signature input is the domain prefix and the canonical body below: ${input.length} bytes ` +
      `(${signable.body_bytes} of body). Its SHA-256 is the ${what} id and the passkey's challenge.`),
    h("pre", {class: "bytes", id: "signable-bytes"}, h("span", {class: "domain"}, signable.domain), signable.body),
    h("dl", {class: "kv"},
      h("dt", {}, what + " id"), h("dd", {class: "mono", id: "object-id"}, idHex),
      h("dt", {}, "SHA-256 here"), computed,
      h("dt", {}, ""), check,
      h("dt", {}, "passkey challenge"), h("dd", {class: "mono"}, signable.challenge_b64url)));
}

// -- pages ---------------------------------------------------------------------------

async function pageLogin() {
  const user = h("input", {id: "login-user", autocomplete: "username webauthn", placeholder: "user name"});
  const go = h("button", {id: "login-button", onclick: async () => {
    banner("");
    try {
      const begin = await api("POST", "/api/login/begin", {user: user.value.trim()});
      const cred = await navigator.credentials.get(credentialRequest(begin.public_key));
      await api("POST", "/api/login/finish", {challenge_id: begin.challenge_id, ...assertionBody(cred)});
      await loadSession();
      location.hash = "#/fleet";
    } catch (e) { banner("Login failed: " + e.message); }
  }}, "Log in with a passkey");
  $main().replaceChildren(h("div", {class: "login card"}, h("h1", {}, "Log in"),
    h("p", {class: "muted"}, "Your passkey is your login. No password, no key file."), user, go));
  user.focus();
}

async function pageEnroll(token) {
  let begin;
  try { begin = await api("POST", "/api/enroll/begin", {token}); }
  catch (e) { $main().replaceChildren(card("Enrollment", h("p", {class: "bad"}, e.message))); return; }
  const go = h("button", {id: "enroll-button", onclick: async () => {
    banner("");
    try {
      const fresh = await api("POST", "/api/enroll/begin", {token});
      const pk = fresh.public_key;
      const cred = await navigator.credentials.create({publicKey: {
        challenge: b64urlToBytes(pk.challenge), rp: pk.rp,
        user: {id: b64urlToBytes(pk.user.id), name: pk.user.name, displayName: pk.user.displayName},
        pubKeyCredParams: pk.pubKeyCredParams, timeout: pk.timeout, attestation: pk.attestation,
        authenticatorSelection: pk.authenticatorSelection,
        excludeCredentials: pk.excludeCredentials.map((c) => ({type: "public-key", id: b64urlToBytes(c.id)})),
      }});
      const r = cred.response;
      await api("POST", "/api/enroll/finish", {
        challenge_id: fresh.challenge_id, token, credential_id: bytesToB64url(cred.rawId),
        client_data_json: bytesToB64url(r.clientDataJSON), authenticator_data: bytesToB64url(r.getAuthenticatorData()),
        public_key: bytesToB64url(r.getPublicKey()), public_key_algorithm: r.getPublicKeyAlgorithm()});
      history.replaceState(null, "", "/#/fleet");  // the token leaves the address bar
      await loadSession();
      banner("Passkey registered. You are logged in as " + session.user + ".", true);
      route();
    } catch (e) { banner("Registration failed: " + e.message); }
  }}, "Create my passkey");
  $main().replaceChildren(h("div", {class: "login card"}, h("h1", {}, "Welcome, " + begin.user),
    h("p", {}, "Role: ", badge(begin.role, "executing")),
    h("p", {class: "muted"}, "This one-time link registers a passkey on this device for the Custos console. " +
      "Executives can later add it to the signer set and sign orders with it."), go));
}

async function pageFleet() {
  const data = await api("GET", "/api/fleet");
  const live = data.hosts.filter((x) => x.lease_state === "live").length;
  const halted = data.models.filter((m) => m.state === "halted").length;
  const copies = data.models.reduce((n, m) => n + (m.copies ? m.copies.total : 0), 0);
  $main().replaceChildren(
    h("h1", {}, "Fleet"),
    h("div", {class: "grid"},
      h("div", {class: "stat"}, h("div", {class: "n"}, `${live} / ${data.hosts.length}`), h("div", {class: "l"}, "hosts with a live custody lease")),
      h("div", {class: "stat"}, h("div", {class: "n"}, String(data.models.length)), h("div", {class: "l"}, `models (${halted} halted)`)),
      h("div", {class: "stat"}, h("div", {class: "n"}, String(copies)), h("div", {class: "l"}, "known copies"))),
    card("Hosts", table(["host", "state", "lease", "lease expires", "last report", "weight files", "processes", "guard"],
      data.hosts.map((x) => [h("b", {}, x.name), badge(x.state), badge(x.lease_state), when(x.lease_expires), when(x.last_report),
        String(x.files), String(x.processes), x.guard]))),
    card("Models and their copies", table(["model", "state", "covered", "artifacts", "copies", "by form", "by state", "on hosts"],
      data.models.map((m) => [h("b", {}, m.name), badge(m.state), m.covered ? "covered" : "-", String(m.artifacts),
        m.copies ? String(m.copies.total) : "?",
        m.copies ? Object.entries(m.copies.by_form).map(([k, v]) => `${k} ${v}`).join(", ") : "",
        m.copies ? Object.entries(m.copies.by_state).map(([k, v]) => `${k} ${v}`).join(", ") : "",
        m.copies ? m.copies.hosts.join(", ") : ""]))),
    card("Lineage (derivatives)", data.lineage.length ? h("ul", {class: "lineage"}, data.lineage.map((e) =>
      h("li", {}, h("b", {}, e.parent), ` — ${e.relation} → `, h("b", {}, e.child)))) : h("p", {class: "muted"}, "no derivations recorded")));
}

async function pageOrders() {
  const data = await api("GET", "/api/orders");
  const waiting = data.orders.filter((o) => o.state === "proposed");
  $main().replaceChildren(h("h1", {}, "Orders"),
    card(`Waiting for signatures (${waiting.length})`, table(["order", "action", "models", "signatures", "reason", "expires"],
      waiting.map((o) => [h("code", {}, o.id.slice(0, 16)), o.action + (o.drill ? " (drill)" : ""), o.models.join(", "),
        o.progress, o.reason, when(o.not_after)]), (i) => { location.hash = "#/orders/" + waiting[i].id; })),
    card("All orders", table(["order", "action", "models", "state", "signatures", "issued", "completed"],
      data.orders.map((o) => [h("code", {}, o.id.slice(0, 16)), o.action + (o.drill ? " (drill)" : ""), o.models.join(", "),
        badge(o.state), o.progress, when(o.issued_at), when(o.completed_at)]), (i) => { location.hash = "#/orders/" + data.orders[i].id; })));
}

// The plot is fetched again only when an ack arrives or the state changes (no flicker while polling).
let plot = {key: null, img: null};

function plotImage(p, oid) {
  const key = `${oid}/${p.state}/${(p.stats || {}).acked}`;
  if (plot.key !== key || !plot.img) {
    const img = h("img", {alt: "time from quorum to halt, one mark per host", id: "halt-plot"});
    const next = new Image();
    next.onload = () => { img.src = next.src; };
    next.src = `/api/orders/${oid}/plot.svg?k=${encodeURIComponent(key)}`;
    if (plot.img && plot.img.src) img.src = plot.img.src;  // the previous plot until the new one loads
    plot = {key, img};
  }
  return plot.img;
}

function progressCard(p, oid) {
  const v = p.verdict || {text: "-", complete: false};
  const st = p.stats || {};
  const text = p.state === "executing" ? `executing — ${st.acked ?? 0} of ${st.hosts ?? 0} hosts acked so far` : v.text;
  return card("Shutdown progress",
    h("div", {class: "verdict " + (v.complete ? "ok" : "warn"), id: "verdict"}, "Verdict: " + text),
    h("dl", {class: "kv"}, h("dt", {}, "quorum at"), h("dd", {}, p.quorum_at || "-"),
      h("dt", {}, "completed at"), h("dd", {}, p.completed_at || "-"),
      h("dt", {}, "hosts acked"), h("dd", {id: "acked"}, `${st.acked ?? 0} of ${st.hosts ?? 0}`),
      h("dt", {}, "time to halt"), h("dd", {}, `p50 ${fmtSecs(st.p50)}, p99 ${fmtSecs(st.p99)}, max ${fmtSecs(st.max)}`),
      h("dt", {}, "copies"), h("dd", {}, Object.entries(p.copies || {}).map(([k, n]) => `${k} ${n}`).join(", ") || "-")),
    table(["host", "ack", "outcome", "verified the order", "time to halt", "pids stopped", "paths wiped", "remaining"],
      (p.hosts || []).map((x) => [h("b", {}, x.host), x.acked ? badge("acked", "ok") : badge("waiting", "pending"), x.outcome,
        x.verified === true ? "yes" : (x.verified === false ? "NO" : "-"), fmtSecs(x.seconds_to_halt),
        x.pids_stopped.join(", ") || "-", String(x.paths_wiped), x.remaining.join("; ") || "-"])),
    h("div", {class: "plot"}, h("h3", {}, "Time from quorum to halt"), plotImage(p, oid)));
}

async function pageOrder(oid) {
  const o = await api("GET", "/api/orders/" + oid);
  const progressSlot = h("div", {id: "progress"});
  const mine = o.my_keys.filter((k) => !k.signed);
  const canSign = session.role === "executive" && o.state === "proposed" && mine.length > 0;
  const signBtn = canSign ? h("button", {id: "sign-order", onclick: async () => {
    banner(""); signBtn.disabled = true;
    try {
      const k = mine[0];
      const a = await signWithPasskey(o.signable, o.id, k.credential_id, k.user_verification);
      const after = await api("POST", `/api/orders/${o.id}/sign`, {key_id: k.key_id, ...a});
      banner(`Signed with your passkey (${k.name}): ${after.progress}, state ${after.state}.`, true);
      route();
    } catch (e) { banner("Signing failed: " + e.message); signBtn.disabled = false; }
  }}, `Sign this ${o.action} with my passkey`) : null;
  const why = session.role !== "executive" ? "Only executives sign." : (o.state !== "proposed" ? `The order is ${o.state}.` :
    (o.my_keys.length === 0 ? "None of your passkeys is a signer key of this order's signer set (see Signers)." : "You have signed it."));
  const b = o.body;
  const signCard = o.state === "proposed" ? card("Sign", h("div", {class: "row"}, signBtn, h("span", {class: "muted"}, canSign ?
    "Your authenticator will ask for your fingerprint or PIN. It signs the challenge below and cannot show the order: " +
    "check the order id against `custos order status` or the order.proposed notification." : why))) : null;
  const inFlight = o.state !== "proposed";
  $main().replaceChildren(...[
    h("h1", {}, `${o.action}${o.drill ? " (drill)" : ""} of ${o.models.join(", ")} `, badge(o.state)),
    h("div", {class: "grid"},
      h("div", {class: "stat"}, h("div", {class: "n", id: "sig-progress"}, `${o.signatures} of ${o.threshold}`), h("div", {class: "l"}, "signatures")),
      h("div", {class: "stat"}, h("div", {class: "n"}, String(o.artifacts.length)), h("div", {class: "l"}, "artifacts in scope (derivatives included)")),
      h("div", {class: "stat"}, h("div", {class: "n"}, "v" + o.signer_set_version), h("div", {class: "l"}, "signer set"))),
    signCard,
    inFlight ? progressSlot : null,
    signableCard(inFlight ? "What was signed: the canonical order" : "What you sign: the canonical order", o.signable, o.id, "order"),
    card("The order, field by field (decoded from the bytes above)", h("dl", {class: "kv"},
      h("dt", {}, "action"), h("dd", {}, b.action + (b.drill ? " (drill)" : "")),
      h("dt", {}, "models"), h("dd", {}, b.scope.models.join(", ")),
      h("dt", {}, "artifacts"), h("dd", {class: "mono"}, b.scope.artifacts.map((x) => x.slice(0, 16)).join(" ") || "none"),
      h("dt", {}, "reason"), h("dd", {}, b.reason),
      h("dt", {}, "issued at"), h("dd", {}, o.issued_at), h("dt", {}, "not after"), h("dd", {}, o.not_after),
      h("dt", {}, "sequence"), h("dd", {}, String(b.sequence)), h("dt", {}, "nonce"), h("dd", {class: "mono"}, b.nonce),
      h("dt", {}, "proposed by"), h("dd", {}, o.proposed_by),
      h("dt", {}, "problems"), h("dd", {}, o.problems.join("; ") || "none"))),
    card(`Signers of version ${o.signer_set_version} (threshold ${o.threshold})`, table(["signer", "key type", "key id", "signed"],
      o.signers.map((k) => [h("b", {}, k.name), k.keytype, h("code", {}, k.key_id.slice(0, 16)), k.signed ? badge("signed", "ok") : badge("not yet", "pending")])))].filter(Boolean));
  const refresh = async () => {
    try {
      const p = await api("GET", `/api/orders/${o.id}/progress`);
      if (p.summary) document.getElementById("sig-progress").textContent = `${p.summary.signatures} of ${p.summary.threshold}`;
      if (p.verdict) progressSlot.replaceChildren(progressCard(p, o.id));
      if (p.summary && p.summary.state !== o.state) { route(); }
    } catch (e) { /* keep the last view; the next poll retries */ }
  };
  await refresh();
  poll(refresh, ["quorum", "executing"].includes(o.state) ? 1000 : 3000);
}

async function pageIncidents() {
  const data = await api("GET", "/api/incidents");
  const fetched = Date.now();
  const cells = [];
  const rows = data.incidents.map((i) => {
    const c = h("span", {class: "countdown"}, "");
    if (!i.reported) cells.push([c, i.seconds_left]);
    else c.textContent = "reported";
    return [h("code", {}, i.id.slice(0, 12)), i.model, `${i.category} ${i.category_title}`, badge(i.severity, i.severity === "critical" || i.severity === "high" ? "bad" : "warn"),
      badge(i.status), when(i.discovered_at), when(i.deadline), c, String(i.alerts)];
  });
  const tick = () => {
    const gone = (Date.now() - fetched) / 1000;
    for (const [el, left] of cells) {
      const s = left - gone;
      el.textContent = countdown(s);
      el.className = "countdown " + (s < 0 ? "bad" : (s < 86400 ? "warn" : "ok"));
    }
  };
  tick();
  poll(tick, 1000);
  $main().replaceChildren(h("h1", {}, "Incidents"),
    h("p", {class: "muted"}, "Each incident must be reported within 72 hours of its discovery. The clock counts down to that deadline."),
    card(`Incidents (${data.incidents.length})`, table(["incident", "model", "category", "severity", "status", "discovered", "report deadline", "72-hour clock", "alerts"], rows)));
}

async function pageAccess() {
  const data = await api("GET", "/api/access");
  $main().replaceChildren(h("h1", {}, "Access requests"),
    card("Requests and grants (two-person rule)", table(["request", "model", "grantee", "requester", "state", "approvals", "reason", "ends"],
      data.grants.map((g) => [h("code", {}, g.id.slice(0, 12)), g.model, g.grantee, g.requester, badge(g.state), g.approvals,
        g.reason, when(g.state === "active" ? g.not_after : g.expires)]))));
}

async function pageAudit() {
  const out = h("div", {id: "audit-result"});
  const btn = h("button", {id: "verify-audit", onclick: async () => {
    btn.disabled = true; out.replaceChildren(h("p", {class: "muted"}, "verifying…"));
    try {
      const r = await api("POST", "/api/audit/verify", {});
      out.replaceChildren(h("p", {class: "verdict " + (r.ok ? "ok" : "bad")}, r.ok ? "✓ The audit log verifies" : "✗ The audit log FAILS verification"),
        h("dl", {class: "kv"}, h("dt", {}, "events checked"), h("dd", {}, String(r.events)),
          h("dt", {}, "checkpoints checked"), h("dd", {}, String(r.checkpoints)),
          h("dt", {}, "head"), h("dd", {}, "event " + r.head_seq),
          h("dt", {}, "after the last checkpoint"), h("dd", {}, `${r.events_after_last_checkpoint} events`),
          h("dt", {}, "first bad event"), h("dd", {}, r.first_bad_seq === null ? "-" : String(r.first_bad_seq)),
          h("dt", {}, "problems"), h("dd", {}, r.problems.join("; ") || "none"),
          h("dt", {}, "warnings"), h("dd", {}, r.warnings.join("; ") || "none")));
    } catch (e) { out.replaceChildren(h("p", {class: "bad"}, e.message)); }
    btn.disabled = false;
  }}, "Verify the audit log");
  $main().replaceChildren(h("h1", {}, "Audit"), card("Tamper-evident log",
    h("p", {class: "muted"}, "Fetches every event and signed checkpoint and checks the hash chain, the checkpoint signatures and that the log extends what this console verified before."),
    btn, out));
}

async function pageSigners() {
  const data = await api("GET", "/api/signers");
  const s = data.set;
  const mine = data.my_credentials.map((c) => {
    const add = !c.in_set && session.role === "executive" ? h("button", {class: "secondary", id: "propose-passkey", onclick: async () => {
      try { const r = await api("POST", "/api/signers/rotations", {credential_id: c.id}); location.hash = "#/signers/rotations/" + r.id; }
      catch (e) { banner(e.message); }
    }}, `Add this passkey to the signer set as ${session.user}`) : null;
    return [h("code", {}, c.id.slice(0, 20) + "…"), c.in_set ? badge("a signer key", "ok") : badge("not a signer", "pending"), add];
  });
  $main().replaceChildren(h("h1", {}, "Signers"),
    card(`Signer set version ${s.version}`, h("p", {class: "mono muted"}, "id " + s.id),
      h("p", {}, "Thresholds: " + Object.entries(s.thresholds).map(([a, n]) => `${a} ${n}`).join(", ")),
      table(["signer", "key type", "key id"], s.keys.map((k) => [h("b", {}, k.name), k.keytype, h("code", {}, k.key_id.slice(0, 16))]))),
    card("My passkeys", table(["credential", "status", ""], mine)),
    card("Prepared rotations", table(["new version", "adds", "proposed by", `old keys (of v${s.version})`, "new keys", "ready"],
      data.pending.map((p) => [h("code", {}, "v" + p.version + " " + p.id.slice(0, 12)), p.added_name, p.proposed_by,
        `${p.old_valid} of ${p.old_threshold}`, `${p.new_valid} of ${p.new_threshold}`, p.ready ? badge("ready", "ok") : badge("collecting", "pending")]),
      (i) => { location.hash = "#/signers/rotations/" + data.pending[i].id; })));
}

async function pageRotation(rid) {
  const p = await api("GET", "/api/signers/rotations/" + rid);
  const mineKey = p.new_keys.find((k) => k.credential_id && session.credentials.some((c) => c.id === k.credential_id));
  const signBtn = mineKey && !mineKey.signed && session.role === "executive" ? h("button", {id: "sign-rotation", onclick: async () => {
    banner("");
    try {
      const a = await signWithPasskey(p.signable, p.id, mineKey.credential_id, mineKey.user_verification);
      await api("POST", `/api/signers/rotations/${p.id}/sign`, a);
      banner("Signed the new signer set with your passkey.", true); route();
    } catch (e) { banner("Signing failed: " + e.message); }
  }}, "Sign the new set with my passkey") : null;
  const paste = h("textarea", {id: "rotation-signatures", placeholder: "paste the contents of a .sig.json (custos signer sign-set) or .sig (ssh-keygen -Y sign -n custos-signer-set) file"});
  const addBtn = h("button", {class: "secondary", id: "add-signatures", onclick: async () => {
    banner("");
    try { await api("POST", `/api/signers/rotations/${p.id}/signatures`, {text: paste.value}); route(); }
    catch (e) { banner("Signatures refused: " + e.message); }
  }}, "Add signatures");
  const install = h("button", {id: "install-rotation", disabled: !p.ready, onclick: async () => {
    banner("");
    try {
      const r = await api("POST", `/api/signers/rotations/${p.id}/install`, {});
      flash = `Signer set version ${r.set.version} installed.`;
      location.hash = "#/signers";
    }
    catch (e) { banner("Install failed: " + e.message); }
  }}, "Install the rotation");
  $main().replaceChildren(h("h1", {}, `Rotation to signer set version ${p.version}: add ${p.added_name}`),
    h("div", {class: "grid"},
      h("div", {class: "stat"}, h("div", {class: "n", id: "old-progress"}, `${p.old_valid} of ${p.old_threshold}`), h("div", {class: "l"}, `rotate threshold of version ${p.from_version}`)),
      h("div", {class: "stat"}, h("div", {class: "n", id: "new-progress"}, `${p.new_valid} of ${p.new_threshold}`), h("div", {class: "l"}, `rotate threshold of version ${p.version} (its own keys)`))),
    card("Signatures", h("div", {class: "row"}, signBtn, h("a", {href: `/api/signers/rotations/${p.id}/set`, download: `signer-set-v${p.version}.json`}, "Download the new set"),
      h("span", {class: "muted"}, `for: custos signer sign-set signer-set-v${p.version}.json --key KEY`)),
      h("h3", {}, "Signatures from signer keys"), paste, h("div", {class: "row"}, addBtn, install),
      h("p", {class: "muted"}, "Problems now: " + (p.problems.join(", ") || "none"))),
    signableCard("What is signed: the canonical new signer set", p.signable, p.id, "signer set"),
    card("Keys of the new set", table(["signer", "key type", "key id", "signed"], p.new_keys.map((k) =>
      [h("b", {}, k.name), k.keytype, h("code", {}, k.key_id.slice(0, 16)), k.signed ? badge("signed", "ok") : badge("not yet", "pending")]))));
}

// -- routing -------------------------------------------------------------------------

function renderWho() {
  const who = document.getElementById("who");
  const nav = document.getElementById("nav");
  if (!session || !session.user) { who.replaceChildren(); nav.hidden = true; return; }
  nav.hidden = false;
  who.replaceChildren(h("span", {id: "who-user"}, `${session.user} · ${session.role}`),
    h("button", {id: "logout", onclick: async () => { await api("POST", "/api/logout", {}); session = null; renderWho(); location.hash = "#/login"; }}, "Log out"));
}

async function loadSession() { session = await api("GET", "/api/session"); renderWho(); }

async function route() {
  clearTimers();
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const page = parts[0] || "fleet";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  try {
    if (page === "enroll") return await pageEnroll(parts[1] || "");
    if (!session || !session.user) return await pageLogin();
    if (page === "login") { location.hash = "#/fleet"; return; }
    if (page === "orders" && parts[1]) return await pageOrder(parts[1]);
    if (page === "signers" && parts[1] === "rotations" && parts[2]) return await pageRotation(parts[2]);
    const pages = {fleet: pageFleet, orders: pageOrders, incidents: pageIncidents, access: pageAccess, audit: pageAudit, signers: pageSigners};
    await (pages[page] || pageFleet)();
  } catch (e) {
    $main().replaceChildren(card("Cannot show this page", h("p", {class: "bad", id: "page-error"}, e.message)));
  }
}

window.addEventListener("hashchange", () => { banner(flash || "", true); flash = null; route(); });
window.addEventListener("DOMContentLoaded", async () => {
  try { await loadSession(); } catch (e) { session = null; }
  route();
});
