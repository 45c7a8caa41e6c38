// fungible's web UI: the little the server-rendered pages need a script for. Every change
// goes through the documented JSON API with the session's CSRF token; nothing is inline
// (the Content-Security-Policy forbids it), so each page's code runs from here by its
// <body data-page>.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

/** Calls the JSON API; throws an Error with the API's message on a non-2xx answer. */
async function api(method, url, body) {
  const headers = { "x-fungible-csrf": csrf };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const message = data?.error?.message || data?.message || text || res.statusText;
    const error = new Error(`${res.status}: ${message}`);
    error.status = res.status;
    throw error;
  }
  return data;
}

function toast(message, isError) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.classList.toggle("error", !!isError);
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, isError ? 8000 : 3000);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const fmt = {
  count: (n) => (n ?? 0).toLocaleString("en-US"),
  usd: (v) => v === null || v === undefined ? "–" : v === 0 ? "$0" : Math.abs(v) < 0.01 ? "$" + v.toFixed(6).replace(/0+$/, "") : "$" + v.toFixed(2),
  ms: (v) => v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(2) + " s",
  time: (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–",
};

function markCurrentNav() {
  const path = location.pathname.replace(/\/$/, "") || "/ui";
  for (const a of document.querySelectorAll(".main-nav a")) {
    const href = a.getAttribute("href");
    if (href === path || (href !== "/ui" && path.startsWith(href + "/"))) a.setAttribute("aria-current", "page");
  }
}

function setUpLogout() {
  document.getElementById("logout")?.addEventListener("click", async () => {
    try {
      const out = await api("POST", "/ui/logout");
      location.assign(out?.next || "/ui/login");
    } catch (e) { toast(e.message, true); }
  });
}

// ---- sign in ------------------------------------------------------------------------------

function loginPage() {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const out = await api("POST", "/ui/login", { key: form.key.value, next: form.dataset.next });
      location.assign(out.next);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      form.key.select();
    }
  });
}

// ---- charts -------------------------------------------------------------------------------

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

/** A number for an axis: 1.2k, 3.4M. */
function compact(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(v * 1000) / 1000);
}

/** Draws a series chart with uPlot into `target`, sized to it and redrawn as it resizes.
 * `opts.step`: the x distance between points (bars get half of it as padding each side). */
function lineChart(target, xs, series, opts) {
  if (typeof uPlot === "undefined") { target.textContent = "The charting library did not load."; return null; }
  const colors = [cssVar("--accent"), cssVar("--err"), cssVar("--ok"), cssVar("--warn"), "#8b5cf6", "#0891b2", "#db2777", "#78716c"];
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line"), width: 1 }, ticks: { stroke: cssVar("--line") } };
  const bars = series.some((s) => s.bars);
  const pad = (opts?.step ?? 0) / 2;
  const chart = new uPlot({
    width: Math.max(target.clientWidth, 200),
    height: 200,
    scales: {
      x: { time: opts?.time !== false, range: (u, min, max) => [min - pad, max + pad] },
      // Bars and counts from zero.
      y: { range: (u, min, max) => [bars || min >= 0 ? 0 : min, max > 0 ? max * 1.1 : 1] },
    },
    axes: [axis, { ...axis, size: 56, values: (u, ticks) => ticks.map(compact) }],
    // A line with only a point or two shows its points (a line needs two).
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], width: 2, points: { show: s.values.filter((v) => v !== null && v !== undefined).length < 3 }, ...(s.bars ? { paths: uPlot.paths.bars({ size: [0.7, 40], align: 0 }), fill: colors[i % colors.length] + "55" } : {}) }))],
  }, [xs, ...series.map((s) => s.values)], target);
  const resize = new ResizeObserver(() => chart.setSize({ width: Math.max(target.clientWidth, 200), height: 200 }));
  resize.observe(target);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => { resize.disconnect(); destroy(); };
  return chart;
}

/** `2026-12-07T13:00Z` or `2026-12-07` as Unix seconds. */
function bucketTime(key) {
  const t = Date.parse(key.length === 10 ? key + "T00:00:00Z" : key.replace(/Z?$/, "Z").replace(/:00Z$/, ":00:00Z"));
  return Number.isNaN(t) ? null : t / 1000;
}

/** Every bucket from `first` to now (or the last found), as Unix seconds. */
function buckets(first, last, step) {
  const now = Math.floor(Date.now() / 1000 / step) * step;
  const out = [];
  for (let t = first; t <= Math.max(now, last); t += step) out.push(t);
  return out;
}

/** How many series a split chart draws: the values with the most requests; the rest is
 * summed as "other" where sums make sense. */
const SPLIT_SERIES = 6;

async function overviewPage() {
  const charts = document.getElementById("charts");
  const since = charts.dataset.since;
  const bucket = charts.dataset.bucket;
  const split = charts.dataset.split;
  document.getElementById("split")?.addEventListener("change", (e) => e.target.form.submit());
  try {
    const stats = await api("GET", `/v1/stats?by=${bucket}` + (split ? `&split=${encodeURIComponent(split)}` : "") + (since ? `&since_ms=${since}` : ""));
    const found = stats.data.map((r) => ({ ...r, t: bucketTime(r.key) })).filter((r) => r.t !== null).sort((a, b) => a.t - b.t);
    const step = bucket === "hour" ? 3600 : 86400;
    const first = since ? Math.floor(Number(since) / 1000 / step) * step : (found[0]?.t ?? 0);
    const xs = found.length ? buckets(first, found[found.length - 1].t, step) : [];
    const draw = (name, series) => {
      const target = charts.querySelector(`[data-chart="${name}"]`);
      if (!xs.length) { target.textContent = "No traffic in this range."; target.classList.add("empty"); return; }
      if (!series.some((s) => s.values.some((v) => v !== null && v !== undefined))) { target.textContent = "Nothing to draw in this range."; target.classList.add("empty"); return; }
      lineChart(target, xs, series, { step });
    };
    if (split) {
      // A series per value: the busiest ones, and the rest as "other" for the sums.
      const totals = new Map();
      for (const r of found) totals.set(r.split, (totals.get(r.split) || 0) + r.requests);
      const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, SPLIT_SERIES).map(([v]) => v);
      const cell = new Map(found.map((r) => [`${r.t}\u0000${r.split}`, r]));
      const others = new Map();
      for (const r of found.filter((r) => !top.includes(r.split))) {
        const o = others.get(r.t) || { requests: 0, cost: 0, input_tokens: 0, output_tokens: 0, cache_hits: 0 };
        for (const f of Object.keys(o)) o[f] += r[f];
        others.set(r.t, o);
      }
      const series = (field, { sum = true, zero = true } = {}) => {
        const out = top.map((v) => ({ label: v, values: xs.map((t) => { const r = cell.get(`${t}\u0000${v}`); return r ? (typeof field === "function" ? field(r) : r[field]) : (zero ? 0 : null); }) }));
        if (sum && others.size) out.push({ label: "other", values: xs.map((t) => { const r = others.get(t); return r ? (typeof field === "function" ? field(r) : r[field]) : 0; }) });
        return out;
      };
      draw("requests", series("requests"));
      draw("latency", series("p95_latency_ms", { sum: false, zero: false }));
      draw("cost", series("cost"));
      draw("tokens", series((r) => r.input_tokens + r.output_tokens));
      draw("ttft", series("p95_ttft_ms", { sum: false, zero: false }));
      draw("cache", series("cache_hits"));
    } else {
      // Every bucket of the range, the empty ones as zero traffic (percentiles: a gap).
      const byTime = new Map(found.map((r) => [r.t, r]));
      const rows = xs.map((t) => byTime.get(t) || { t, requests: 0, errors: 0, cost: 0, input_tokens: 0, output_tokens: 0, cache_hits: 0, p50_latency_ms: null, p95_latency_ms: null, p50_ttft_ms: null, p95_ttft_ms: null });
      draw("requests", [{ label: "requests", values: rows.map((r) => r.requests), bars: true }, { label: "errors", values: rows.map((r) => r.errors), bars: true }]);
      draw("latency", [{ label: "p50", values: rows.map((r) => r.p50_latency_ms) }, { label: "p95", values: rows.map((r) => r.p95_latency_ms) }]);
      draw("cost", [{ label: "USD", values: rows.map((r) => r.cost), bars: true }]);
      draw("tokens", [{ label: "input", values: rows.map((r) => r.input_tokens) }, { label: "output", values: rows.map((r) => r.output_tokens) }]);
      draw("ttft", [{ label: "p50", values: rows.map((r) => r.p50_ttft_ms ?? null) }, { label: "p95", values: rows.map((r) => r.p95_ttft_ms ?? null) }]);
      draw("cache", [{ label: "hit rate %", values: rows.map((r) => (r.requests ? (100 * r.cache_hits) / r.requests : null)) }]);
    }
    charts.dataset.drawn = String(found.length);
  } catch (e) { toast(e.message, true); }
  // Spend against budgets: the admin API, for the admin.
  const budgets = document.getElementById("budgets");
  if (document.querySelector('.main-nav a[href="/ui/keys"]')) {
    try {
      const keys = await api("GET", "/admin/keys");
      const tbody = budgets.querySelector("tbody");
      for (const k of keys.data.filter((k) => k.budget && !k.revoked_ms)) {
        const spent = k.spend?.spent ?? 0;
        const share = k.budget.usd > 0 ? spent / k.budget.usd : 0;
        const meter = el("meter", { min: "0", max: "1", low: "0.75", high: "0.9", optimum: "0", value: String(Math.min(share, 1)), title: (share * 100).toFixed(1) + "%" });
        tbody.append(el("tr", {}, el("td", { text: k.name || k.id }), el("td", { text: k.spend?.period || k.budget.period }),
          el("td", { class: "num", text: fmt.usd(spent) }), el("td", { class: "num", text: fmt.usd(k.budget.usd) }), el("td", {}, meter, " " + (share * 100).toFixed(1) + "%")));
      }
      budgets.hidden = !tbody.children.length;
    } catch (e) { toast(e.message, true); }
  }
}

// ---- one inference ------------------------------------------------------------------------

/** The canonical request's messages as OpenAI-shaped ones (what a dataset row takes). */
function openAiMessages(request) {
  const out = [];
  for (const m of request?.messages || []) {
    const text = (m.content || []).map((p) => p.Text?.text).filter((t) => t !== undefined).join("");
    const msg = { role: m.role === "developer" ? "system" : m.role, content: text };
    if (m.tool_calls?.length) msg.tool_calls = m.tool_calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    if (m.tool_call_id) msg.tool_call_id = m.tool_call_id;
    out.push(msg);
  }
  return out;
}

function inferencePage() {
  for (const bar of document.querySelectorAll(".timeline .bar")) {
    bar.style.left = bar.dataset.left + "%";
    bar.style.width = bar.dataset.width + "%";
  }
  const form = document.getElementById("feedback-form");
  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { inference_id: form.dataset.inference };
    const verdict = form.querySelector('input[name="boolean"]:checked')?.value;
    if (verdict) body.boolean = verdict === "true";
    if (form.score.value !== "") body.score = Number(form.score.value);
    if (form.comment.value.trim()) body.comment = form.comment.value.trim();
    if (form.send_demonstration.checked) body.demonstration = form.demonstration.value;
    if (Object.keys(body).length === 1) { toast("Give a verdict, a score, a comment or a demonstration.", true); return; }
    try {
      await api("POST", "/v1/feedback", body);
      toast("Feedback saved.");
      location.reload();
    } catch (e) { toast(e.message, true); }
  });
  const dataset = document.getElementById("dataset-form");
  dataset?.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const record = await api("GET", `/v1/inferences/${encodeURIComponent(dataset.dataset.inference)}`);
      const messages = openAiMessages(record.request);
      const answer = dataset.use_demonstration.checked ? form.demonstration.value : record.response?.message?.content;
      if (answer === undefined || answer === null) { toast("This inference has no text answer: add a demonstration.", true); return; }
      messages.push({ role: "assistant", content: answer });
      const name = dataset.dataset_name.value.trim();
      await api("POST", `/v1/datasets/${encodeURIComponent(name)}/rows`, { rows: [{ messages, inference_id: record.id, source: dataset.use_demonstration.checked ? "demonstration" : "recorded" }] });
      toast(`Added to ${name}.`);
    } catch (e) { toast(e.message, true); }
  });
}

// ---- playground ---------------------------------------------------------------------------

/** Reads an OpenAI Chat Completions SSE stream, calling `onEvent` with each JSON chunk. */
async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data || data === "[DONE]") continue;
      onEvent(JSON.parse(data));
    }
  }
}

function playgroundPage() {
  const columns = document.getElementById("pg-columns");
  const template = document.getElementById("pg-column");
  const models = JSON.parse(columns.dataset.models || "[]");
  const history = [];
  const addColumn = (model) => {
    const node = template.content.firstElementChild.cloneNode(true);
    node.querySelector(".pg-model").value = model || "";
    node.querySelector(".pg-remove").addEventListener("click", () => node.remove());
    node.querySelector(".pg-choose")?.addEventListener("click", () => saveRow(node));
    columns.append(node);
    return node;
  };
  addColumn(models[0]);
  addColumn(models[1] || models[0]);
  document.getElementById("pg-add").addEventListener("click", () => addColumn(models[0])?.querySelector(".pg-model").focus());

  const conversation = () => {
    const messages = [];
    const system = document.getElementById("pg-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    messages.push({ role: "user", content: document.getElementById("pg-user").value });
    return messages;
  };

  async function run(node, messages) {
    const output = node.querySelector(".pg-output");
    const stats = node.querySelector(".pg-stats");
    const choose = node.querySelector(".pg-choose");
    output.textContent = "";
    stats.textContent = "…";
    if (choose) choose.disabled = true;
    node.dataset.state = "running";
    const body = { model: node.querySelector(".pg-model").value.trim(), messages, stream: true, stream_options: { include_usage: true } };
    const temperature = node.querySelector(".pg-temperature").value;
    const maxTokens = node.querySelector(".pg-max-tokens").value;
    if (temperature !== "") body.temperature = Number(temperature);
    if (maxTokens !== "") body.max_tokens = Number(maxTokens);
    const started = performance.now();
    let first = null;
    let usage = null;
    try {
      const res = await fetch("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json", "x-fungible-csrf": csrf }, body: JSON.stringify(body), credentials: "same-origin" });
      if (!res.ok) {
        const data = await res.json().catch(() => null);
        throw new Error(`${res.status}: ${data?.error?.message || res.statusText}`);
      }
      const inferenceId = res.headers.get("x-fungible-inference-id");
      const target = res.headers.get("x-fungible-target");
      await readSse(res, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
        const delta = chunk.choices?.[0]?.delta;
        const text = (delta?.content || "") + (delta?.tool_calls ? delta.tool_calls.map((c) => c.function?.arguments || "").join("") : "");
        if (text) {
          if (first === null) first = performance.now() - started;
          output.textContent += text;
        }
        if (chunk.usage) usage = chunk.usage;
      });
      const total = performance.now() - started;
      const parts = [];
      if (target) parts.push(target);
      if (usage) parts.push(`${fmt.count(usage.prompt_tokens)} in / ${fmt.count(usage.completion_tokens)} out`);
      parts.push(`first token ${fmt.ms(first)}`, `total ${fmt.ms(total)}`);
      stats.textContent = parts.join(" · ");
      node.dataset.state = "done";
      node.dataset.inference = inferenceId || "";
      if (choose) choose.disabled = false;
      // The cost is the recorded one (the gateway's prices), once the record is in.
      if (inferenceId) {
        try {
          const record = await api("GET", `/v1/inferences/${encodeURIComponent(inferenceId)}`);
          stats.textContent += ` · ${record.cost === null || record.cost === undefined ? "unknown price" : fmt.usd(record.cost)}`;
          const link = el("a", { href: `/ui/inferences/${encodeURIComponent(inferenceId)}`, text: "record" });
          stats.append(" · ", link);
        } catch { /* recording off or not readable: no cost */ }
      }
    } catch (e) {
      node.dataset.state = "error";
      stats.textContent = e.message;
      stats.classList.add("error");
    }
  }

  document.getElementById("playground").addEventListener("submit", async (event) => {
    event.preventDefault();
    const messages = conversation();
    const nodes = [...columns.querySelectorAll(".column")];
    for (const n of nodes) n.querySelector(".pg-stats").classList.remove("error");
    await Promise.all(nodes.map((n) => run(n, messages)));
  });

  async function saveRow(node) {
    const name = document.getElementById("pg-dataset-name")?.value.trim();
    if (!name) { toast("Name the dataset to save to.", true); document.getElementById("pg-dataset-name")?.focus(); return; }
    const messages = conversation();
    messages.push({ role: "assistant", content: node.querySelector(".pg-output").textContent });
    try {
      await api("POST", `/v1/datasets/${encodeURIComponent(name)}/rows`, { rows: [{ messages, tags: { from: "playground", model: node.querySelector(".pg-model").value.trim() } }] });
      toast(`Saved to ${name}.`);
    } catch (e) { toast(e.message, true); }
  }

  // "Open in playground": the recorded conversation, up to its last user message.
  const from = new URLSearchParams(location.search).get("inference");
  if (from) {
    api("GET", `/v1/inferences/${encodeURIComponent(from)}`).then((record) => {
      const messages = openAiMessages(record.request);
      const system = messages.filter((m) => m.role === "system").map((m) => m.content).join("\n\n");
      const rest = messages.filter((m) => m.role !== "system");
      const lastUser = rest.map((m) => m.role).lastIndexOf("user");
      document.getElementById("pg-system").value = system;
      if (lastUser >= 0) {
        history.push(...rest.slice(0, lastUser));
        document.getElementById("pg-user").value = rest[lastUser].content;
      }
      const shown = document.getElementById("pg-history");
      for (const m of history) shown.append(el("div", { class: "turn " + m.role }, el("header", { text: m.role }), el("pre", { class: "text", text: m.content || JSON.stringify(m.tool_calls || "") })));
      const first = columns.querySelector(".pg-model");
      if (first && record.requested_model) first.value = record.requested_model;
    }).catch((e) => toast(e.message, true));
  }
}

// ---- datasets, tuning, keys ---------------------------------------------------------------

async function datasetsPage() {
  const tbody = document.querySelector("#datasets-table tbody");
  const section = document.getElementById("dataset-rows");
  const list = section.querySelector("ol.rows");
  const more = document.getElementById("rows-more");
  let current = null;
  let version = null;
  let after = null;
  async function showVersions(name) {
    const dataset = await api("GET", `/v1/datasets/${encodeURIComponent(name)}`);
    const tbody = document.querySelector("#versions-table tbody");
    tbody.textContent = "";
    for (const v of dataset.versions) {
      const open = el("button", { type: "button", text: "v" + v.version });
      open.addEventListener("click", () => { version = v.version; showRows(name, true, true); });
      tbody.append(el("tr", {}, el("td", {}, open), el("td", { class: "num", text: fmt.count(v.rows) }), el("td", { text: fmt.time(v.created_ms) }), el("td", { text: (v.used_by || []).join(", ") || "–" })));
    }
    return dataset.versions;
  }
  async function showRows(name, reset, keepVersion) {
    if (reset) {
      list.textContent = "";
      after = null;
      current = name;
      if (!keepVersion) {
        const versions = await showVersions(name).catch((e) => { toast(e.message, true); return []; });
        version = versions.length ? Math.max(...versions.map((v) => v.version)) : null;
      }
    }
    document.getElementById("rows-name").textContent = name;
    document.getElementById("rows-version").textContent = version === null ? "–" : "v" + version;
    section.hidden = false;
    try {
      const page = await api("GET", `/v1/datasets/${encodeURIComponent(name)}/rows?limit=50` + (version !== null ? `&version=${version}` : "") + (after !== null ? `&after=${after}` : ""));
      for (const row of page.data) {
        const msgs = row.messages || [];
        const item = el("li", {});
        for (const m of msgs) item.append(el("div", { class: "turn " + m.role }, el("header", { text: m.role }), el("pre", { class: "text", text: typeof m.content === "string" ? m.content : JSON.stringify(m.content) })));
        list.append(item);
      }
      after = page.next_after ?? null;
      more.hidden = after === null;
    } catch (e) { toast(e.message, true); }
  }
  more.addEventListener("click", () => current && showRows(current, false));
  try {
    const all = await api("GET", "/v1/datasets");
    for (const d of all.data) {
      const open = el("button", { type: "button", text: d.name });
      open.addEventListener("click", () => showRows(d.name, true));
      tbody.append(el("tr", {}, el("td", {}, open), el("td", { class: "num", text: String(d.version) }), el("td", { class: "num", text: fmt.count(d.rows ?? d.stats?.rows) }),
        el("td", { text: fmt.time(d.created_ms) }), el("td", { text: d.description || "" })));
    }
    document.getElementById("datasets-empty").hidden = all.data.length > 0;
  } catch (e) { toast(e.message, true); }
}

async function tuningPage() {
  const tbody = document.querySelector("#jobs-table tbody");
  const section = document.getElementById("job");
  let shown = null;
  let chart = null;
  async function showJob(id) {
    const job = await api("GET", `/v1/tune/jobs/${encodeURIComponent(id)}`);
    shown = job;
    section.hidden = false;
    document.getElementById("job-id").textContent = job.id;
    document.getElementById("job-json").textContent = JSON.stringify(job, null, 2);
    const target = document.getElementById("job-loss");
    chart?.destroy();
    chart = null;
    target.textContent = "";
    const points = (job.events || []).filter((e) => e.step !== undefined && e.step !== null);
    if (points.length) {
      chart = lineChart(target, points.map((e) => e.step), [
        { label: "train loss", values: points.map((e) => e.train_loss ?? null) },
        { label: "validation loss", values: points.map((e) => e.valid_loss ?? null) },
      ], { time: false });
    } else target.textContent = "No loss reported yet.";
  }
  document.getElementById("promote-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await api("POST", `/v1/tune/jobs/${encodeURIComponent(shown.id)}/promote`, { route: form.route.value, percent: Number(form.percent.value) });
      toast("Promoted.");
      await showJob(shown.id);
    } catch (e) { toast(e.message, true); }
  });
  document.getElementById("job-cancel").addEventListener("click", async () => {
    try { await api("POST", `/v1/tune/jobs/${encodeURIComponent(shown.id)}/cancel`); toast("Cancelled."); await showJob(shown.id); } catch (e) { toast(e.message, true); }
  });
  try {
    const jobs = await api("GET", "/v1/tune/jobs");
    for (const j of jobs.data) {
      const open = el("button", { type: "button", text: j.id });
      open.addEventListener("click", () => showJob(j.id).catch((e) => toast(e.message, true)));
      tbody.append(el("tr", {}, el("td", {}, open), el("td", { text: j.provider }), el("td", { text: j.base_model }), el("td", { text: `${j.dataset}@${j.dataset_version}` }),
        el("td", {}, el("span", { class: "badge " + (j.status === "succeeded" ? "ok" : j.status === "failed" || j.status === "cancelled" ? "err" : ""), text: j.status })),
        el("td", { text: j.alias || j.fine_tuned_model || "" }), el("td", { class: "num", text: fmt.usd(j.cost ?? j.estimated_cost) }), el("td", { text: fmt.time(j.created_ms) })));
    }
    document.getElementById("jobs-empty").hidden = jobs.data.length > 0;
  } catch (e) { toast(e.message, true); }
}

async function keysPage() {
  const tbody = document.querySelector("#keys-table tbody");
  const form = document.getElementById("key-form");
  const title = document.getElementById("key-form-title");
  const reset = document.getElementById("key-reset");
  const stopEditing = () => {
    form.reset();
    form.id.value = "";
    title.textContent = "Create a key";
    document.getElementById("key-submit").textContent = "Create";
    reset.hidden = true;
  };
  reset.addEventListener("click", stopEditing);
  const edit = (k) => {
    form.id.value = k.id;
    form.name.value = k.name || "";
    form.models.value = (k.models || []).join(", ");
    form.rpm.value = k.rpm ?? "";
    form.tpm.value = k.tpm ?? "";
    form.budget_usd.value = k.budget?.usd ?? "";
    if (k.budget) form.budget_period.value = k.budget.period;
    for (const box of form.querySelectorAll('input[name="scope"]')) box.checked = (k.scopes || []).includes(box.value);
    title.textContent = `Change ${k.name || k.id}`;
    document.getElementById("key-submit").textContent = "Save";
    reset.hidden = false;
    form.name.focus();
  };
  async function load() {
    tbody.textContent = "";
    const keys = await api("GET", "/admin/keys");
    for (const k of keys.data) {
      const actions = el("td", {});
      if (!k.revoked_ms) {
        const change = el("button", { type: "button", text: "Change" });
        change.addEventListener("click", () => edit(k));
        const revoke = el("button", { type: "button", class: "revoke", text: "Revoke", "data-key": k.id });
        revoke.addEventListener("click", async () => {
          if (!confirm(`Revoke ${k.name || k.id}? Requests with it are refused at once.`)) return;
          try { await api("DELETE", `/admin/keys/${encodeURIComponent(k.id)}`); toast("Revoked."); await load(); } catch (e) { toast(e.message, true); }
        });
        actions.append(change, " ", revoke);
      }
      const budget = k.budget ? `${fmt.usd(k.spend?.spent ?? 0)} of ${fmt.usd(k.budget.usd)} ${k.budget.period}` : "–";
      tbody.append(el("tr", { "data-key": k.id }, el("td", { text: k.name || "–" }), el("td", {}, el("code", { text: k.prefix + "…" })), el("td", { text: (k.models || []).join(", ") || "all" }),
        el("td", { class: "num", text: k.rpm ?? "–" }), el("td", { class: "num", text: k.tpm ?? "–" }), el("td", { text: budget }), el("td", { text: (k.scopes || []).join(" ") }),
        el("td", { text: fmt.time(k.created_ms) }), el("td", {}, el("span", { class: "badge " + (k.revoked_ms ? "err" : "ok"), text: k.revoked_ms ? "revoked" : "active" })), actions));
    }
    document.getElementById("keys-empty").hidden = keys.data.length > 0;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const number = (v) => v === "" ? null : Number(v);
    const body = {
      name: form.name.value.trim() || null,
      models: form.models.value.split(",").map((s) => s.trim()).filter(Boolean),
      rpm: number(form.rpm.value),
      tpm: number(form.tpm.value),
      budget: form.budget_usd.value === "" ? null : { usd: Number(form.budget_usd.value), period: form.budget_period.value },
      scopes: [...form.querySelectorAll('input[name="scope"]:checked')].map((b) => b.value),
    };
    try {
      if (form.id.value) {
        await api("PATCH", `/admin/keys/${encodeURIComponent(form.id.value)}`, body);
        toast("Saved.");
        stopEditing();
      } else {
        const created = await api("POST", "/admin/keys", body);
        document.getElementById("new-key-text").textContent = created.key;
        document.getElementById("new-key").hidden = false;
        form.reset();
      }
      await load();
    } catch (e) { toast(e.message, true); }
  });
  document.getElementById("copy-key").addEventListener("click", () => {
    navigator.clipboard?.writeText(document.getElementById("new-key-text").textContent).then(() => toast("Copied."), () => toast("Select the key and copy it.", true));
  });
  try { await load(); } catch (e) { toast(e.message, true); }
}

const pages = { login: loginPage, overview: overviewPage, inference: inferencePage, playground: playgroundPage, datasets: datasetsPage, tuning: tuningPage, keys: keysPage };

document.addEventListener("DOMContentLoaded", () => {
  markCurrentNav();
  setUpLogout();
  pages[document.body.dataset.page]?.();
});
