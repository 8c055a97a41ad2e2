"""The examples run: stream_model.py against a daemon it starts, watch_live.py
against a daemon this test starts (plotting to a file when matplotlib is
installed, text otherwise)."""

import os
import subprocess
import sys
import threading

import numpy as np

import xcoder
from conftest import B, D

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")


def test_stream_model_example():
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "stream_model.py"), "--spawn",
                        "--batches", "6"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "every one acked" in r.stdout and "checkpoint" in r.stdout


def test_watch_live_example(start_daemon, tmp_path):
    dm = start_daemon(mix_tokens=B, stats_interval=0.2)
    out = tmp_path / "latents.png"

    def produce():
        with xcoder.Producer(dm.run_dir) as p:
            for i in range(40):
                p.send(np.random.default_rng(i).standard_normal((B, 2, D)).astype(np.float32))

    t = threading.Thread(target=produce)
    t.start()
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "watch_live.py"), "--run-dir",
                        dm.run_dir, "--seconds", "1.5", "--every", "0.5", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    t.join()
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("step ") >= 3, r.stdout
    try:
        import matplotlib  # noqa: F401
        assert out.exists() and out.stat().st_size > 1000
    except ImportError:
        assert "Δ histogram" in r.stdout
