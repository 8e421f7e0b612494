// lorakit ui: export actions on a run's page (#/run/NAME). Loaded after app.js (uses its h, api,
// toast). A finished run gets one button per `lorakit export --to` target; each starts the
// export on the server (POST /api/runs/NAME/export), polls the job and shows its report.
"use strict";

(function () {
  const LABELS = {"gguf-lora": "llama.cpp LoRA (GGUF)", "ollama": "Ollama (GGUF + Modelfile)", "hf": "merged Hugging Face"};

  function summary(report) {
    const a = report.agreement || (report.gguf && report.gguf.agreement);
    const size = report.bytes || Object.values(report.files || {}).reduce((s, b) => s + b, 0);
    let agree = "no agreement check";
    if (a && a.skipped) agree = "agreement check skipped: " + a.skipped;
    else if (a && "identical" in a) agree = `${a.identical}/${a.prompts} prompts identical in ${a.consumer}`;
    else if (a && "max_abs_logit_diff_vs_fp32_merge" in a) agree = `max logit diff ${a.max_abs_logit_diff_vs_fp32_merge.toExponential(2)} (${a.consumer})`;
    return `${report.format} → ${report.file || report.dir}: ${(size / 2 ** 20).toFixed(1)} MiB, ${report.seconds} s; ${agree}`;
  }

  async function mount(name) {
    const enc = encodeURIComponent(name);
    const box = h("section", {id: "export-box"}, h("h2", {}, "Export"));
    const list = h("ul", {id: "export-list"}), report = h("pre", {id: "export-report", class: "export-report"});
    const anchor = document.querySelector("#main .buttons");
    if (!anchor || document.getElementById("export-box")) return;
    anchor.after(box);
    let info;
    try { info = await api(`/api/runs/${enc}/exports`); } catch (e) { box.append(h("p", {class: "muted"}, e.message)); return; }
    const controls = h("div", {class: "buttons"});
    for (const [to, spec] of Object.entries(info.actions)) {
      const select = h("select", {id: `export-${to}-outtype`}, ...spec.outtypes.concat(to === "hf" ? ["default"] : [])
        .map(t => h("option", {value: t, selected: t === spec.default}, t)));
      const button = h("button", {id: `export-${to}`, disabled: !info.exportable, onclick: () => run(to, select.value, button)}, LABELS[to] || to);
      controls.append(h("span", {class: "export-action"}, button, select));
    }
    box.append(controls, info.exportable ? "" : h("p", {class: "muted"}, "Export needs a finished run (its final adapter)."), list, report);
    function show(exports) {
      list.replaceChildren(...exports.map(e => h("li", {}, summary(e.report))));
    }
    show(info.exports);
    async function run(to, outtype, button) {
      button.disabled = true;
      try {
        let job;
        try { job = await api(`/api/runs/${enc}/export`, {method: "POST", body: JSON.stringify({to, outtype})}); }
        catch (e) {
          if (!/exists/.test(e.message) || !confirm(e.message + "\nReplace it?")) throw e;
          job = await api(`/api/runs/${enc}/export`, {method: "POST", body: JSON.stringify({to, outtype, overwrite: true})});
        }
        toast("$ " + job.command.join(" "));
        report.textContent = "$ " + job.command.join(" ") + "\n(running…)";
        while (job.state === "running") {
          await new Promise(r => setTimeout(r, 1000));
          job = await api(`/api/exports/${encodeURIComponent(job.id)}`);
        }
        if (job.state !== "done") throw new Error(`export failed: ${job.error}`);
        report.textContent = JSON.stringify(Object.assign({}, job.report, {modelfile: undefined}), null, 2);
        show((await api(`/api/runs/${enc}/exports`)).exports);
      } catch (e) { toast(e.message, true); report.textContent = e.message; }
      finally { button.disabled = false; }
    }
  }

  // app.js rebuilds #main on every page change (and the run page's buttons when the status
  // changes): add the export box whenever a run page is shown without one.
  new MutationObserver(() => {
    const m = location.hash.match(/^#\/run\/(.+)$/);
    if (m && !document.getElementById("export-box") && document.querySelector("#main .buttons")) mount(decodeURIComponent(m[1]));
  }).observe(document.getElementById("main"), {childList: true, subtree: true});
})();
