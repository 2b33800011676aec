"""The labeling page: plain HTML and JavaScript, no framework, nothing from a CDN.

Kept as Python strings so it ships inside the package with no package-data setup.
One query at a time: the two fragments side by side as looping APNG clips (or, for
queries without frames, a canvas plot of each fragment's observations over time,
both on one scale). Buttons and keys answer: left / 1 (fragment 1 better),
right / 2, = / E / down (equally good), S / space (skip). The next pair is leased
and its clips decoded while the current one shows, so it appears the moment an
answer is given; the answer is sent in the background and retried until the
server acknowledges it (a restarted server accepts it: it is still pending there).
``window.rrLabeling`` exposes the page's state (acknowledged answers, what was
shown and whether it was ready) for tests.
"""

from __future__ import annotations

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
}

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Which fragment is better? · ray-rewards</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2329; background: #f4f5f7; }
  body { margin: 0 auto; max-width: 1100px; padding: 16px 24px; }
  header { display: flex; align-items: center; gap: 24px; flex-wrap: wrap; }
  h1 { font-size: 1.35rem; margin: 0; flex: 1; }
  #counter { font-variant-numeric: tabular-nums; font-weight: 600; }
  #progress { height: 6px; background: #dde1e6; border-radius: 3px; margin: 10px 0 16px; }
  #progress > div { height: 100%; width: 0; background: #2f7d4f; border-radius: 3px; }
  label input { font: inherit; padding: 4px 8px; width: 12em; }
  #pair { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
  figure { margin: 0; background: #fff; border-radius: 8px; padding: 12px;
           box-shadow: 0 1px 3px rgba(0,0,0,.12); border: 3px solid transparent; }
  figure.chosen { border-color: #2f7d4f; }
  figcaption { font-weight: 600; margin-bottom: 8px; }
  .view { height: min(58vh, 42vw); display: flex; align-items: center; justify-content: center;
          background: #fafbfc; border-radius: 4px; overflow: hidden; }
  .view img, .view canvas { width: 100%; height: 100%; object-fit: contain; }
  nav { display: grid; grid-template-columns: 1fr 1fr 1fr 1fr; gap: 12px; margin: 18px 0 8px; }
  button { font: inherit; font-weight: 600; padding: 14px 8px; border-radius: 8px;
           border: 1px solid #b9c0c8; background: #fff; cursor: pointer; }
  button:hover:not(:disabled) { background: #eef5f0; border-color: #2f7d4f; }
  button:disabled { opacity: .45; cursor: default; }
  kbd { font: .8em ui-monospace, monospace; border: 1px solid #b9c0c8; border-radius: 3px;
        padding: 0 4px; background: #f4f5f7; }
  #message { min-height: 1.4em; margin: 8px 0; }
  #message.error { color: #b3261e; font-weight: 600; }
  footer { color: #5f6b76; font-size: .85rem; }
</style>
</head>
<body>
<header>
  <h1>Which fragment is better?</h1>
  <label>Your name <input id="labeler" autocomplete="name" maxlength="100"
    placeholder="required"></label>
  <div id="counter" title="labels gathered (skips not counted) / budget">– labeled</div>
</header>
<div id="progress"><div></div></div>
<main id="pair">
  <figure id="side1"><figcaption>Fragment 1 <kbd>&larr;</kbd> <kbd>1</kbd></figcaption>
    <div class="view" id="view1"></div></figure>
  <figure id="side2"><figcaption>Fragment 2 <kbd>&rarr;</kbd> <kbd>2</kbd></figcaption>
    <div class="view" id="view2"></div></figure>
</main>
<nav>
  <button id="left" data-preference="1" disabled>&larr; Left is better</button>
  <button id="equal" data-preference="0.5" disabled>= Equally good</button>
  <button id="right" data-preference="0" disabled>Right is better &rarr;</button>
  <button id="skip" data-preference="skip" disabled>Skip: can't tell (S)</button>
</nav>
<p id="message" role="status"></p>
<footer>Keys: <kbd>&larr;</kbd>/<kbd>1</kbd> left, <kbd>&rarr;</kbd>/<kbd>2</kbd> right,
  <kbd>=</kbd>/<kbd>E</kbd>/<kbd>&darr;</kbd> equal, <kbd>S</kbd>/<kbd>space</kbd> skip.
  Query <span id="query-id">–</span> · <span id="you">0</span> labeled by you.</footer>
<script src="/page.js"></script>
</body>
</html>
"""

JS = r""""use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    current: null, prefetch: null, prefetched: null, loading: false, timer: null,
    acked: [], shown: [], errors: [], status: null, sending: new Map(),
  };
  window.rrLabeling = state;
  const nameField = $("labeler");
  nameField.value = localStorage.getItem("rr-labeler") || "";
  const labeler = () => nameField.value.trim();
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function message(text, isError) {
    $("message").textContent = text || "";
    $("message").className = isError ? "error" : "";
  }

  function showStatus(status) {
    if (!status) return;
    state.status = status;
    const budget = status.budget == null ? "" : " / " + status.budget;
    $("counter").textContent = status.labeled + budget + " labeled";
    $("you").textContent = status.yours;
    const share = status.budget ? Math.min(1, status.labeled / status.budget) : 0;
    document.querySelector("#progress > div").style.width = (100 * share) + "%";
  }

  function enable(on) {
    for (const b of document.querySelectorAll("nav button")) b.disabled = !on;
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const err = new Error((data && data.error) || response.statusText);
      err.status = response.status;
      err.code = data && data.code;
      throw err;
    }
    return data;
  }

  function loadImage(url) {
    return new Promise((resolve) => {
      const img = new Image();
      img.alt = "fragment";
      img.onload = () => img.decode().then(() => resolve(img), () => resolve(img));
      img.onerror = () => resolve(null);
      img.src = url;
    });
  }

  // Lease a query and load everything it shows; {none: true} when there is none.
  async function fetchQuery() {
    // What this page holds: the server renews those leases (or restores them after a
    // restart) and never hands them out to it again.
    const held = [...state.sending.values()];
    for (const q of [state.current, state.prefetched]) {
      if (q && q.lease) held.push({ query_id: q.id, lease: q.lease });
    }
    const data = await api("POST", "/api/next", { labeler: labeler(), held });
    showStatus(data.status);
    const q = data.query;
    if (!q) return { none: true, status: data.status };
    q.images = q.clips ? await Promise.all(q.clips.map(loadImage)) : [null, null];
    return q;
  }

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function drawPlot(canvas, rows, lo, hi) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 44;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    ctx.strokeStyle = "#c8ced4";
    ctx.strokeRect(pad, 8, w - pad - 8, h - pad - 8);
    ctx.fillStyle = "#5f6b76";
    ctx.font = "15px sans-serif";
    ctx.fillText(hi.toPrecision(3), 2, 20);
    ctx.fillText(lo.toPrecision(3), 2, h - pad + 4);
    ctx.fillText("step", w / 2 - 12, h - 10);
    const x = (t) => pad + (w - pad - 8) * (rows.length > 1 ? t / (rows.length - 1) : 0.5);
    const y = (v) => 8 + (h - pad - 8) * (1 - (v - lo) / (hi - lo || 1));
    const dims = rows.length ? rows[0].length : 0;
    for (let d = 0; d < dims; d++) {
      ctx.strokeStyle = COLORS[d % COLORS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      rows.forEach((row, t) => {
        if (row[d] == null) { started = false; return; }
        if (started) ctx.lineTo(x(t), y(row[d])); else ctx.moveTo(x(t), y(row[d]));
        started = true;
      });
      ctx.stroke();
      if (d < 10) {
        ctx.fillStyle = COLORS[d % COLORS.length];
        ctx.fillText("obs[" + d + "]", pad + 8 + 64 * d, 28);
      }
    }
  }

  // Put query q on the page; returns whether it could be shown at all.
  function render(q) {
    const plot = q.plot;
    let lo = Infinity, hi = -Infinity;
    if (plot) {
      for (const rows of [plot.obs_1, plot.obs_2]) {
        for (const row of rows) for (const v of row) if (v != null) {
          lo = Math.min(lo, v); hi = Math.max(hi, v);
        }
      }
      if (!(hi > lo)) { lo -= 1; hi += 1; }
    }
    [1, 2].forEach((k) => {
      const view = $("view" + k);
      view.replaceChildren();
      const img = q.images[k - 1];
      if (img) {
        img.id = "clip" + k;
        view.appendChild(img);
      } else if (plot) {
        const canvas = document.createElement("canvas");
        canvas.id = "plot" + k;
        canvas.width = 640;
        canvas.height = 480;
        view.appendChild(canvas);
        drawPlot(canvas, plot["obs_" + k], lo, hi);
      } else {
        view.textContent = "nothing to show for this fragment";
      }
    });
  }

  function show(q, fromPrefetch) {
    state.current = null;
    document.querySelectorAll("figure").forEach((f) => f.classList.remove("chosen"));
    if (!q || q.none || q.error) {
      enable(false);
      $("query-id").textContent = "–";
      document.body.dataset.query = "";
      const status = q && q.status;
      if (q && q.error) {
        message("Server unreachable (" + q.error.message + "); trying again…", true);
      } else if (status && status.done) {
        message("All done: the budget is reached or every pair is answered. Thank you!");
        return;  // nothing more will come
      } else {
        message("No pair to label right now; waiting for more…");
      }
      clearTimeout(state.timer);
      state.timer = setTimeout(start, 2000);
      return;
    }
    render(q);
    state.current = q;
    state.shown.push({
      id: q.id, prefetched: !!fromPrefetch,
      ready: q.images.every((img, i) => !q.clips || (img && img.complete && img.naturalWidth > 0)),
    });
    $("query-id").textContent = q.id;
    document.body.dataset.query = q.id;
    enable(true);
    if (!$("message").classList.contains("error")) message("");
  }

  function prefetch() {
    state.prefetched = null;
    state.prefetch = fetchQuery().then(
      (q) => { state.prefetched = q; return q; },
      (err) => ({ error: err }),
    );
  }

  async function start() {
    clearTimeout(state.timer);
    if (!labeler()) {
      enable(false);
      message("Enter your name to start.", true);
      nameField.focus();
      return;
    }
    if (state.current || state.loading) return;
    state.loading = true;
    let q;
    try { q = await fetchQuery(); } catch (err) { q = { error: err }; }
    state.loading = false;
    show(q, false);
    if (state.current) prefetch();
  }

  // Send one answer; retried while the server is unreachable (it may be restarting).
  async function send(q, preference) {
    const body = { labeler: labeler(), answers: [{ query_id: q.id, lease: q.lease, preference }] };
    state.sending.set(q.id, { query_id: q.id, lease: q.lease });
    try {
      return await sendBody(q, preference, body);
    } finally {
      state.sending.delete(q.id);
    }
  }

  async function sendBody(q, preference, body) {
    for (let attempt = 0; attempt < 120; attempt++) {
      try {
        const data = await api("POST", "/api/answer", body);
        state.acked.push({ id: q.id, preference });
        showStatus(data.status);
        return true;
      } catch (err) {
        if (err.status === 409 && err.code === "already_answered" && attempt > 0) {
          state.acked.push({ id: q.id, preference });  // an earlier try got through
          return true;
        }
        if (err.status) {
          state.errors.push({ id: q.id, status: err.status, error: err.message });
          message("Answer to " + q.id + " not recorded: " + err.message, true);
          return false;
        }
        message("Server unreachable; answer kept, retrying…", true);
        await sleep(Math.min(500 * (attempt + 1), 3000));
      }
    }
    message("Answer to " + q.id + " could not be sent", true);
    return false;
  }

  async function answer(preference) {
    const q = state.current;
    if (!q || !labeler()) return;
    state.current = null;
    enable(false);
    const chosen = { "1": "side1", "0": "side2" }[String(preference)];
    if (chosen) $(chosen).classList.add("chosen");
    const sent = send(q, preference).then((ok) => {
      if (ok && !$("message").textContent.startsWith("Answer to")) message("");
    });
    let next = state.prefetch ? await state.prefetch : null;
    state.prefetch = null;
    state.prefetched = null;
    if (!next || next.none || next.error) {  // none was free then: ask again once sent
      await sent;
      try { next = await fetchQuery(); } catch (err) { next = { error: err }; }
      show(next, false);
    } else {
      show(next, true);
    }
    if (state.current) prefetch();
  }

  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => {
      const p = button.dataset.preference;
      answer(p === "skip" ? "skip" : Number(p));
    });
  }

  const KEYS = {
    ArrowLeft: 1, "1": 1, ArrowRight: 0, "2": 0,
    "=": 0.5, e: 0.5, E: 0.5, ArrowDown: 0.5, s: "skip", S: "skip", " ": "skip",
  };
  document.addEventListener("keydown", (event) => {
    if (event.target === nameField) {
      if (event.key === "Enter") nameField.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || !(event.key in KEYS)) return;
    event.preventDefault();
    if (!event.repeat) answer(KEYS[event.key]);
  });

  nameField.addEventListener("change", () => {
    localStorage.setItem("rr-labeler", labeler());
    if (labeler()) message("");
    start();
  });

  window.addEventListener("pagehide", () => {
    const leases = [state.current, state.prefetched]
      .filter((q) => q && q.lease).map((q) => q.lease);
    if (leases.length) {
      fetch("/api/release", {
        method: "POST", keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ leases }),
      });
    }
  });

  api("GET", "/api/status?labeler=" + encodeURIComponent(labeler()))
    .then(showStatus, () => {});
  start();
})();
"""

__all__ = ["HEADERS", "HTML", "JS"]
