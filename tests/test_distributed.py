"""train_cloud under MultiWorkerMirroredStrategy: two workers on loopback."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd

from edgecnn import cloud_model
from tests.conftest import write_mnist_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_worker_training_gives_same_structure_and_finite_loss(tmp_path):
  write_mnist_like(tmp_path / "data" / "mnist", n_train=80, n_test=10)
  cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
  procs = []
  for i in range(2):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "",
           "TF_CONFIG": json.dumps({"cluster": cluster,
                                    "task": {"type": "worker", "index": i}})}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.train_cloud", "--dataset=mnist",
         f"--data_dir={tmp_path / 'data'}", "--use_tfds=false",
         f"--workdir={tmp_path / 'work'}", "--train_config=quick",
         "--num_images=40", "--shared=3", "--strategy=multi_worker",
         f"--results_csv={tmp_path / 'r.csv'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  chief = tmp_path / "work" / "cloud" / "mnist-compact-seed0"
  result = json.loads((chief / "train_result.json").read_text())
  assert all(h["loss"] == h["loss"] and abs(h["loss"]) < 1e6
             for h in result["history"])
  model = cloud_model.load_cloud(chief)
  other = cloud_model.load_cloud(chief.with_name(chief.name + "-worker1"))
  assert [l.name for l in model.layers] == [l.name for l in other.layers]
  assert model.count_params() == other.count_params() == 1_143_802
  # Synchronous data parallelism: both workers end with the same weights.
  for a, b in zip(model.get_weights(), other.get_weights()):
    assert abs(a - b).max() < 1e-4
  rows = pd.read_csv(tmp_path / "r.csv")
  assert len(rows[rows.metric == "epochs"]) == 1  # only the chief writes rows
