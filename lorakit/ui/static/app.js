// lorakit ui: one page, hash routes (#/runs, #/run/NAME, #/new, #/compare, #/chat, #/inspect).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("lorakit-token") || "";
if (TOKEN) sessionStorage.setItem("lorakit-token", TOKEN);
const $main = document.getElementById("main");
let timer = null;                    // the current page's refresh loop
window.__lorakit = {refreshes: 0, lastRefreshMs: null};   // read by the browser tests

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c.nodeType ? c : String(c));
  return el;
}

async function api(path, options) {
  options = options || {};
  const headers = Object.assign({"Content-Type": "application/json"}, TOKEN ? {Authorization: "Bearer " + TOKEN} : {});
  const res = await fetch(path, Object.assign({}, options, {headers}));
  if (options.raw) return res;
  const body = await res.json().catch(() => ({error: res.statusText}));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function toast(message, isError) {
  const t = document.getElementById("toast");
  t.textContent = message; t.className = isError ? "error" : ""; t.hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => { t.hidden = true; }, 6000);
}

const fmt = {
  num: (v, d) => v === null || v === undefined ? "–" : Number.isInteger(v) ? String(v) : (+v).toFixed(d === undefined ? 4 : d),
  sci: v => v === null || v === undefined ? "–" : (+v).toExponential(2),
  eta: s => s === null || s === undefined ? "–" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`,
  steps: r => `${r.step}${r.total_steps ? " / " + r.total_steps : ""}`,
};

function badge(status) { return h("span", {class: "badge " + status, "data-status": status}, status); }

function lossSeries(name, records, color) {
  const train = records.filter(r => "loss" in r).map(r => [r.step, r.loss]);
  const evals = records.filter(r => "eval_loss" in r).map(r => [r.step, r.eval_loss]);
  const out = [{name: `${name} train`, color, points: train}];
  if (evals.length) out.push({name: `${name} eval`, color, points: evals, markers: true, dashed: true});
  return out;
}

// ---- Runs: the list, and any of them overlaid ----------------------------------------------
const overlay = new Set(JSON.parse(sessionStorage.getItem("lorakit-overlay") || "[]"));

async function pageRuns() {
  const table = h("table", {class: "runs"});
  const chart = h("div", {class: "chart-box", id: "overlay-chart"});
  $main.replaceChildren(h("h1", {}, "Runs"), h("p", {class: "muted"},
    "Tick runs to overlay their train (lines) and eval (dots) loss. ", h("a", {href: "#/new"}, "New run →")),
    table, h("h2", {}, "Loss"), chart);
  const cache = {};
  async function refresh() {
    const t0 = performance.now();
    const data = await api("/api/runs");
    document.getElementById("runs-dir").textContent = data.runs_dir;
    table.replaceChildren(h("tr", {}, ["", "run", "status", "step", "loss", "eval loss", "tok/s", "ETA", "model"].map(c => h("th", {}, c))),
      ...data.runs.map(r => h("tr", {"data-run": r.name},
        h("td", {}, h("input", {type: "checkbox", class: "overlay", value: r.name, checked: overlay.has(r.name),
          onchange: e => { e.target.checked ? overlay.add(r.name) : overlay.delete(r.name);
                           sessionStorage.setItem("lorakit-overlay", JSON.stringify([...overlay])); refresh(); }})),
        h("td", {}, h("a", {href: "#/run/" + encodeURIComponent(r.name)}, r.name)), h("td", {}, badge(r.status)),
        h("td", {}, fmt.steps(r)), h("td", {}, fmt.num(r.loss)), h("td", {}, fmt.num(r.eval_loss)),
        h("td", {}, fmt.num(r.tokens_per_s, 0)), h("td", {}, fmt.eta(r.eta_s)), h("td", {class: "muted"}, r.model || ""))));
    if (!data.runs.length) table.append(h("tr", {}, h("td", {colspan: 9, class: "muted"}, "No runs yet.")));
    const chosen = data.runs.filter(r => overlay.has(r.name));
    const series = [];
    for (const [i, r] of chosen.entries()) {
      if (!cache[r.name] || cache[r.name].step !== r.step)
        cache[r.name] = {step: r.step, records: (await api(`/api/runs/${encodeURIComponent(r.name)}/metrics`)).records};
      series.push(...lossSeries(r.name, cache[r.name].records, PALETTE[i % PALETTE.length]));
    }
    lineChart(chart, series, {xlabel: "optimizer step", ylabel: "loss", title: "loss of the ticked runs",
                              empty: "tick runs above to plot them"});
    window.__lorakit.refreshes++; window.__lorakit.lastRefreshMs = performance.now() - t0;
  }
  await refresh();
  timer = setInterval(() => refresh().catch(e => toast(e.message, true)), 2000);
}

// ---- One run, live ---------------------------------------------------------------------------
async function pageRun(name) {
  const enc = encodeURIComponent(name);
  const stats = h("div", {class: "stats"});
  const buttons = h("div", {class: "buttons"});
  const charts = {loss: h("div", {class: "chart-box", id: "loss-chart"}), lr: h("div", {class: "chart-box small"}),
                  grad: h("div", {class: "chart-box small"})};
  const config = h("pre", {class: "config"}), card = h("pre", {class: "card"}), logBox = h("pre", {class: "log"});
  $main.replaceChildren(h("h1", {}, "Run ", h("span", {id: "run-name"}, name)), stats, buttons,
    h("h2", {}, "Loss"), charts.loss,
    h("div", {class: "row"}, h("div", {}, h("h2", {}, "Learning rate"), charts.lr),
                            h("div", {}, h("h2", {}, "Gradient norm"), charts.grad)),
    h("div", {class: "row"}, h("div", {}, h("h2", {}, "Resolved config"), config),
                            h("div", {}, h("h2", {}, "Model card"), card)),
    h("h2", {}, "Log"), logBox);
  let records = [], last = 0, shownStatus = null;
  async function refresh() {
    const t0 = performance.now();
    const [d, m] = await Promise.all([api(`/api/runs/${enc}`), api(`/api/runs/${enc}/metrics?since=${last}`)]);
    if (m.records.length) {
      const steps = new Set(m.records.map(r => r.step + ("eval_loss" in r ? "e" : "")));
      // a resumed run rewrites records after its checkpoint: keep the older ones only
      const first = Math.min(...m.records.map(r => r.step));
      records = records.filter(r => r.step < first || !steps.has(r.step + ("eval_loss" in r ? "e" : ""))).concat(m.records);
      last = Math.max(last, ...m.records.map(r => r.step));
    }
    stats.replaceChildren(...[["status", badge(d.status)], ["step", h("span", {id: "step"}, fmt.steps(d))],
      ["ETA", fmt.eta(d.eta_s)], ["tokens/s", fmt.num(d.tokens_per_s, 0)], ["loss", h("span", {id: "loss"}, fmt.num(d.loss))],
      ["eval loss", fmt.num(d.eval_loss)], ["lr", fmt.sci(d.lr)], ["grad norm", fmt.num(d.grad_norm, 3)]]
      .map(([k, v]) => h("div", {class: "stat"}, h("div", {class: "k"}, k), h("div", {class: "v"}, v))));
    if (shownStatus !== d.status) {
      shownStatus = d.status;
      buttons.replaceChildren(
        h("button", {id: "stop", disabled: d.status !== "running", onclick: () => act("stop")}, "Stop (save checkpoint)"),
        h("button", {id: "resume", disabled: d.status !== "stopped", onclick: () => act("resume")}, "Resume"),
        h("a", {class: "button", href: "#/chat?runs=" + enc}, "Chat with it"),
        h("a", {class: "button", href: "#/inspect?run=" + enc}, "Inspect"),
        h("span", {class: "muted"}, d.checkpoints.length ? "checkpoints: " + d.checkpoints.join(", ") : ""));
    }
    lineChart(charts.loss, lossSeries(name, records, PALETTE[0]), {xlabel: "optimizer step", ylabel: "loss", title: "loss"});
    const train = records.filter(r => "loss" in r);
    lineChart(charts.lr, [{name: "lr", points: train.map(r => [r.step, r.lr]), color: PALETTE[2]}], {width: 440, height: 200, xlabel: "step"});
    lineChart(charts.grad, [{name: "grad norm", points: train.map(r => [r.step, r.grad_norm]), color: PALETTE[3]}], {width: 440, height: 200, xlabel: "step"});
    config.textContent = yamlish(d.config);
    card.textContent = d.card || "(written when the run completes)";
    logBox.textContent = d.log;
    window.__lorakit.refreshes++; window.__lorakit.lastRefreshMs = performance.now() - t0;
  }
  async function act(what) {
    try { await api(`/api/runs/${enc}/${what}`, {method: "POST"}); shownStatus = null; toast(what === "stop" ? "stopping after this step…" : "resuming…"); await refresh(); }
    catch (e) { toast(e.message, true); }
  }
  await refresh();
  timer = setInterval(() => refresh().catch(e => toast(e.message, true)), 1000);
}

function yamlish(obj, indent) {
  indent = indent || "";
  return Object.entries(obj || {}).map(([k, v]) => v && typeof v === "object" && !Array.isArray(v)
    ? `${indent}${k}:\n${yamlish(v, indent + "  ")}` : `${indent}${k}: ${JSON.stringify(v)}`).join("\n");
}

// ---- New run: the form generated from TrainConfig ---------------------------------------------
async function pageNew() {
  const {fields} = await api("/api/schema");
  const inputs = {};
  const groups = {null: h("fieldset", {}, h("legend", {}, "Training settings")),
                  lora: h("fieldset", {}, h("legend", {}, "LoRA settings (lora:)"))};
  for (const f of fields) {
    let input;
    if (f.kind === "bool") input = h("input", {type: "checkbox", checked: !!f.default});
    else if (f.kind === "choice") input = h("select", {}, f.choices.map(c => h("option", {value: c, selected: c === f.default}, c)));
    else input = h("input", {type: f.kind === "int" || f.kind === "float" ? "number" : "text",
                             step: f.kind === "float" ? "any" : f.kind === "int" ? "1" : null, value: f.default === null ? "" : f.default});
    input.name = f.name; input.id = "f-" + f.name;
    inputs[f.name] = {f, input};
    groups[f.section].append(h("label", {class: "field", for: input.id, title: f.help},
      h("span", {class: "fname"}, f.name), input, h("small", {}, f.help)));
  }
  const name = h("input", {id: "run-name-input", value: "run-" + new Date().toISOString().slice(5, 16).replace(/[-:T]/g, ""), pattern: "[A-Za-z0-9][A-Za-z0-9_.-]*"});
  const preview = h("div", {id: "preview"});
  function values() {
    const out = {};
    for (const [k, {f, input}] of Object.entries(inputs)) {
      let v = f.kind === "bool" ? input.checked : input.value;
      if ((f.kind === "int" || f.kind === "float") && v !== "" && isFinite(+v)) v = +v;
      out[k] = v;
    }
    return out;
  }
  async function doPreview() {
    preview.replaceChildren(h("p", {class: "muted"}, "reading the data…"));
    try {
      const p = await api("/api/preview", {method: "POST", body: JSON.stringify({values: values(), n: 5})});
      preview.replaceChildren(h("h2", {}, "Data preview"),
        h("p", {class: "muted", id: "preview-stats"}, Object.entries(p.stats || {})
          .filter(([, v]) => v !== null && !(typeof v === "object" && !Object.keys(v).length))
          .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : typeof v === "number" ? +v.toPrecision(4) : v}`).join(" · ")),
        ...p.examples.map(e => h("div", {class: "example"},
          h("div", {class: "muted"}, `${e.n_tokens} tokens, ${e.n_trained} trained`),
          h("pre", {}, e.segments.map(s => h("span", {class: s.trained ? "trained" : "prompt"}, s.text))))));
    } catch (e) { preview.replaceChildren(h("p", {class: "error"}, e.message)); }
  }
  async function launch() {
    try {
      const r = await api("/api/runs", {method: "POST", body: JSON.stringify({name: name.value, values: values()})});
      toast("started: " + r.command.join(" "));
      location.hash = "#/run/" + encodeURIComponent(r.name);
    } catch (e) { toast(e.message, true); }
  }
  $main.replaceChildren(h("h1", {}, "New run"),
    h("p", {class: "muted"}, "Every field is a `lorakit train` setting (the same dataclass the CLI and YAML use). " +
      "The run's YAML is written to RUNS/NAME/train.yaml and started with `lorakit train RUNS/NAME/train.yaml`."),
    h("label", {class: "field wide"}, h("span", {class: "fname"}, "run name"), name),
    h("div", {class: "buttons"}, h("button", {id: "preview-btn", onclick: doPreview}, "Preview data"),
                                h("button", {id: "launch", class: "primary", onclick: launch}, "Start training")),
    preview, h("div", {class: "form"}, groups.null, groups.lora));
}

// ---- Compare: lorakit eval of several adapters and the base ------------------------------------
async function pageCompare() {
  const {runs} = await api("/api/runs");
  const withAdapter = runs.filter(r => r.has_adapter);
  const picks = withAdapter.map(r => h("label", {class: "pick"}, h("input", {type: "checkbox", value: r.name, class: "eval-run"}), r.name));
  const data = h("input", {id: "eval-data", placeholder: "held-out data file (.jsonl)", size: 50});
  const limit = h("input", {id: "eval-limit", type: "number", value: 20, min: 0});
  const status = h("span", {class: "muted", id: "eval-status"});
  const results = h("div", {id: "compare-results"});
  async function start() {
    const chosen = picks.map(p => p.firstChild).filter(c => c.checked).map(c => c.value);
    try {
      let job = await api("/api/evals", {method: "POST", body: JSON.stringify({runs: chosen, data: data.value, limit: +limit.value})});
      while (job.state === "running") {
        status.textContent = `evaluating… ${job.done} / ${job.total}`;
        await new Promise(r => setTimeout(r, 1000));
        job = await api("/api/evals/" + job.id);
      }
      status.textContent = job.state === "done" ? "done" : "failed: " + job.log.slice(-400);
      await show();
    } catch (e) { toast(e.message, true); }
  }
  async function show() {
    const {groups} = await api("/api/compare");
    results.replaceChildren(...groups.map(g => {
      const keys = [...new Set(g.columns.flatMap(c => Object.keys(c.metrics)))].filter(k => !k.endsWith("seconds"));
      const metrics = h("table", {class: "metrics"}, h("tr", {}, h("th", {}, "metric"), g.columns.map(c => h("th", {}, c.label))),
        keys.map(k => h("tr", {}, h("td", {}, k), g.columns.map(c => h("td", {}, c.metrics[k] === undefined ? "–" :
          (k.includes("match") || k === "accuracy" || k === "macro_f1") ? (100 * c.metrics[k]).toFixed(1) + "%" : fmt.num(c.metrics[k]))))));
      const n = Math.max(0, ...g.columns.map(c => c.examples.length));
      const rows = [];
      for (let i = 0; i < Math.min(n, 50); i++) {
        const ref = (g.columns.find(c => c.examples[i]) || {examples: []}).examples[i];
        rows.push(h("tr", {}, h("td", {class: "muted"}, ref ? ref.where.split("/").pop() : ""), h("td", {}, ref ? (ref.reference ?? ref.label) : ""),
          g.columns.map(c => { const e = c.examples[i]; const p = e ? (e.prediction ?? "") : "";
            return h("td", {class: e && String(p).trim() === String(e.reference ?? e.label).trim() ? "hit" : "miss"}, String(p)); })));
      }
      return h("section", {class: "group"}, h("h2", {}, `${g.data}`), h("p", {class: "muted"}, "base model: " + g.model), metrics,
        h("h3", {}, "Per example"), h("table", {class: "examples"},
          h("tr", {}, h("th", {}, "row"), h("th", {}, "reference"), g.columns.map(c => h("th", {}, c.label))), rows));
    }));
    if (!groups.length) results.replaceChildren(h("p", {class: "muted"}, "No eval results yet."));
  }
  $main.replaceChildren(h("h1", {}, "Compare"),
    h("p", {class: "muted"}, "Runs `lorakit eval` on each chosen adapter (and once on the base) with the same held-out file; reports land in RUNS/NAME/evals/."),
    h("div", {class: "picks"}, picks.length ? picks : h("span", {class: "muted"}, "no run has an adapter yet")),
    h("div", {class: "buttons"}, data, h("label", {}, " first ", limit, " rows "), h("button", {id: "eval-btn", class: "primary", onclick: start}, "Evaluate"), status),
    results);
  await show();
}

// ---- Chat: base + 1-4 adapters side by side, streaming ----------------------------------------
async function pageChat(query) {
  const {runs} = await api("/api/runs");
  const pre = new Set((query.get("runs") || "").split(",").filter(Boolean));
  const withAdapter = runs.filter(r => r.has_adapter);
  const picks = withAdapter.map(r => h("label", {class: "pick"}, h("input", {type: "checkbox", value: r.name, class: "chat-run", checked: pre.has(r.name)}), r.name, h("small", {class: "muted"}, " " + (r.model || ""))));
  const base = h("input", {type: "checkbox", id: "chat-base", checked: true});
  const template = h("select", {id: "chat-template"}, h("option", {value: "chat"}, "chat template"), h("option", {value: "alpaca"}, "alpaca prompt"));
  const maxTokens = h("input", {id: "chat-max", type: "number", value: 48, min: 1, max: 1024});
  const prompt = h("textarea", {id: "prompt", rows: 3, placeholder: "Ask all of them at once…"});
  const answers = h("div", {class: "answers", id: "answers"});
  async function send() {
    const chosen = picks.map(p => p.firstChild).filter(c => c.checked).map(c => c.value);
    answers.replaceChildren(h("p", {class: "muted"}, "loading the model…"));
    const res = await api("/api/chat", {method: "POST", raw: true, body: JSON.stringify({runs: chosen, base: base.checked,
      prompt: prompt.value, template: template.value, max_tokens: +maxTokens.value, temperature: 0})});
    if (!res.ok) { const b = await res.json().catch(() => ({})); answers.replaceChildren(h("p", {class: "error"}, b.error || res.statusText)); return; }
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = "", cols = [];
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).replace(/^data: /, ""); buf = buf.slice(cut + 2);
        if (line === "[DONE]") continue;
        const ev = JSON.parse(line);
        if (ev.columns) {
          cols = ev.columns.map(label => ({label, text: h("div", {class: "answer-text"}), foot: h("div", {class: "muted foot"}, "…")}));
          answers.replaceChildren(...cols.map(c => h("div", {class: "answer", "data-column": c.label}, h("h3", {}, c.label), c.text, c.foot)));
        } else if (ev.delta !== undefined) cols[ev.column].text.append(ev.delta);
        else if (ev.done) { cols[ev.column].foot.textContent = `${ev.completion_tokens} tokens, ${ev.finish_reason}`; cols[ev.column].foot.classList.add("finished"); }
        else if (ev.error) cols[ev.column].foot.textContent = "error: " + ev.error;
      }
    }
  }
  $main.replaceChildren(h("h1", {}, "Chat"),
    h("p", {class: "muted"}, "One prompt to the base model and 1-4 adapters in one mixed-adapter batch of the serving engine; greedy decoding."),
    h("div", {class: "picks"}, h("label", {class: "pick"}, base, "base model"), picks),
    h("div", {class: "buttons"}, template, h("label", {}, " max tokens ", maxTokens)),
    prompt, h("div", {class: "buttons"}, h("button", {id: "send", class: "primary", onclick: () => send().catch(e => toast(e.message, true))}, "Send")),
    answers);
}

// ---- Inspect: rank spectra and subspace similarity ---------------------------------------------
async function pageInspect(query) {
  const {runs} = await api("/api/runs");
  const names = runs.filter(r => r.has_adapter).map(r => r.name);
  const sel = h("select", {id: "inspect-run"}, names.map(n => h("option", {value: n, selected: n === query.get("run")}, n)));
  const vs = h("select", {id: "inspect-vs"}, h("option", {value: ""}, "(no second adapter)"), names.map(n => h("option", {value: n}, n)));
  const out = h("div", {id: "inspect-out"});
  async function go() {
    out.replaceChildren(h("p", {class: "muted"}, "computing…"));
    try {
      const r = await api(`/api/runs/${encodeURIComponent(sel.value)}/inspect` + (vs.value ? "?vs=" + encodeURIComponent(vs.value) : ""));
      const byType = {};
      for (const l of r.layers) (byType[l.module.split(".").pop()] ||= []).push(l.singular_values);
      const series = Object.entries(byType).map(([t, list]) => ({name: t, markers: true, points:
        list[0].map((_, k) => [k + 1, list.reduce((a, s) => a + s[k] / (s[0] || 1), 0) / list.length])}));
      const spectrum = h("div", {class: "chart-box", id: "spectrum"});
      const cols = ["module", "r", "delta_norm", "entropy_rank", "energy_rank_90", "sim_top", "sim_all"];
      const table = h("table", {class: "metrics"}, h("tr", {}, cols.map(c => h("th", {}, c))),
        r.means.map(m => h("tr", {}, cols.map(c => h("td", {}, typeof m[c] === "number" ? fmt.num(m[c], 3) : (m[c] ?? "–"))))));
      const heat = h("div", {class: "heatmaps"});
      out.replaceChildren(h("h2", {}, "Singular spectrum of dW (σ_k / σ_1, mean per module type)"), spectrum,
        h("h2", {}, "Per module type"), table, r.mean_grids ? h("h2", {}, `Subspace similarity φ(i, j) vs ${vs.value}`) : "", heat);
      lineChart(spectrum, series, {xlabel: "k", ylabel: "σ_k / σ_1"});
      for (const [t, g] of Object.entries(r.mean_grids || {})) heatmap(heat, g, t);
    } catch (e) { out.replaceChildren(h("p", {class: "error"}, e.message)); }
  }
  $main.replaceChildren(h("h1", {}, "Inspect"),
    h("p", {class: "muted"}, "`lorakit inspect`: the LoRA paper's analysis of what an adapter learned, from its files."),
    h("div", {class: "buttons"}, sel, " vs ", vs, h("button", {id: "inspect-btn", class: "primary", onclick: go}, "Inspect")), out);
  if (names.length && query.get("run")) await go();
}

// ---- routing ------------------------------------------------------------------------------
async function route() {
  clearInterval(timer); timer = null;
  const [path, qs] = (location.hash.slice(1) || "/runs").split("?");
  const query = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === (parts[0] === "run" ? "runs" : parts[0])));
  try {
    if (parts[0] === "run" && parts[1]) await pageRun(decodeURIComponent(parts[1]));
    else if (parts[0] === "new") await pageNew();
    else if (parts[0] === "compare") await pageCompare();
    else if (parts[0] === "chat") await pageChat(query);
    else if (parts[0] === "inspect") await pageInspect(query);
    else await pageRuns();
  } catch (e) { $main.replaceChildren(h("h1", {}, "Error"), h("p", {class: "error"}, e.message)); }
  document.body.dataset.ready = location.hash || "#/runs";
}
window.addEventListener("hashchange", route);
route();
