"""The measuring scripts under scripts/ still run against today's API (a tiny config, a step or
two): they are not part of the package, so nothing else would notice when a signature changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_runs_the_real_training_step():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "-c",
         str(ROOT / "configs" / "tiny.yaml"), "--device", "cpu", "--steps", "2", "--warmup", "1",
         "--no-compile", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert rows and all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in rows)


def test_gpu_check_script_parses():
    """scripts/gpu_check.sh is the one prepared run for a lent GPU machine: a syntax error there
    would cost the whole lease, so bash checks it here (bash -n: parse only, nothing runs)."""
    import shutil

    import pytest

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
