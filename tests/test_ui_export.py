"""`lorakit ui`'s export actions (lorakit/ui/export_actions.py) on real runs of a tiny Llama: the
buttons' API runs the same `lorakit export` a user types, the files it writes are read back by
their consumers (the gguf reader, transformers), the report is the one beside the output, and
bad requests are 4xx with a reason and leave nothing on disk."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorakit.export.run import report_path  # noqa: E402
from lorakit.ui.app import create_app  # noqa: E402
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer  # noqa: E402,F401
from tests.ui_support import make_runs  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui-export") / "runs"
    make_runs(root, tiny_model_dir)
    app = create_app(root, cwd=root.parent)
    with TestClient(app) as client:
        yield {"client": client, "root": root, "exports": app.state.exports, "model": tiny_model_dir}


def _export(env, run, **body) -> dict:
    r = env["client"].post(f"/api/runs/{run}/export", json=body)
    assert r.status_code == 200, r.json()
    job = env["exports"].wait(r.json()["id"], timeout=600)
    assert env["client"].get(f"/api/exports/{job['id']}").json() == job
    return job


def test_gguf_lora_button_runs_lorakit_export_and_returns_its_report(env):
    from gguf import GGUFReader

    job = _export(env, "a", to="gguf-lora", outtype="f16", check_prompts=0)
    out = env["root"] / "a" / "exports" / "gguf-lora-f16.gguf"
    assert job["state"] == "done", job
    assert job["command"][:4] == ["lorakit", "export", str(env["root"] / "a" / "adapter"), "--to"]
    assert job["report"] == json.loads(report_path("gguf-lora", out).read_text())
    reader = GGUFReader(str(out))   # the file the button wrote, read back
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    names = [t.name for t in reader.tensors]
    assert len(names) == 2 * job["report"]["pairs"] and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    assert job["report"]["tensor_types"] == {"F16": len(names)}
    listing = env["client"].get("/api/runs/a/exports").json()
    assert listing["exportable"] and [e["name"] for e in listing["exports"]] == ["gguf-lora-f16.gguf"]
    assert listing["exports"][0]["report"] == job["report"]


def test_hf_button_writes_a_merged_model_transformers_loads(env, tiny_model_dir):
    import lorakit
    from lorakit.models import load_model
    from transformers import AutoModelForCausalLM

    job = _export(env, "b", to="hf", check_prompts=1)
    assert job["state"] == "done", job
    out = env["root"] / "b" / "exports" / "hf-default"
    agreement = job["report"]["agreement"]
    assert agreement["consumer"].startswith("transformers") and agreement["max_abs_logit_diff_vs_fp32_merge"] < 1e-4
    ref = load_model(str(tiny_model_dir), dtype=torch.float32)
    lorakit.load_adapter(ref, env["root"] / "b" / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260]])
    with torch.no_grad():
        diff = (ref(ids).logits - merged(ids).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_a_failing_export_reports_its_error_and_leaves_nothing(env):
    # the tiny base has no GGUF file: the Ollama export is refused by `lorakit export` itself
    job = _export(env, "a", to="ollama", outtype="q8_0", check_prompts=0)
    assert job["state"] == "failed" and "--base-gguf" in job["error"], job
    exports = env["root"] / "a" / "exports"
    assert not any(p.name.startswith(("ollama", ".ollama")) for p in exports.iterdir())


@pytest.mark.parametrize("body, status, reason", [
    ({"to": "onnx"}, 422, "unknown export 'onnx'"),
    ({"to": "gguf-lora", "outtype": "q4_k_m"}, 422, "outtype 'q4_k_m'"),
    ({"to": "hf", "outtype": "int8"}, 422, "outtype 'int8'"),
    ({"to": "gguf-lora", "check_prompts": "all"}, 422, "check_prompts"),
    ({"to": "gguf-lora", "out": "/tmp/x"}, 422, "unknown field(s) ['out']"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_export_requests_are_4xx_with_the_reason(env, body, status, reason):
    before = sorted(p.name for p in (env["root"] / "a").rglob("*"))
    r = env["client"].post("/api/runs/a/export", json=body)
    assert r.status_code == status and reason in r.json()["error"], r.json()
    assert sorted(p.name for p in (env["root"] / "a").rglob("*")) == before


def test_unfinished_unknown_and_existing_are_refused(env):
    c = env["client"]
    r = c.post("/api/runs/c/export", json={"to": "gguf-lora"})   # stopped: no final adapter
    assert r.status_code == 409 and "only a finished run" in r.json()["error"]
    assert c.get("/api/runs/c/exports").json()["exportable"] is False
    assert c.post("/api/runs/nope/export", json={"to": "gguf-lora"}).status_code == 404
    assert c.post("/api/runs/..%2Fx/export", json={"to": "gguf-lora"}).status_code in (400, 404)
    assert c.get("/api/exports/export-0").status_code == 404
    assert c.post("/api/runs/a/export", content=b"{not json").status_code == 400
    out = env["root"] / "a" / "exports" / "gguf-lora-q8_0.gguf"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"user's file")
    r = c.post("/api/runs/a/export", json={"to": "gguf-lora", "outtype": "q8_0"})
    assert r.status_code == 409 and "overwrite" in r.json()["error"]
    assert out.read_bytes() == b"user's file"
    cmd, where = env["exports"].command("a", "gguf-lora", "q8_0", True, 0)   # what overwrite: true runs
    assert where == out and cmd[-1] == "--overwrite"

def test_the_run_page_loads_the_export_script(env):
    c = env["client"]
    assert '<script src="/static/export.js"></script>' in c.get("/").text
    js = c.get("/static/export.js")
    assert js.status_code == 200 and "/api/runs/${enc}/export" in js.text
