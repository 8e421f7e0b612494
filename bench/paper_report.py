"""The paper table's report: the issue's goals checked against the measured rows, the markdown
table and the accuracy-vs-trainable-parameters plot (``bench/paper_table.py`` measures)."""

from __future__ import annotations

from pathlib import Path


# ---- goals ------------------------------------------------------------------------------------
def goals(results: dict, similarity: dict | None, load_rss: float | None = None) -> list[dict]:
    def em(name):
        return results.get(name, {}).get("exact_match")

    def get(name, key):
        return results.get(name, {}).get(key)

    out = []
    full, lora, qlora = em("full"), em("lora-all-r8"), em("qlora-all-r8")
    pct = get("lora-all-r8", "trainable_pct")
    if None not in (full, lora, pct):
        gap = round(100 * (full - lora), 6)  # 0.98 - 0.96 is not exactly 0.02
        # r=8 on every linear layer of a 135M model with hidden size 576 is 1.8% of the weights;
        # the under-1% part of the goal is shown by the LoRA rows that are under 1%.
        under = [(get(n, "trainable_pct"), n) for n in results if n.startswith("lora-") and "-n" not in n
                 and "-gc" not in n and (get(n, "trainable_pct") or 100) < 1.0 and em(n) is not None]
        best = max(under, key=lambda t: em(t[1])) if under else None
        extra = (f"; best row under 1%: {best[1]} EM {100 * em(best[1]):.1f} with {best[0]:.2f}% trainable "
                 f"(gap {100 * (full - em(best[1])):+.1f} pts)") if best else ""
        out.append({"goal": "LoRA r=8 all-linear within 1 point of full FT, <1% trainable",
                    "measured": f"EM {100 * lora:.1f} vs {100 * full:.1f} (gap {gap:+.1f} pts; one test question "
                                f"= 2 pts), {pct:.2f}% trainable{extra}",
                    "met": gap <= 1.0 and pct < 1.0})
    if None not in (lora, qlora):
        gap = round(100 * (lora - qlora), 6)
        out.append({"goal": "QLoRA within 2 points of LoRA (r=8 all-linear)",
                    "measured": f"EM {100 * qlora:.1f} vs {100 * lora:.1f} (gap {gap:+.1f} pts)", "met": gap <= 2.0})
    for suffix, how in (("", ""), ("-gc", ", both with gradient checkpointing")):
        mem_full, mem_lora = get("full" + suffix, "peak_rss_mib"), get("lora-all-r8" + suffix, "peak_rss_mib")
        if None in (mem_full, mem_lora):
            continue
        ratio = mem_full / mem_lora
        extra = ""
        if load_rss:
            extra = (f"; above the {load_rss:.0f} MiB a process needs to load the model: "
                     f"{mem_full - load_rss:.0f} vs {mem_lora - load_rss:.0f} MiB = "
                     f"{(mem_full - load_rss) / (mem_lora - load_rss):.1f}x")
        out.append({"goal": f"full FT peak training memory >= 2.5x LoRA (r=8 all-linear{how})",
                    "measured": f"peak RSS {mem_full:.0f} MiB vs {mem_lora:.0f} MiB = {ratio:.2f}x{extra}",
                    "met": ratio >= 2.5})
    if similarity:
        top = similarity["A"]["all"]
        others = "; ".join(f"of {k} = {similarity[k]['all']['sim_top']:.3f} (random "
                           f"{similarity[k]['all']['sim_top_random']:.4f})" for k in ("dW-in", "dW-out") if k in similarity)
        out.append({"goal": "r=8 vs r=64 top-direction subspace similarity > 0.5",
                    "measured": f"phi(1,1) of A = {top['sim_top']:.3f} (random {top['sim_top_random']:.4f}); {others}",
                    "met": top["sim_top"] > 0.5})
    return out


# ---- outputs ----------------------------------------------------------------------------------
def _fmt_bytes(n):
    return "-" if n is None else (f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB")


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Paper table: SmolLM2-135M-Instruct on the SQL demo ({s['steps']} steps x batch {s['batch_size']})",
             "", f"Machine: {report['machine']}. Command: `{report['command']}`", "",
             "| row | method | target | r | trainable params | % of base | file size | peak RSS | "
             "train CPU s | train wall s | test EM | norm. EM | PEFT params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        res = report["results"].get(row["name"], {})
        if "missing" in res:
            lines.append(f"| {row['name']} | {row['method']} | {row['target']} | {row['r'] or '-'} | "
                         f"missing: {res['missing']} |  |  |  |  |  |  |  |  |")
            continue

        def num(key, fmt):
            return "-" if res.get(key) is None else fmt.format(res[key])
        lines.append(" | ".join([
            f"| {row['name']}", row["method"], row["target"], str(row["r"] or "-"),
            num("trainable", "{:,}"), num("trainable_pct", "{:.3f}%"), _fmt_bytes(res.get("file_bytes")),
            num("peak_rss_mib", "{:.0f} MiB"), num("cpu_s", "{:.0f}"), num("wall_s", "{:.0f}"),
            num("exact_match_pct", "{:.1f}"), num("normalized_exact_match_pct", "{:.1f}"),
            num("peft_trainable", "{:,}")]) + " |")
    done = [r for r in report["results"].values() if "exact_match" in r]
    loads = [r[k] for r in done for k in ("load_avg_before", "load_avg_after") if k in r]
    lines += ["", f"Rows took {sum(r.get('wall_s', 0) + r['eval_s'] for r in done) / 60:.0f} min in all "
                  f"(training + evaluation). The 1-minute load average just before and after each row "
                  f"ranged {min(loads, default=0):.1f}-{max(loads, default=0):.1f} (a row's own two threads "
                  "make about 2; more means another job shared the cores and that row's wall time is "
                  "inflated); CPU seconds and peak RSS are the robust columns. With 50 test questions one "
                  "question is 2 points of exact match."]
    if report.get("peft_eval"):
        p = report["peft_eval"]
        lines += ["", f"PEFT peer: the lora-all-r8 adapter loaded with PEFT scores EM "
                      f"{100 * p['peft_exact_match']:.1f} (lorakit: {100 * p['lorakit_exact_match']:.1f}); "
                      f"generating the 50 answers took {p['peft_eval_s']:.1f} s with PEFT vs "
                      f"{p['lorakit_eval_s']:.1f} s with lorakit (best of 2 alternating rounds; "
                      f"lorakit / PEFT = {p['lorakit_eval_s'] / p['peft_eval_s']:.2f})."]
    if report.get("similarity"):
        lines += ["", "Subspace similarity, r=8 vs r=64 all-linear (mean over layers; random baseline in brackets):",
                  "", "| subject | modules | phi(1,1) | phi(1,64) | phi(8,64) |", "|---|---|---|---|---|"]
        for subject, groups in report["similarity"].items():
            for name, v in groups.items():
                lines.append(f"| {subject} | {name} | {v['sim_top']:.3f} ({v['sim_top_random']:.4f}) | "
                             f"{v['sim_top_in_other']:.3f} ({v['sim_top_in_other_random']:.3f}) | {v['sim_all']:.3f} |")
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in report["goals"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in report["rows"]:
        res = report["results"].get(row["name"], {})
        if res.get("trainable") is None or res.get("exact_match") is None:
            continue
        low = bool(row["n_train"])
        marker = "s" if row["full"] else ("^" if low else "o")
        color = "tab:red" if row["full"] else ("tab:orange" if low else "tab:blue")
        ax.scatter(res["trainable"], 100 * res["exact_match"], marker=marker, color=color)
        ax.annotate(row["name"], (res["trainable"], 100 * res["exact_match"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test exact match (%)")
    s = report["settings"]
    ax.set_title(f"SmolLM2-135M on the SQL demo, {s['steps']} steps x {s['batch_size']}: accuracy vs trainable params",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
