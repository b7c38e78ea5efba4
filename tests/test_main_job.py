"""The main job end to end on tiny fake data."""

import os
import subprocess
import sys

import pandas as pd

from tests.conftest import write_mnist_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_runs_end_to_end(tmp_path):
  write_mnist_like(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=30)
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main_job",
       f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'w'}",
       f"--results_csv={tmp_path / 'main_job.csv'}", "--nouse_shipped_cloud", "--cloud_epochs=1",
       "--cloud_num_images=60", "--num_labelled=20", "--stream_per_edge=24",
       "--burst=12", "--quiet_gap_s=1", "--retrain_threshold=12",
       "--edge_max_epochs=1", "--test_images=20", "--edges=3,5",
       "--quiet_bytes_per_s=1e12"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
  rows = pd.read_csv(tmp_path / "main_job.csv")
  assert set(rows.edge_id) == {"edge-m3", "edge-m5"}
  for _, group in rows.groupby("edge_id"):
    assert group.model_version.tolist()[0] == 1
    # v1, then a retrain whenever at least 12 new labels are in. How many
    # labels each retrain sees depends on timing: 12 and 24 when each retrain
    # starts before the next burst is labelled; 24 at once when all arrive
    # before the first retrain starts; or e.g. 14, leaving 10 (< 12) unused
    # at the end, when a loaded machine labels part of the second burst first.
    labels = group.num_cloud_labels.tolist()
    assert labels[0] == 0 and len(group) in (2, 3), labels
    assert all(b - a >= 12 for a, b in zip(labels, labels[1:])), labels
    assert 12 <= labels[-1] <= 24 and 24 - labels[-1] < 12, labels
  assert rows.edgecnn0_test_accuracy_10crop.notna().all()
  assert "model_version" in proc.stdout and "main job finished" in proc.stdout


def test_main_job_prefers_the_shipped_cloud_model(tmp_path):
  import types

  from edgecnn import cloud_model
  from edgecnn import data as data_lib
  from edgecnn import main_job

  shipped = main_job.SHIPPED_MODELS / "fashion_mnist-compact-seed0"
  assert cloud_model.is_trained(shipped), "results/models lost its CloudCNN"
  dataset = types.SimpleNamespace(info=data_lib.dataset_info("fashion_mnist"))
  said = []
  cfg = main_job.MainJobConfig(workdir=tmp_path, results_csv=tmp_path / "r.csv")
  assert main_job._ensure_cloud(cfg, dataset, said.append) == shipped
  assert "shipped" in said[-1]
  # No shipped model for this preset: it would train (and cache) one; a
  # cached one is reused without training.
  cached = tmp_path / "cloud" / "fashion_mnist-paper-seed0-e2"
  cached.mkdir(parents=True)
  for name in ("build.json", "cloud.weights.h5", "dataset.json",
               "train_result.json"):
    (cached / name).write_text("{}")
  cfg = main_job.MainJobConfig(workdir=tmp_path, results_csv=tmp_path / "r.csv",
                               preset="paper")
  assert cloud_model.is_trained(cached)
  assert main_job._ensure_cloud(cfg, dataset, said.append) == cached
  assert "reusing cached" in said[-1]
