"""The diffusion demo program end to end at toy sizes (the real run: bench/diffusion_demo.py,
a few minutes): it writes its JSON and grids, merged == run-time samples, unmerge restores, and
the kohya file it writes reloads to the same outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="pip install 'lorakit[diffusion]' (diffusers)")
pytest.importorskip("sklearn", reason="pip install 'lorakit[diffusion]' (scikit-learn)")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.heavy
def test_demo_runs_and_reports(tmp_path):
    out = tmp_path / "demo.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}  # own cache
    subprocess.run([sys.executable, str(ROOT / "bench/diffusion_demo.py"), "--pretrain-steps", "30",
                    "--lora-steps", "5", "--samples-per-digit", "8", "--out", str(out),
                    "--img-dir", str(tmp_path / "img")], check=True, env=env, timeout=900)
    r = json.loads(out.read_text())
    assert r["merge"]["max_abs_sample_diff_merged_vs_runtime"] < 1e-4
    assert r["merge"]["max_abs_weight_diff_after_unmerge"] < 1e-5
    for name in ("thick", "flip"):
        assert r["files"][name]["kohya_reloaded_max_abs_diff"] < 1e-5
    assert r["classifiers"]["style_accuracy"] > 0.9
    assert len(list((tmp_path / "img").glob("diffusion_*.png"))) == len(r["settings"])
