// The imagersync dashboard: recent jobs with live progress, and the selected job's
// details and log. Served by the binary next to GET /; no build step, no dependencies.
//
// Rules this file keeps:
// - Everything that comes from the server is put on the page with textContent or as a
//   numeric attribute, never parsed as HTML: job sources, targets, errors and log lines
//   are caller- and registry-controlled text.
// - Credentials live in sessionStorage (this tab only, gone when it closes) and go out
//   as an explicit Authorization header with credentials: "omit", so the browser never
//   caches them itself nor pops up its own Basic-auth dialog on a 401.
// - Live progress comes from polling the job list, once a second while a job is queued
//   or running, every 2 s otherwise (so a new job shows up soon), never while the tab
//   is hidden. One request refreshes every running job at once; following each job's
//   /events stream instead would hold one connection per running job, and browsers
//   allow only six per host over HTTP/1.1, so a busy service would starve the page of
//   connections.
"use strict";

(() => {
  const JOBS = "/v1/image/rsync/jobs";
  const MIRRORS = "/v1/mirrors";
  const STORAGE_KEY = "imagersync.credentials";
  const LIST_LIMIT = 25;
  const POLL_ACTIVE_MS = 1000;
  const POLL_IDLE_MS = 2000;
  const ACTIVE = new Set(["queued", "running"]);

  const $ = (id) => document.getElementById(id);
  let creds = loadCredentials();
  let jobs = [];
  let selected = selectedFromHash();
  let timer = null;
  let serverSkewMs = 0;
  // Whether this user may list mirrors (admins); a 403 turns the panel off for the session.
  let mirrorsAllowed = true;
  // Finished jobs as GET /jobs/{id} answers them: the listing leaves out each result's
  // log lines, so they are fetched once per finished job that is shown.
  const details = new Map();

  // ---- small helpers -------------------------------------------------------------

  /** Builds an element; `text` goes in as textContent, never as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function loadCredentials() {
    try {
      const c = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
      return c && typeof c.user === "string" && typeof c.header === "string" ? c : null;
    } catch {
      return null;
    }
  }

  /** `Basic base64(user:password)` of the UTF-8 bytes (btoa alone takes only Latin-1). */
  function basicHeader(user, password) {
    let binary = "";
    for (const b of new TextEncoder().encode(`${user}:${password}`)) binary += String.fromCharCode(b);
    return `Basic ${btoa(binary)}`;
  }

  function selectedFromHash() {
    const m = /^#job-(\d+)$/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function formatBytes(n) {
    if (!Number.isFinite(n) || n < 1024) return `${n || 0} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i += 1;
    } while (v >= 1024 && i < units.length - 1);
    return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
  }

  function formatDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "";
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
  function formatTime(iso) {
    if (!iso) return "";
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? String(iso) : timeFormat.format(t);
  }

  /** How long the job ran (or has been running, or waiting), by the server's clock. */
  function duration(job) {
    const now = Date.now() + serverSkewMs;
    const end = job.finished_at ? Date.parse(job.finished_at) : now;
    const start = job.started_at ? Date.parse(job.started_at) : Date.parse(job.created_at);
    return end - start;
  }

  function targets(job) {
    const t = job.request && job.request.targets;
    return Array.isArray(t) ? t : [];
  }

  function summary(job) {
    const ts = targets(job);
    const target = ts.length > 1 ? `${ts[0]} (+${ts.length - 1})` : ts[0] || "";
    return `${(job.request && job.request.source) || ""} → ${target}`;
  }

  function syncData(job) {
    return (job.result && job.result.rsync_data) || null;
  }

  /**
   * Sets a <progress> to done/total for a job in `state`: indeterminate while the total
   * is not known yet, green once succeeded, grey when the job failed or was cancelled.
   */
  function setProgress(bar, done, total, state) {
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
    } else if (ACTIVE.has(state)) {
      bar.removeAttribute("value");
    } else {
      bar.max = 1;
      bar.value = state === "succeeded" ? 1 : 0;
    }
    bar.classList.toggle("done", state === "succeeded");
    bar.classList.toggle("stopped", state === "failed" || state === "cancelled");
  }

  // ---- talking to the API --------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The error sentence of any of the API's error bodies. */
  function errorText(status, body) {
    if (body && typeof body.error === "string") return body.error;
    const data = body && body.rsync_data;
    if (data && typeof data.rsync_error === "string") return data.rsync_error;
    return `HTTP ${status}`;
  }

  async function api(path, method = "GET", header = creds && creds.header) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: header, Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
    });
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isFinite(date)) serverSkewMs = date - Date.now();
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new HttpError(response.status, errorText(response.status, body));
    return body;
  }

  // ---- sign in / out -------------------------------------------------------------

  function showSignedIn(signedIn) {
    $("sign-in-panel").hidden = signedIn;
    $("jobs-panel").hidden = !signedIn;
    $("session").hidden = !signedIn;
    if (!signedIn) $("job-panel").hidden = true;
    if (!signedIn) $("mirrors-panel").hidden = true;
    $("session-user").textContent = signedIn ? creds.user : "";
  }

  function signOut(message) {
    sessionStorage.removeItem(STORAGE_KEY);
    creds = null;
    jobs = [];
    mirrorsAllowed = true;
    clearTimeout(timer);
    $("jobs").replaceChildren();
    showSignedIn(false);
    $("sign-in-error").textContent = message || "";
    $("user").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const user = $("user").value.trim();
    const header = basicHeader(user, $("password").value);
    const button = event.submitter || $("sign-in").querySelector("button");
    button.disabled = true;
    $("sign-in-error").textContent = "";
    try {
      await api(`${JOBS}?limit=1`, "GET", header);
      creds = { user, header };
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify(creds));
      $("password").value = "";
      showSignedIn(true);
      refresh();
    } catch (e) {
      $("sign-in-error").textContent =
        e.status === 401 ? "Wrong user or password." : `Sign-in failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // ---- the job list --------------------------------------------------------------

  function jobRow(job) {
    const button = el("button", "job");
    button.type = "button";
    button.dataset.jobId = String(job.id);
    button.append(el("span", "id"), el("span", "what"), el("span", "state"), el("progress", "bar"));
    const meta = el("span", "meta");
    meta.append(el("span", "user"), el("span", "duration"), el("span", "bytes"), el("span", "blobs"));
    button.append(meta);
    button.addEventListener("click", async () => {
      await select(job.id);
      // One column in a narrow window: the details are below the list, bring them up.
      if (window.matchMedia("(max-width: 900px)").matches) $("job-panel").scrollIntoView();
    });
    const item = el("li");
    item.append(button);
    return item;
  }

  function updateRow(item, job) {
    const button = item.firstChild;
    const p = job.progress || {};
    button.querySelector(".id").textContent = `#${job.id}`;
    button.querySelector(".what").textContent = summary(job);
    button.querySelector(".what").title = summary(job);
    const state = button.querySelector(".state");
    state.textContent = job.state;
    state.className = `state state-${job.state}`;
    setProgress(button.querySelector(".bar"), p.bytes_done || 0, p.bytes_total || 0, job.state);
    button.querySelector(".bar").setAttribute("aria-label", `job ${job.id} bytes`);
    button.querySelector(".user").textContent = job.user;
    button.querySelector(".duration").textContent = formatDuration(duration(job));
    button.querySelector(".bytes").textContent = `${formatBytes(p.bytes_done || 0)} / ${formatBytes(p.bytes_total || 0)}`;
    const referrers = p.referrers_copied ? ` · ${p.referrers_copied} referrers` : "";
    button.querySelector(".blobs").textContent = `${p.blobs_done || 0}/${p.blobs_total || 0} blobs${referrers}`;
    button.setAttribute("aria-current", String(job.id === selected));
  }

  function renderList() {
    const list = $("jobs");
    const rows = new Map([...list.children].map((li) => [Number(li.firstChild.dataset.jobId), li]));
    const wanted = jobs.map((job) => {
      const item = rows.get(job.id) || jobRow(job);
      updateRow(item, job);
      return item;
    });
    // Re-order only when the order changed, so a focused row keeps its focus.
    const same = wanted.length === list.children.length && wanted.every((li, i) => list.children[i] === li);
    if (!same) list.replaceChildren(...wanted);
    $("jobs-empty").hidden = jobs.length > 0;
  }

  // ---- mirrors (admins) ----------------------------------------------------------

  function schedule(mirror) {
    const parts = [];
    if (mirror.every) parts.push(`every ${mirror.every}`);
    if (mirror.cron) parts.push(`cron ${mirror.cron}`);
    if (mirror.on_push) parts.push("on push");
    return parts.length ? parts.join(", ") : "by hand";
  }

  function mirrorRow(mirror) {
    const row = el("tr");
    row.dataset.mirror = mirror.name;
    row.append(el("td", "name mono", mirror.name));
    const ts = Array.isArray(mirror.targets) ? mirror.targets : [];
    const what = el("td", "what mono", `${mirror.source} → ${ts.join(", ")}`);
    what.title = what.textContent;
    row.append(what, el("td", "schedule", schedule(mirror)));
    const last = el("td", "last");
    const job = mirror.last_job;
    if (job) {
      const link = el("a", "job-link", `#${job.id}`);
      link.href = `#job-${job.id}`;
      const state = el("span", `state state-${job.state}`, job.state);
      const when = el("span", "muted", ` ${job.trigger} · ${formatTime(job.finished_at || job.created_at)}`);
      last.append(link, " ", state, when);
    } else {
      last.append(el("span", "muted", "never ran"));
    }
    row.append(last, el("td", "next", mirror.next_run ? formatTime(mirror.next_run) : "—"));
    return row;
  }

  async function refreshMirrors() {
    if (!mirrorsAllowed) return;
    try {
      const body = await api(MIRRORS);
      const mirrors = Array.isArray(body.mirrors) ? body.mirrors : [];
      $("mirrors").tBodies[0].replaceChildren(...mirrors.map(mirrorRow));
      $("mirrors-error").hidden = true;
      $("mirrors-panel").hidden = mirrors.length === 0;
    } catch (e) {
      if (e.status === 403) {
        mirrorsAllowed = false;
        $("mirrors-panel").hidden = true;
        return;
      }
      $("mirrors-error").textContent = `Could not load mirrors: ${e.message}`;
      $("mirrors-error").hidden = false;
    }
  }

  // ---- the selected job ----------------------------------------------------------

  function meter(id, label, done, total, text, state) {
    const box = el("div", "meter");
    box.id = id;
    box.dataset.done = String(done);
    box.dataset.total = String(total);
    const head = el("div", "label");
    head.append(el("span", null, label), el("span", "value", text));
    const bar = el("progress");
    bar.setAttribute("aria-label", label);
    setProgress(bar, done, total, state);
    box.append(head, bar);
    return box;
  }

  function fact(list, name, value) {
    if (value === undefined || value === null || value === "") return;
    list.append(el("dt", null, name), el("dd", null, value));
  }

  function renderJob(job) {
    const panel = $("job-panel");
    if (!job) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    panel.dataset.jobId = String(job.id);
    panel.dataset.state = job.state;
    const finished = !ACTIVE.has(job.state);
    const p = job.progress || {};
    $("job-id").textContent = `#${job.id}`;
    $("job-state").textContent = job.state;
    $("job-state").className = `state state-${job.state}`;

    const facts = document.createDocumentFragment();
    fact(facts, "Source", job.request && job.request.source);
    fact(facts, targets(job).length > 1 ? "Targets" : "Target", targets(job).join("\n"));
    fact(facts, "User", job.user);
    fact(facts, "Created", formatTime(job.created_at));
    fact(facts, "Started", formatTime(job.started_at));
    fact(facts, "Finished", formatTime(job.finished_at));
    const took = { queued: "Waiting for", running: "Running for" }[job.state] || "Duration";
    fact(facts, took, formatDuration(duration(job)));
    fact(facts, "Retries", p.retries ? String(p.retries) : "");
    // Signatures, attestations and SBOMs copied with the images.
    fact(facts, "Referrers", p.referrers_copied ? String(p.referrers_copied) : "");
    fact(facts, "Cancelled by", job.cancelled_by);
    fact(facts, "HTTP status", job.http_status ? String(job.http_status) : "");
    $("job-facts").replaceChildren(facts);

    const bytes = `${formatBytes(p.bytes_done || 0)} / ${formatBytes(p.bytes_total || 0)}`;
    const blobs = `${p.blobs_done || 0} / ${p.blobs_total || 0}`;
    const progress = [
      meter("job-bytes", "Bytes", p.bytes_done || 0, p.bytes_total || 0, bytes, job.state),
      meter("job-blobs", "Blobs", p.blobs_done || 0, p.blobs_total || 0, blobs, job.state),
    ];
    // One block per image once there is more than one (a tag list, a regex, targets).
    const images = Array.isArray(p.images) ? p.images : [];
    if (images.length > 1) {
      images.forEach((image, i) => {
        const box = el("div", "image");
        box.append(el("div", "ref mono", `${image.source} → ${image.target}`));
        box.append(el("div", "step", image.status || String(image.step || "").replace(/_/g, " ")));
        box.append(
          meter(`job-image-${i}`, "Bytes", image.bytes_done || 0, image.bytes_total || 0,
            `${formatBytes(image.bytes_done || 0)} / ${formatBytes(image.bytes_total || 0)} · ${image.blobs_done || 0}/${image.blobs_total || 0} blobs${image.referrers_copied ? ` · ${image.referrers_copied} referrers` : ""}`,
            image.step === "done" && image.status !== "failed" ? "succeeded" : job.state),
        );
        progress.push(box);
      });
    }
    $("job-progress").replaceChildren(...progress);

    const data = syncData(details.get(job.id) || job);
    const error = data && typeof data.rsync_error === "string" ? data.rsync_error : "";
    $("job-error").textContent = error;
    $("job-error").hidden = !error;
    $("job-log").textContent = data && typeof data.rsync_info === "string" ? data.rsync_info : "";
    $("job-log").dataset.empty = finished ? "No log lines." : "The log lines appear when the job ends.";
    $("job-cancel").hidden = finished;
    if (finished) $("job-cancel-note").textContent = "";
    if (finished) loadDetails(job.id);
  }

  /** Fetches a finished job in full (with its log) once, then shows it if still selected. */
  async function loadDetails(id) {
    if (details.has(id)) return;
    details.set(id, null);
    try {
      const full = await api(`${JOBS}/${id}`);
      details.set(id, full);
      if (selected === id) renderJob(full);
    } catch (e) {
      // Try again on the next refresh.
      details.delete(id);
    }
  }

  async function select(id) {
    selected = id;
    history.replaceState(null, "", `#job-${id}`);
    $("job-cancel-note").textContent = "";
    renderList();
    const job = jobs.find((j) => j.id === id);
    if (job) {
      renderJob(job);
    } else {
      await refreshSelected();
    }
  }

  /** The selected job when it is not on the first page of the list. */
  async function refreshSelected() {
    if (selected === null || jobs.some((j) => j.id === selected)) return;
    try {
      renderJob(await api(`${JOBS}/${selected}`));
    } catch (e) {
      if (e.status === 404) {
        selected = null;
        renderJob(null);
      }
    }
  }

  async function cancelSelected() {
    const id = selected;
    const button = $("job-cancel");
    button.disabled = true;
    try {
      await api(`${JOBS}/${id}`, "DELETE");
      $("job-cancel-note").textContent = "Cancelling: transfers stop, the job ends as cancelled.";
    } catch (e) {
      $("job-cancel-note").textContent = e.message;
    } finally {
      button.disabled = false;
    }
    refresh();
  }

  // ---- polling -------------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    if (!creds) return;
    let delay = POLL_IDLE_MS;
    try {
      const page = await api(`${JOBS}?limit=${LIST_LIMIT}`);
      jobs = Array.isArray(page.jobs) ? page.jobs : [];
      $("jobs-error").hidden = true;
      renderList();
      if (selected !== null) {
        const job = jobs.find((j) => j.id === selected);
        if (job) renderJob(job);
        else await refreshSelected();
      }
      await refreshMirrors();
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (jobs.some((j) => ACTIVE.has(j.state)) || $("job-panel").dataset.state === "running") {
        delay = POLL_ACTIVE_MS;
      }
    } catch (e) {
      if (e.status === 401) {
        signOut("The service refused these credentials; sign in again.");
        return;
      }
      $("jobs-error").textContent = `Could not load jobs: ${e.message}`;
      $("jobs-error").hidden = false;
    }
    if (!document.hidden) timer = setTimeout(refresh, delay);
  }

  // ---- start ---------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("job-cancel").addEventListener("click", cancelSelected);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    window.addEventListener("hashchange", () => {
      const id = selectedFromHash();
      if (id !== null && id !== selected) select(id);
    });
    showSignedIn(Boolean(creds));
    if (creds) refresh();
  });
})();
