// The wamfleet fleet dashboard's only script: plain JavaScript with no dependencies and no build
// step, so the page works offline and straight from the platform image. It reads the dashboard
// API (GET /v1/dashboard/...) and its buttons call the existing admin routes (POST /v1/retrains,
// POST /v1/rollouts/{id}/{action}) with the admin token typed into the header, kept in
// sessionStorage for this tab only. Every string from the API reaches the DOM as text
// (textContent, attributes), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "wamfleet.adminToken";
  const REFRESH_MS = 10000;
  const PAGE = 25;
  const TABS = ["overview", "robots", "episodes", "datasets", "models", "retrains", "rollouts"];
  const REFRESHED = new Set(["overview", "robots", "retrains", "rollouts"]);
  const KEY_METRICS = [
    "eval_success_rate",
    "champion_success_rate",
    "eval_heldout_task_success",
    "eval_offline_action_mse",
    "gate_passed",
  ];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    info: null,
    tab: "overview",
    episodeId: null,
    episodes: { items: [], next: null, query: {}, seq: 0 },
    robotsLoaded: false,
    openDetails: new Set(),
  };

  // DOM helpers -------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** el("td", {class: "x", title: "y", dataset: {a: 1}, on: {click: f}}, "text", child, ...) */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(id, ...children) {
    const node = $(id);
    node.replaceChildren();
    return append(node, children);
  }

  /** Only same-origin paths and http(s) URLs become links or video sources. */
  function safeUrl(url) {
    if (!url) return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function link(url, text, external = true) {
    const href = safeUrl(url);
    if (!href) return text;
    return el("a", { href, target: external ? "_blank" : null, rel: external ? "noopener noreferrer" : null }, text);
  }

  const pad = (n) => String(n).padStart(2, "0");

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
    if (!Number.isFinite(seconds)) return String(iso);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  const time = (iso) => el("time", { datetime: iso || null, title: iso || null }, when(iso));
  // UUIDv7 ids share their leading (time) digits, so an id is shortened to its tail, a hash to its head.
  const shortId = (value) => (value ? el("code", { title: value }, "…" + value.slice(-8)) : "–");
  const short = (value, n = 10) => (value ? el("code", { title: value }, value.length > n ? value.slice(0, n) + "…" : value) : "–");
  const num = (x, digits = 3) => (x === null || x === undefined ? "–" : Number.isInteger(x) ? String(x) : Number(x).toFixed(digits));
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
  const badge = (text, kind = "") => el("span", { class: `badge ${kind}`.trim() }, text);
  const empty = (text) => el("p", { class: "empty" }, text);

  function table(headers, rows, attrs = {}) {
    return el(
      "table",
      attrs,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows),
    );
  }

  function outcomeBadge(outcome) {
    if (!outcome || outcome.success === null || outcome.success === undefined) return badge("unknown", "muted");
    return outcome.success ? badge("success", "good") : badge("failure", "bad");
  }

  const STATUS_KIND = {
    queued: "muted", running: "info", succeeded: "good", failed: "bad",
    shadow: "info", canary: "warn", full: "info", completed: "good", rolled_back: "bad", aborted: "bad",
  };
  const statusBadge = (status) => badge(status.replace("_", " "), STATUS_KIND[status] || "");

  // Messages and API --------------------------------------------------------------------------

  let messageTimer = null;

  function say(text, kind = "info") {
    const box = $("message");
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = false;
    clearTimeout(messageTimer);
    if (kind !== "error") messageTimer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** FastAPI's `detail`: a string, or a list of validation errors. */
  function describeDetail(body, fallback) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
    }
    return fallback;
  }

  function parseJson(text) {
    try {
      return text ? JSON.parse(text) : null;
    } catch {
      return null;
    }
  }

  /** fetch with the token; no answer, or an answer that is not 2xx, is an ApiError naming it. */
  async function send(path, options = {}) {
    const headers = { Accept: options.accept || "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method: options.method || "GET", headers };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, `the platform did not answer (${err.message})`);
    }
    if (!response.ok) {
      const text = await response.text();
      throw new ApiError(response.status, `${response.status}: ${describeDetail(parseJson(text), text || response.statusText)}`);
    }
    return response;
  }

  async function api(path, options = {}) {
    return parseJson(await (await send(path, options)).text());
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) q.set(key, value);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // Who is looking ----------------------------------------------------------------------------

  const isAdmin = () => Boolean(state.info && state.info.viewer === "admin");

  function showAuth() {
    const admin = isAdmin();
    document.body.classList.toggle("is-admin", admin);
    $("viewer").textContent = admin ? "admin" : state.info ? "read-only" : "signed out";
    $("viewer").className = `viewer ${admin ? "admin" : ""}`;
    $("signin-form").hidden = admin;
    $("signout").hidden = !admin;
    for (const button of document.querySelectorAll(".admin-only")) {
      // data-allowed="false": the object's state forbids the action, whoever is signed in.
      button.disabled = !admin || button.dataset.allowed === "false";
      button.title = admin ? "" : "Sign in with the admin token first";
    }
    if (state.info) {
      $("model-name").textContent = state.info.model_name;
    }
  }

  /** Loads /info; false when the page cannot be viewed (locked, or the platform is down). */
  async function loadInfo() {
    try {
      state.info = await api("/v1/dashboard/info");
    } catch (err) {
      state.info = null;
      if (err.status === 401 && state.token) {
        forgetToken();
        say(`The platform refused that token (${err.message})`, "error");
        return loadInfo();
      }
      if (err.status === 401) {
        $("locked").hidden = false;
        $("main").hidden = true;
        showAuth();
        return false;
      }
      say(`Could not reach the platform: ${err.message}`, "error");
      showAuth();
      return false;
    }
    $("locked").hidden = true;
    $("main").hidden = false;
    showAuth();
    return true;
  }

  function forgetToken() {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) {
      say("Type the admin token first.", "error");
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    if (await loadInfo()) {
      if (isAdmin()) say("Signed in as admin: the actions are enabled.", "good");
      await render();
    }
  }

  async function signOut() {
    forgetToken();
    say("Signed out: read-only.");
    if (await loadInfo()) await render();
  }

  // Sections ----------------------------------------------------------------------------------

  function counts(info) {
    const c = info.counts;
    const items = [
      ["robots", "Robots", c.robots, "#/robots"],
      ["episodes", "Episodes", c.episodes, "#/episodes"],
      ["autonomous", "Autonomous episodes", c.autonomous_episodes, "#/episodes"],
      ["snapshots", "Dataset snapshots", c.snapshots, "#/datasets"],
      ["retrains", "Retrains", c.retrains, "#/retrains"],
      ["rollouts", "Rollouts", c.rollouts, "#/rollouts"],
    ];
    return items.map(([key, label, value, href]) =>
      el("a", { class: "count", href, "data-testid": `count-${key}` }, el("span", { class: "value" }, value), el("span", { class: "label" }, label)),
    );
  }

  async function renderOverview() {
    if (state.info) fill("counts", counts(state.info));
    const [rollouts, retrains, page, robots] = await Promise.all([
      api("/v1/dashboard/rollouts?limit=1"),
      api("/v1/dashboard/retrains?limit=3"),
      api("/v1/dashboard/episodes?limit=5"),
      api("/v1/dashboard/robots"),
    ]);
    fill("overview-rollout", rollouts.length ? rolloutSummary(rollouts[0]) : empty("No rollout yet."));
    fill("overview-retrains", retrains.length ? retrainsTable(retrains, true) : empty("No retrain yet."));
    fill("overview-robots", robots.length ? robotsTable(robots, true) : empty("No robot registered yet."));
    fill("overview-episodes", page.items.length ? episodesTable(page.items) : empty("No episode uploaded yet."));
  }

  function rolloutSummary(view) {
    const r = view.rollout;
    const ev = view.evidence;
    return el(
      "div",
      { class: "summary" },
      el("p", {}, statusBadge(r.stage), " ", `version ${r.candidate_version}`, " vs champion ",
        r.champion_version ? `version ${r.champion_version}` : "(none)",
        r.paused ? [" ", badge("paused", "warn")] : null,
        r.awaiting_approval ? [" ", badge("awaiting approval", "warn")] : null),
      ev ? el("p", { class: "muted" }, `candidate: ${ev.candidate.successes}/${ev.candidate.episodes} successes in this stage`) : null,
      r.decisions.length ? el("p", { class: "muted" }, `last decision: ${r.decisions[r.decisions.length - 1].reason}`) : null,
      el("a", { href: "#/rollouts" }, "details →"),
    );
  }

  async function renderRobots() {
    const robots = await api("/v1/dashboard/robots");
    fillRobotChoices(robots);
    fill("robots-table", robots.length ? robotsTable(robots) : empty("No robot registered yet."));
  }

  function robotsTable(robots, compact = false) {
    const rows = robots.map((r) =>
      el(
        "tr",
        { "data-testid": "robot-row", dataset: { robotId: r.robot_id } },
        el("td", {}, el("a", { href: "#/episodes", title: "its episodes", on: { click: () => showRobotEpisodes(r.robot_id) } }, r.robot_id),
          r.revoked ? [" ", badge("revoked", "bad")] : null),
        el("td", {}, r.embodiment),
        el("td", {}, r.site || "–"),
        el("td", { class: "num" }, r.episodes),
        el("td", { title: r.last_seen_at || "" }, ago(r.last_seen_at)),
        el("td", {}, r.assigned_version || (r.assigned_at ? "no policy" : "–"),
          r.assigned_stage ? [" ", statusBadge(r.assigned_stage)] : null,
          r.assigned_cohort ? [" ", badge(r.assigned_cohort, "muted")] : null),
        compact ? null : el("td", {}, r.assigned_at ? time(r.assigned_at) : "–"),
        compact ? null : el("td", { class: "muted" }, r.description || ""),
      ),
    );
    const headers = ["Robot", "Embodiment", "Site", "Episodes", "Last seen", "Assigned"];
    if (!compact) headers.push("Assigned at", "Description");
    return table(headers, rows, { "data-testid": compact ? "overview-robots-table" : "robots-table" });
  }

  /** The episodes tab searching this robot's episodes only (the link's hash change opens it). */
  function showRobotEpisodes(robotId) {
    for (const id of ["q-task", "q-success", "q-source", "q-policy"]) $(id).value = "";
    $("q-robot").value = robotId;
    state.episodes.query = searchQuery();
  }

  function fillRobotChoices(robots) {
    const select = $("q-robot");
    const current = select.value;
    select.replaceChildren();
    append(select, [el("option", { value: "" }, "any"), robots.map((r) => el("option", { value: r.robot_id }, r.robot_id))]);
    select.value = current;
    state.robotsLoaded = true;
  }

  // Episodes

  function searchQuery() {
    return {
      robot_id: $("q-robot").value,
      task: $("q-task").value.trim(),
      success: $("q-success").value,
      source: $("q-source").value,
      policy_version: $("q-policy").value.trim(),
    };
  }

  function episodesTable(items) {
    const rows = items.map((e) =>
      el(
        "tr",
        {
          class: "clickable",
          tabindex: "0",
          "data-testid": "episode-row",
          dataset: { episodeId: e.episode_id },
          on: {
            click: () => { window.location.hash = `#/episodes/${e.episode_id}`; },
            keydown: (ev) => { if (ev.key === "Enter") window.location.hash = `#/episodes/${e.episode_id}`; },
          },
        },
        el("td", {}, time(e.started_at)),
        el("td", {}, e.robot_id),
        el("td", { class: "task" }, e.task),
        el("td", {}, e.source),
        el("td", {}, e.policy_version || "–"),
        el("td", { class: "num" }, e.num_frames),
        el("td", {}, outcomeBadge(e.outcome)),
      ),
    );
    return table(["Recorded", "Robot", "Task", "Source", "Policy", "Frames", "Outcome"], rows, { "data-testid": "episodes-table" });
  }

  async function loadEpisodes(more = false) {
    if (!state.robotsLoaded) fillRobotChoices(await api("/v1/dashboard/robots"));
    const params = { ...state.episodes.query, limit: PAGE };
    if (more && state.episodes.next) params.cursor = state.episodes.next;
    const seq = ++state.episodes.seq;
    const page = await api(`/v1/dashboard/episodes${query(params)}`);
    if (seq !== state.episodes.seq) return; // a newer search was sent meanwhile: its answer wins
    state.episodes.items = more ? state.episodes.items.concat(page.items) : page.items;
    state.episodes.next = page.next_cursor;
    fill("episodes-table", state.episodes.items.length ? episodesTable(state.episodes.items) : empty("No episode matches."));
    $("episodes-more").hidden = !page.next_cursor;
  }

  async function renderEpisodes() {
    await loadEpisodes();
    await renderEpisodeDetail();
  }

  /** Fetched with the token (a plain link could not send it), then saved as <id>.mcap. */
  async function downloadMcap(episodeId) {
    say(`Exporting episode ${episodeId} as MCAP…`);
    try {
      const path = `/v1/dashboard/episodes/${encodeURIComponent(episodeId)}/mcap`;
      const response = await send(path, { accept: "application/octet-stream" });
      const url = URL.createObjectURL(await response.blob());
      const a = el("a", { href: url, download: `${episodeId}.mcap` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      say(`Saved ${episodeId}.mcap: open it in Foxglove.`);
    } catch (err) {
      say(`Could not export the episode as MCAP: ${err.message}`, "error");
    }
  }

  async function renderEpisodeDetail() {
    const box = $("episode-detail");
    if (!state.episodeId) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    const media = await api(`/v1/dashboard/episodes/${encodeURIComponent(state.episodeId)}`);
    const e = media.episode;
    const o = e.outcome || {};
    const facts = [
      ["Episode", el("code", {}, e.episode_id)],
      ["Robot", e.robot_id],
      ["Embodiment", `${e.embodiment.name} v${e.embodiment.version}`],
      ["Site", e.site || "–"],
      ["Source", e.source],
      ["Policy", e.policy_version || "–"],
      ["Outcome", [outcomeBadge(o), o.progress !== null && o.progress !== undefined ? ` progress ${pct(o.progress)}` : "", o.interventions ? `, ${o.interventions} interventions` : ""]],
      ["Frames", `${e.num_frames} at ${e.fps} fps (${(e.num_frames / e.fps).toFixed(1)} s)`],
      ["Recorded", time(e.started_at)],
      ["Committed", time(e.committed_at)],
      ["Size", `${(e.total_bytes / 1024).toFixed(0)} KiB`],
    ];
    const tags = Object.entries(e.tags || {}).sort(([a], [b]) => a.localeCompare(b));
    const videos = media.videos.map((v) => {
      const src = safeUrl(v.url);
      const scale = Math.max(1, Math.floor(256 / Math.max(v.width, 1)));
      return el(
        "figure",
        { class: "video" },
        src
          ? el("video", {
            src, controls: true, muted: true, loop: true, playsinline: true, preload: "auto",
            width: String(v.width * scale), height: String(v.height * scale),
            "data-testid": "episode-video", dataset: { camera: v.camera },
          })
          : el("p", { class: "error" }, "no playable URL"),
        el("figcaption", {}, el("strong", {}, v.camera), ` ${v.width}×${v.height} `, src ? link(src, "file", true) : null),
      );
    });
    box.replaceChildren();
    append(box, [
      el("div", { class: "detail-head" },
        el("h2", { "data-testid": "episode-instruction" }, media.instruction),
        el("div", { class: "actions" },
          videos.length > 1 ? el("button", { type: "button", "data-testid": "play-all", on: { click: () => playAll(box) } }, "Play all cameras") : null,
          el("button", { type: "button", class: "secondary", "data-testid": "download-mcap", title: "Cameras, state and actions as one MCAP file for Foxglove", on: { click: () => downloadMcap(e.episode_id) } }, "Download MCAP"),
          el("button", { type: "button", class: "secondary", on: { click: () => { window.location.hash = "#/episodes"; } } }, "Close"))),
      el("div", { class: "videos" }, videos.length ? videos : empty("This episode has no video.")),
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      tags.length ? el("div", {}, el("h3", {}, "Tags"), table(["Tag", "Value"], tags.map(([k, v]) => el("tr", {}, el("td", {}, el("code", {}, k)), el("td", {}, v))))) : null,
    ]);
    box.hidden = false;
    for (const video of box.querySelectorAll("video")) video.muted = true;
  }

  /** Every camera from the start, together (the streams share the episode's frame clock). */
  function playAll(box) {
    for (const video of box.querySelectorAll("video")) {
      video.currentTime = 0;
      video.play().catch((err) => say(`Could not play ${video.dataset.camera}: ${err.message}`, "error"));
    }
  }

  // Datasets

  function funnel(report) {
    const total = Math.max(report.episodes_in, 1);
    const dropped = Object.values(report.dropped || {}).reduce((a, b) => a + b, 0);
    const validated = report.episodes_in - report.not_validated;
    const filtered = validated - dropped;
    const deduped = filtered - report.duplicates_removed;
    const capped = report.capped_per_environment + report.capped_per_task;
    const reasons = Object.entries(report.dropped || {}).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k.replaceAll("_", " ")}`);
    const steps = [
      ["in the snapshot", report.episodes_in, null],
      ["validated", validated, report.not_validated ? `−${report.not_validated} not validated` : null],
      ["passed the filters", filtered, dropped ? `−${dropped}: ${reasons.join(", ")}` : null],
      ["after de-duplication", deduped, report.duplicates_removed ? `−${report.duplicates_removed} near-duplicates` : null],
      ["kept", report.kept, capped ? `−${capped} over the per-environment/per-task caps` : null],
    ];
    const rows = steps.map(([label, n, note]) =>
      el("div", { class: label === "kept" ? "step kept" : "step" },
        el("span", { class: "step-label" }, label),
        el("span", { class: "bar" }, el("span", { class: "fill", style: `width:${Math.max(0, (100 * n) / total).toFixed(1)}%` })),
        el("span", { class: "step-n num" }, n),
        el("span", { class: "step-note muted" }, note || "")),
    );
    const perTask = Object.entries(report.per_task || {});
    return el(
      "div",
      { class: "funnel", "data-testid": "curation-report" },
      rows,
      el("p", { class: "split" },
        badge(`${report.train} train`, "good"), " ", badge(`${report.holdout} holdout`, "info"),
        report.video_only_kept ? [" ", badge(`${report.video_only_kept} video-only`, "muted")] : null,
        ` · frames: ${report.frames_in} in, ${report.frames_trimmed} idle trimmed, ${report.frames_kept} kept`,
        ` · ${report.environments} environments`),
      perTask.length
        ? table(["Task", "Episodes in", "Kept", "Frames kept"], perTask.map(([task, g]) =>
          el("tr", {}, el("td", {}, task), el("td", { class: "num" }, g.episodes_in), el("td", { class: "num" }, g.kept), el("td", { class: "num" }, g.frames_kept))), { class: "compact" })
        : null,
    );
  }

  async function renderDatasets() {
    const views = await api("/v1/dashboard/datasets");
    if (!views.length) {
      fill("datasets-list", empty("No snapshot yet: a retrain freezes one."));
      return;
    }
    fill("datasets-list", views.map((d) =>
      el(
        "article",
        { class: "card", "data-testid": "dataset", dataset: { snapshot: d.snapshot_hash } },
        el("h2", {}, "Snapshot ", short(d.snapshot_hash, 12)),
        el("p", { class: "muted" }, `${d.episode_count} episodes · frozen `, time(d.created_at), " · ", el("code", { class: "wrap" }, d.key)),
        d.curated.length
          ? d.curated.map((c) =>
            el("section", { class: "curated" },
              el("h3", {}, "Curated dataset ", short(c.dataset_hash, 12), " · retrain ", shortId(c.retrain_run_id),
                c.model_version ? ` → version ${c.model_version}` : ""),
              c.error ? el("p", { class: "error" }, c.error) : null,
              c.report ? funnel(c.report) : null))
          : empty("Not curated yet."),
      ),
    ));
  }

  // Models

  function metricList(metrics) {
    const keys = KEY_METRICS.filter((k) => k in metrics);
    const rest = Object.keys(metrics).filter((k) => !KEY_METRICS.includes(k)).sort();
    const line = (k) => el("div", {}, el("span", { class: "muted" }, `${k} `), num(metrics[k]));
    return [
      keys.map(line),
      rest.length ? el("details", {}, el("summary", {}, `${rest.length} more`), rest.map(line)) : null,
    ];
  }

  function lineageList(lineage) {
    return Object.entries(lineage).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
      el("div", {}, el("span", { class: "muted" }, `${k.replace(/^wamfleet\./, "")} `), /^[0-9a-f]{16,}$/.test(v) ? short(v, 12) : /^[0-9a-f]{8}-[0-9a-f-]{27}$/.test(v) ? shortId(v) : v));
  }

  async function renderModels() {
    const view = await api("/v1/dashboard/models");
    const ui = safeUrl(view.mlflow_ui_url);
    fill("models-source", "Registered model ", el("code", {}, view.model_name), " in MLflow",
      ui ? [" (", link(ui, "open the MLflow UI"), ")"] : " (set WAMFLEET_MLFLOW_UI_URL for links into the MLflow UI)", ".");
    if (view.error) {
      fill("models-table", el("p", { class: "error", "data-testid": "models-error" }, view.error));
      return;
    }
    if (!view.versions.length) {
      fill("models-table", empty("No version registered yet."));
      return;
    }
    const rows = view.versions.map((v) =>
      el(
        "tr",
        { "data-testid": "model-row", dataset: { version: v.version } },
        el("td", {}, el("strong", {}, link(v.mlflow_version_url, `version ${v.version}`))),
        el("td", {}, v.aliases.length ? v.aliases.map((a) => [badge(a, a === "champion" ? "good" : a === "candidate" ? "warn" : "muted"), " "]) : "–"),
        el("td", {}, time(v.created_at)),
        el("td", {}, metricList(v.metrics)),
        el("td", {}, lineageList(v.lineage)),
        el("td", {}, v.run_id ? link(v.mlflow_run_url, short(v.run_id, 8)) : "–"),
      ),
    );
    fill("models-table", table(["Version", "Aliases", "Registered", "Metrics", "Lineage", "MLflow run"], rows, { "data-testid": "models-table" }));
  }

  // Retrains

  function retrainsTable(runs, compact = false) {
    const rows = runs.map((r) =>
      el(
        "tr",
        { "data-testid": "retrain-row", dataset: { runId: r.run_id, status: r.status } },
        el("td", {}, shortId(r.run_id)),
        el("td", {}, statusBadge(r.status)),
        compact ? null : el("td", {}, r.trigger, el("div", { class: "muted" }, r.requested_by)),
        el("td", { class: "task" }, r.reason || "–"),
        el("td", {}, time(r.created_at)),
        compact ? null : el("td", {}, r.finished_at ? time(r.finished_at) : r.started_at ? ["started ", time(r.started_at)] : "–"),
        compact ? null : el("td", {}, short(r.snapshot_hash), el("br"), short(r.dataset_hash)),
        el("td", {}, r.model_version ? `version ${r.model_version}` : "–", r.candidate ? [" ", badge("candidate", "warn")] : null),
        compact ? null : el("td", { class: "error-cell" }, r.error
          ? el("details", {}, el("summary", {}, r.error.split("\n")[0].slice(0, 80)), el("pre", {}, r.error))
          : ""),
      ),
    );
    const headers = compact
      ? ["Run", "Status", "Reason", "Created", "Version"]
      : ["Run", "Status", "Trigger", "Reason", "Created", "Finished", "Snapshot / dataset", "Version", "Error"];
    return table(headers, rows, { "data-testid": compact ? "overview-retrains-table" : "retrains-table" });
  }

  async function renderRetrains() {
    const runs = await api("/v1/dashboard/retrains");
    fill("retrains-table", runs.length ? retrainsTable(runs) : empty("No retrain yet."));
  }

  async function triggerRetrain(event) {
    event.preventDefault();
    if (!isAdmin()) {
      say("Sign in with the admin token to trigger a retrain.", "error");
      return;
    }
    const params = {};
    const steps = $("retrain-steps").value.trim();
    if (steps) params.steps = Number(steps);
    if ($("retrain-mode").value) params.mode = $("retrain-mode").value;
    const body = { reason: $("retrain-reason").value.trim() || "from the dashboard", params, force: $("retrain-force").checked };
    const button = $("trigger-retrain");
    button.disabled = true;
    try {
      const run = await api("/v1/retrains", { method: "POST", body });
      say(`Retrain ${run.run_id} ${run.status} on ${run.backend}.`, "good");
      $("retrain-reason").value = "";
      await renderRetrains();
    } catch (err) {
      say(`Retrain not started: ${err.message}`, "error");
    } finally {
      button.disabled = !isAdmin();
    }
  }

  // Rollouts

  function evidenceTable(ev) {
    const arm = (label, a) =>
      el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, a.version ? `version ${a.version}` : "–"),
        el("td", { class: "num" }, a.episodes), el("td", { class: "num" }, a.successes),
        el("td", { class: "num" }, pct(a.episodes ? a.successes / a.episodes : null)),
        el("td", { class: "num" }, a.requests), el("td", { class: "num" }, a.errors),
        el("td", { class: "num" }, a.latency_p95_ms === null ? "–" : `${num(a.latency_p95_ms, 1)} ms`));
    const s = ev.shadow;
    return el(
      "div",
      { class: "evidence", "data-testid": "rollout-evidence" },
      table(["", "Version", "Episodes", "Successes", "Success rate", "Requests", "Errors", "Latency p95"],
        [arm("candidate (this stage)", ev.candidate), arm("champion", ev.champion)], { class: "compact" }),
      el("p", { class: "muted" },
        `${num(ev.stage_seconds, 0)} s in ${ev.stage}`,
        ev.success_diff_lower !== null && ev.success_diff_lower !== undefined
          ? ` · success difference (candidate − champion): [${num(ev.success_diff_lower, 3)}, ${num(ev.success_diff_upper, 3)}]`
          : "",
        s.episodes ? ` · shadow: ${s.episodes} episodes, ${s.requests} requests, ${s.errors} errors, action MSE ${num(s.action_mse, 4)}, p95 ${num(s.latency_p95_ms, 1)} ms` : ""),
    );
  }

  function decisionsTable(rollout) {
    const rows = rollout.decisions.map((d, i) => {
      const key = `${rollout.rollout_id}/${i}`;
      const evidence = d.evidence
        ? el("details", { open: state.openDetails.has(key), on: { toggle: (ev) => { if (ev.target.open) state.openDetails.add(key); else state.openDetails.delete(key); } } },
          el("summary", {}, "evidence"), evidenceTable(d.evidence))
        : "";
      return el("tr", { "data-testid": "decision-row" },
        el("td", {}, d.action), el("td", {}, d.from_stage === d.to_stage ? d.to_stage : `${d.from_stage} → ${d.to_stage}`),
        el("td", {}, d.actor), el("td", { class: "task" }, d.reason, evidence));
    });
    return table(["Action", "Stage", "By", "Reason"], rows, { class: "compact decisions" });
  }

  const ACTIONS = [
    ["approve", "Approve", (r) => r.awaiting_approval && !r.paused],
    ["pause", "Pause", (r) => !r.paused],
    ["resume", "Resume", (r) => r.paused],
    ["abort", "Abort", () => true],
  ];

  function rolloutCard(view) {
    const r = view.rollout;
    const active = ["shadow", "canary", "full"].includes(r.stage);
    const stages = ["shadow", "canary", "full", "completed"];
    const reached = stages.indexOf(r.stage);
    const c = r.config;
    return el(
      "article",
      { class: "card rollout", "data-testid": "rollout", dataset: { rolloutId: r.rollout_id, stage: r.stage } },
      el("div", { class: "detail-head" },
        el("h2", {}, `Version ${r.candidate_version}`, el("span", { class: "muted" }, ` vs champion ${r.champion_version || "(none)"}`)),
        el("div", {}, statusBadge(r.stage), r.paused ? [" ", badge("paused", "warn")] : null,
          r.awaiting_approval ? [" ", badge("awaiting approval", "warn")] : null)),
      el("ol", { class: "stages" }, stages.map((s, i) =>
        el("li", { class: i < reached ? "done" : i === reached ? "current" : r.stage === "rolled_back" || r.stage === "aborted" ? "skipped" : "" }, s))),
      el("p", { class: "muted" }, "rollout ", shortId(r.rollout_id), " · started ", time(r.created_at), r.finished_at ? [" · finished ", time(r.finished_at)] : null,
        r.reason ? ` · ${r.reason}` : "",
        ` · canary ${c.canary_percent}% of ${c.sites.length ? c.sites.join(", ") : "every site"}, ≥${c.canary_min_episodes} episodes, margin ${c.success_margin}`,
        c.require_approval ? " · full needs approval" : ""),
      active
        ? el("div", { class: "actions" }, ACTIONS.map(([action, label, allowed]) =>
          el("button", {
            type: "button",
            class: `admin-only ${action === "abort" ? "danger" : ""}`.trim(),
            "data-testid": `rollout-${action}`,
            dataset: { action, allowed: String(allowed(r)) },
            disabled: !isAdmin() || !allowed(r),
            title: isAdmin() ? null : "Sign in with the admin token first",
            on: { click: () => act(r, action) },
          }, label)))
        : null,
      view.evidence ? [el("h3", {}, "Evidence now"), evidenceTable(view.evidence)] : null,
      el("h3", {}, "Decisions"),
      decisionsTable(r),
    );
  }

  async function act(rollout, action) {
    if (!isAdmin()) return;
    if (action === "abort" && !window.confirm(`Abort the rollout of version ${rollout.candidate_version}? The champion stays or is restored.`)) return;
    try {
      const info = await api(`/v1/rollouts/${encodeURIComponent(rollout.rollout_id)}/${action}`, { method: "POST" });
      say(`Rollout of version ${info.candidate_version}: ${action} done, now ${info.stage}${info.paused ? " (paused)" : ""}.`, "good");
    } catch (err) {
      say(`${action} refused: ${err.message}`, "error");
    }
    await renderRollouts();
  }

  async function renderRollouts() {
    const views = await api("/v1/dashboard/rollouts");
    fill("rollouts-list", views.length ? views.map(rolloutCard) : empty("No rollout yet: start one with `wamfleet rollout start`."));
  }

  // Routing -----------------------------------------------------------------------------------

  const RENDER = {
    overview: renderOverview,
    robots: renderRobots,
    episodes: renderEpisodes,
    datasets: renderDatasets,
    models: renderModels,
    retrains: renderRetrains,
    rollouts: renderRollouts,
  };

  function route() {
    const parts = window.location.hash.replace(/^#\/?/, "").split("/");
    state.tab = TABS.includes(parts[0]) ? parts[0] : "overview";
    state.episodeId = state.tab === "episodes" && parts[1] ? decodeURIComponent(parts[1]) : null;
    for (const tab of TABS) $(`tab-${tab}`).hidden = tab !== state.tab;
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === state.tab);
  }

  let rendering = null;

  async function render() {
    if (!state.info) return;
    const tab = state.tab;
    document.body.dataset.loading = tab;
    try {
      await RENDER[tab]();
      $(`tab-${tab}`).dataset.loaded = "true";
    } catch (err) {
      if (err.status === 401) {
        await loadInfo();
      } else {
        say(`Could not load ${tab}: ${err.message}`, "error");
      }
    } finally {
      delete document.body.dataset.loading;
      showAuth();
    }
  }

  async function navigate() {
    const before = state.tab;
    route();
    if (before === "episodes" && state.tab === "episodes" && $("tab-episodes").dataset.loaded) {
      await renderEpisodeDetail().catch((err) => say(`Could not load the episode: ${err.message}`, "error"));
      return;
    }
    await render();
  }

  async function refresh() {
    if (document.hidden || !$("autorefresh").checked || rendering) return;
    rendering = (async () => {
      if (await loadInfo()) {
        if (state.info && state.tab === "overview") fill("counts", counts(state.info));
        if (REFRESHED.has(state.tab)) await render();
      }
    })();
    try {
      await rendering;
    } finally {
      rendering = null;
    }
  }

  async function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    $("retrain-form").addEventListener("submit", triggerRetrain);
    $("episode-search").addEventListener("submit", (event) => {
      event.preventDefault();
      state.episodes.query = searchQuery();
      loadEpisodes().catch((err) => say(`Search failed: ${err.message}`, "error"));
    });
    $("episode-search").addEventListener("reset", () => {
      state.episodes.query = {};
      setTimeout(() => loadEpisodes().catch((err) => say(`Search failed: ${err.message}`, "error")), 0);
    });
    $("episodes-more").addEventListener("click", () => loadEpisodes(true).catch((err) => say(err.message, "error")));
    window.addEventListener("hashchange", navigate);
    route();
    if (await loadInfo()) await render();
    document.body.dataset.ready = "true";
    setInterval(refresh, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
