"""The load generator's quick setting: levels, hot swaps, memory rows."""

import os
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_test_quick(tiny_cloud):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  csv = tiny_cloud / "load.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.load_test",
       f"--cloud_dir={tiny_cloud / 'cloud'}",
       f"--data_dir={tiny_cloud / 'data'}", f"--workdir={tiny_cloud / 'w'}",
       f"--results_csv={csv}", "--concurrency=1,8", "--seconds=2", "--num_labelled=40",
       "--hot_swaps=1"],
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = pd.read_csv(csv, keep_default_na=False)
  rate = rows[(rows.metric == "images_per_s")]
  assert len(rate) == 3 and (rate.value > 0).all()  # model + 2 levels
  swaps = rows[rows.condition.str.contains("hot_swaps")]
  assert swaps[swaps.metric == "retrains_deployed"].value.iloc[0] == 1
  assert swaps[swaps.metric == "failed_requests"].value.iloc[0] == 0
  assert (rows[rows.metric == "failed_requests"].value == 0).all()
  assert "edge_rss_max" in set(rows.metric)
  per_swap = swaps[swaps.metric.str.startswith("edge_rss_after_swap_")]
  # One swap here (each costs a retrain, ~20 s); test_faults.py swaps five
  # times in a row.
  assert sorted(per_swap.metric) == ["edge_rss_after_swap_1"]
  assert (per_swap.value > 0).all()
  assert rows.condition.str.contains("client=raw;body=json").any()
