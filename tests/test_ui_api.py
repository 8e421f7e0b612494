"""`lorakit ui`'s HTTP API on real runs of a tiny model: every endpoint, its answers checked
against the files and functions the CLI uses, and bad input (unknown runs, malformed forms,
path traversal in run names) answered with 4xx and a reason, nothing changed on disk."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorakit.train.config import TrainConfig  # noqa: E402
from lorakit.train.config_io import load_yaml, to_dict  # noqa: E402
from lorakit.train.tracking import read_metrics  # noqa: E402
from lorakit.ui.app import create_app  # noqa: E402
from lorakit.ui.forms import FIXED  # noqa: E402
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer  # noqa: E402,F401
from tests.ui_support import answers, make_runs, run_values, sse_events, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui") / "runs"
    files = make_runs(root, tiny_model_dir)
    app = create_app(root, cwd=root.parent)
    with TestClient(app) as client:
        yield {"client": client, "root": root, "model": tiny_model_dir, **files}


def test_health_and_schema_follow_train_config(env):
    c = env["client"]
    assert c.get("/api/health").json()["status"] == "ok"
    fields = {f["name"]: f for f in c.get("/api/schema").json()["fields"]}
    defaults = to_dict(TrainConfig())
    top = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in FIXED | {"lora"}]
    assert [n for n in fields if fields[n]["section"] is None] == top
    assert [n for n in fields if fields[n]["section"] == "lora"] == list(defaults["lora"])
    assert fields["lr"] == {"section": None, "name": "lr", "kind": "float", "choices": None,
                            "default": 2e-4, "help": "peak learning rate"}
    assert fields["precision"]["choices"] == ["fp32", "bf16-mixed", "bf16-true"]
    assert fields["target_modules"]["kind"] == "yaml" and fields["target_modules"]["default"] == "all-linear"
    assert fields["progress"]["default"] is False  # the dashboard's one changed default


def test_runs_list_and_detail_read_the_run_files(env):
    c, root = env["client"], env["root"]
    runs = {r["name"]: r for r in c.get("/api/runs").json()["runs"]}
    assert {n: r["status"] for n, r in runs.items()} == {"a": "done", "b": "done", "c": "stopped"}
    last = [r for r in read_metrics(root / "a" / "metrics.jsonl") if "loss" in r][-1]
    a = runs["a"]
    assert (a["step"], a["total_steps"], a["loss"], a["lr"], a["grad_norm"]) == \
        (8, 8, last["loss"], last["lr"], last["grad_norm"])
    assert a["has_adapter"] and runs["c"]["has_adapter"]  # c: its checkpoint's adapter
    d = c.get("/api/runs/a").json()
    assert d["config"] == yaml.safe_load((root / "a" / "config.yaml").read_text())
    assert d["card"] == (root / "a" / "adapter" / "README.md").read_text()
    assert c.get("/api/runs/c").json()["checkpoints"] == ["step-00000002"]
    assert runs["c"]["step"] == 2 and runs["c"]["total_steps"] == 4
    all_records = c.get("/api/runs/a/metrics").json()["records"]
    assert all_records == read_metrics(root / "a" / "metrics.jsonl")
    assert [r["step"] for r in c.get("/api/runs/a/metrics?since=6").json()["records"]] == [7, 8]


@pytest.mark.parametrize("name", ["nope", "..", ".hidden", "a b", "x" * 65, "%2e%2e"])
def test_bad_or_unknown_run_names_are_4xx(env, name):
    c = env["client"]
    for path in (f"/api/runs/{name}", f"/api/runs/{name}/metrics", f"/api/runs/{name}/inspect"):
        r = c.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
        assert "error" in r.json()
    assert c.post(f"/api/runs/{name}/stop").status_code in (400, 404)


@pytest.mark.parametrize("name", ["../evil", "x/y", "/tmp/evil", "..", ""])
def test_new_run_name_cannot_leave_the_runs_dir(env, name):
    c, root = env["client"], env["root"]
    values = run_values(env["model"], env["data"])
    r = c.post("/api/runs", json={"name": name, "values": values})
    assert r.status_code == 400 and "run name" in r.json()["error"]
    assert not (root.parent / "evil").exists() and sorted(p.name for p in root.iterdir()) == ["a", "b", "c"]


@pytest.mark.parametrize("values, needle", [
    ({"lr": "abc"}, "lr must be float"),
    ({"lr": -1}, "lr must be > 0"),
    ({"precision": "fp8"}, "precision must be"),
    ({"warp": 1}, "unknown setting 'warp'"),
    ({"target_modules": "[q_proj"}, "target_modules: not valid YAML"),
    ({"output_dir": "/tmp/elsewhere"}, "unknown setting 'output_dir'"),
    ({"data": ""}, "data: a training data file is required"),
    ({"eval_data": "nope.jsonl"}, "eval_data not found: nope.jsonl"),
])
def test_malformed_form_is_422_naming_the_field(env, values, needle):
    c, root = env["client"], env["root"]
    form = {**run_values(env["model"], env["data"]), **values}
    r = c.post("/api/runs", json={"name": "bad", "values": form})
    assert r.status_code == 422 and needle in r.json()["error"], r.json()
    assert not (root / "bad").exists()


def test_malformed_bodies_are_4xx(env):
    c = env["client"]
    assert c.post("/api/runs", content=b"{not json").status_code == 400
    assert c.post("/api/runs", json=[1, 2]).status_code == 400
    assert c.post("/api/runs", json={"name": "a", "values": run_values(env["model"], env["data"])}).status_code == 409
    assert c.get("/api/runs/a/metrics?since=abc").status_code == 422
    assert c.post("/api/runs/a/stop").status_code == 409      # done, not running
    assert c.post("/api/runs/a/resume").status_code == 409    # done, nothing to resume
    assert c.get("/api/nothing").status_code == 404


def test_preview_shows_the_data_as_trained(env):
    c = env["client"]
    r = c.post("/api/preview", json={"values": run_values(env["model"], env["data"]), "n": 2})
    assert r.status_code == 200, r.text
    p = r.json()
    assert len(p["examples"]) == 2 and p["stats"]["kept"] == 48
    first = p["examples"][0]
    assert [s["text"] for s in first["segments"] if s["trained"]][0].startswith("yes")
    assert "Is 0 a number?" in "".join(s["text"] for s in first["segments"] if not s["trained"])
    bad = c.post("/api/preview", json={"values": {"data": "missing.jsonl"}})
    assert bad.status_code == 422 and "missing.jsonl" in bad.json()["error"]


@pytest.mark.heavy  # three trainer processes; the same path runs non-heavy in test_ui_browser
def test_new_run_trains_stops_and_resumes_through_the_api(env):
    c, root = env["client"], env["root"]
    values = run_values(env["model"], env["data"], max_steps=400, lr=1e-3)
    r = c.post("/api/runs", json={"name": "live", "values": values})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["command"] == ["lorakit", "train", str(root / "live" / "train.yaml")]
    # the YAML it runs is the resolved config: `lorakit train RUNS/live/train.yaml` reproduces it
    assert load_yaml(root / "live" / "train.yaml") == yaml.safe_load(body["yaml"])
    wait_for(lambda: c.get("/api/runs/live").json()["step"] >= 2, 60, "two steps")
    live = c.get("/api/runs/live").json()
    assert live["status"] == "running" and live["total_steps"] == 400 and live["eta_s"] > 0
    assert c.post("/api/runs/live/resume").status_code == 409  # running
    assert c.post("/api/runs/live/stop").json()["status"] == "stopping"
    wait_for(lambda: c.get("/api/runs/live").json()["status"] == "stopped", 60, "the stop")
    stopped = c.get("/api/runs/live").json()
    assert stopped["checkpoints"] == [f"step-{stopped['step']:08d}"]
    assert load_yaml(root / "live" / "config.yaml") == load_yaml(root / "live" / "train.yaml")
    r = c.post("/api/runs/live/resume")
    assert r.json()["command"] == ["lorakit", "train", "--resume", str(root / "live")]
    wait_for(lambda: c.get("/api/runs/live").json()["step"] > stopped["step"], 60, "a step after resume")
    c.post("/api/runs/live/stop")
    wait_for(lambda: c.get("/api/runs/live").json()["status"] == "stopped", 60, "the second stop")
    assert "resumed from" in c.get("/api/runs/live").json()["log"]
    assert json.loads((root / "live" / "job.json").read_text())["returncode"] == 0


def test_inspect_matches_lorakit_inspect(env):
    from lorakit.analysis.factors import read_adapter
    from lorakit.analysis.report import inspect_layers

    c, root = env["client"], env["root"]
    r = c.get("/api/runs/a/inspect?vs=b").json()
    rows, _ = inspect_layers(read_adapter(root / "a" / "adapter")[1], read_adapter(root / "b" / "adapter")[1])
    assert [x["delta_norm"] for x in r["layers"]] == pytest.approx([x["delta_norm"] for x in rows])
    assert [x["sim_all"] for x in r["layers"]] == pytest.approx([x["sim_all"] for x in rows])
    for layer in r["layers"]:
        s = layer["singular_values"]
        assert len(s) == 8 and s == sorted(s, reverse=True)
        assert sum(v * v for v in s) ** 0.5 == pytest.approx(layer["delta_norm"])
    assert len(r["mean_grids"]["all"]) == 8 and len(r["mean_grids"]["all"][0]) == 4  # r=8 vs r=4
    assert c.get("/api/runs/a/inspect?vs=nope").status_code == 404


def test_eval_job_and_compare(env):
    c, root = env["client"], env["root"]
    held = str(env["held"])
    # b's report was made by `lorakit eval` itself (ui_support); a's is made by the dashboard's job
    shutil.rmtree(root / "a" / "evals")
    job = c.post("/api/evals", json={"runs": ["a"], "data": held, "max_new_tokens": 4}).json()
    job = wait_for(lambda: (j := c.get(f"/api/evals/{job['id']}").json())["state"] != "running" and j,
                   90, "the eval job")
    assert job["state"] == "done", job["log"]
    groups = c.get("/api/compare").json()["groups"]
    assert len(groups) == 1 and groups[0]["data"] == held
    columns = {col["label"]: col for col in groups[0]["columns"]}
    assert list(columns)[0] == "base" and set(columns) == {"base", "a", "b"}
    report = json.loads((root / "a" / "evals" / "held.json").read_text())
    assert columns["a"]["metrics"] == report["results"]["adapter"]
    assert columns["base"]["metrics"] == report["results"]["base"]
    assert [e["reference"] for e in columns["b"]["examples"]] == ["yes"] * 6
    assert columns["a"]["metrics"]["exact_match"] > columns["base"]["metrics"]["exact_match"]


@pytest.mark.parametrize("body, status", [
    ({"runs": "a", "data": "x"}, 422),
    ({"runs": ["a"], "data": "missing.jsonl"}, 400),
    ({"runs": ["zzz"], "data": "x"}, 404),
    ({"runs": [], "data": "x"}, 400),
])
def test_bad_eval_requests(env, body, status):
    assert env["client"].post("/api/evals", json=body).status_code == status
    assert env["client"].get("/api/evals/eval-0").status_code == 404


def test_chat_answers_side_by_side_like_greedy_generate(env):
    import torch

    import lorakit
    from lorakit.eval.generate import greedy_generate
    from lorakit.models import load_model, load_tokenizer
    from lorakit.ui.chat import prompt_ids

    c, root = env["client"], env["root"]
    r = c.post("/api/chat", json={"runs": ["a", "b"], "base": True, "prompt": "Is 7 a number?",
                                  "template": "alpaca", "max_tokens": 6})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0] == {"columns": ["base", "a", "b"]} and events[-1] == "[DONE]"
    done = [e for e in events if isinstance(e, dict) and e.get("done")]
    assert sorted(e["column"] for e in done) == [0, 1, 2]
    got = answers(events)
    # the same prompt through plain greedy generation of the base + run a's adapter
    tok = load_tokenizer(str(env["model"]))
    model = load_model(str(env["model"]), dtype=torch.float32)
    ids = prompt_ids(tok, "Is 7 a number?", "alpaca")
    base = greedy_generate(model, tok, [ids], 6, 1)[0]
    lorakit.load_adapter(model, root / "a" / "adapter")
    adapted = greedy_generate(model, tok, [ids], 6, 1)[0]
    assert got["base"].strip() == base.strip() and got["a"].strip() == adapted.strip()
    assert got["a"].strip().startswith("yes") and got["base"] != got["a"]


@pytest.mark.parametrize("body, needle", [
    ({"runs": ["a"], "prompt": ""}, "prompt"),
    ({"runs": ["a", "b", "c", "a"], "prompt": "hi"}, "distinct"),
    ({"runs": ["a", "b", "c", "a", "b"], "prompt": "hi"}, "choose 1-4"),
    ({"runs": [], "base": True, "prompt": "hi"}, "base model"),
    ({"runs": ["a"], "base": False, "prompt": "hi", "template": "x"}, "template"),
    ({"runs": ["a"], "prompt": "hi", "temperature": 5}, "temperature"),
    ({"runs": ["zzz"], "prompt": "hi"}, "no run 'zzz'"),
])
def test_bad_chat_requests(env, body, needle):
    r = env["client"].post("/api/chat", json=body)
    assert 400 <= r.status_code < 500 and needle in r.json()["error"], r.json()


def test_token_guards_the_api(env):
    with TestClient(create_app(env["root"], token="s3cret")) as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/runs").status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/").status_code == 200  # the page itself; it sends the token on each call


def test_eta_follows_the_pace_since_the_last_resume():
    from lorakit.ui.runs import eta_seconds

    first = [{"step": s, "loss": 1.0, "elapsed_s": 2.0 * s} for s in range(1, 6)]  # 2 s/step
    assert eta_seconds(first, 10) == pytest.approx(10.0)
    # resumed at step 5: elapsed_s restarts, the new process does 0.5 s/step
    resumed = first + [{"step": 5 + s, "loss": 1.0, "elapsed_s": 1.0 + 0.5 * s} for s in range(1, 4)]
    assert eta_seconds(resumed + [{"step": 8, "eval_loss": 1.0}], 10) == pytest.approx(1.0)
    assert eta_seconds(first, 5) == 0.0 and eta_seconds([], 10) is None and eta_seconds(first, None) is None


def test_a_run_started_elsewhere_shows_as_running_while_its_metrics_move(tmp_path):
    import os
    import time

    from lorakit.ui.runs import LIVE_SECONDS, Runs

    run = tmp_path / "cli-run"
    run.mkdir()
    (run / "config.yaml").write_text("model: m\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0}) + "\n" for s in (1, 2)))
    runs = Runs(tmp_path)
    assert runs.status("cli-run") == "running"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)  # what a stop on request leaves
    assert runs.status("cli-run") == "stopped"
    (run / "checkpoints" / "step-00000002").rename(run / "checkpoints" / "step-00000001")
    assert runs.status("cli-run") == "running"
    old = time.time() - LIVE_SECONDS - 1
    os.utime(run / "metrics.jsonl", (old, old))  # quiet for a minute: it ended (crashed)
    assert runs.status("cli-run") == "stopped"


def test_lorakit_ui_command_serves_the_page_behind_its_token(tmp_path):
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "ui", "--runs", str(tmp_path / "runs"),
                             "--port", str(port), "--token", "t0k"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == \
            f"lorakit ui: runs in {tmp_path / 'runs'}; open http://127.0.0.1:{port}/?token=t0k"
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return urllib.request.urlopen(url + "/api/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(up, 30, "lorakit ui to listen")
        page = urllib.request.urlopen(url + "/").read().decode()
        assert "<title>lorakit</title>" in page and "/static/app.js" in page
        assert "lineChart" in urllib.request.urlopen(url + "/static/chart.js").read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/api/runs")
        assert err.value.code == 401
        request = urllib.request.Request(url + "/api/runs", headers={"Authorization": "Bearer t0k"})
        assert json.loads(urllib.request.urlopen(request).read())["runs"] == []
    finally:
        proc.terminate()
        proc.wait(10)
