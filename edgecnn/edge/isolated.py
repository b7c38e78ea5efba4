"""Edge training in a child process, so a long-lived edge keeps its memory.

TensorFlow with Keras 3 keeps memory for every model trained with ``fit`` in a
process, and neither ``gc.collect()`` nor ``keras.backend.clear_session()``
returns it (measured here, TF 2.21 / Keras 3.15 on CPU: ten trainings of
EdgeCNN1-3 took a process from 916 MB to 1,290 MB, about 40 MB each; plain
``model.fit`` on numpy arrays leaks the same; reported upstream as
keras-team/keras#20552 and tensorflow/tensorflow#61791). An edge that retrains
every M labels for months would grow without bound, so ``IsolatedTrainer``
runs each training in a fresh Python process and hands back only the weights.

It has the signature of ``train.train_and_evaluate`` (the model is trained "in
place": its final weights are loaded into it), so ``EdgeRuntime`` uses it as
its trainer. The cost is a process start and a TensorFlow import per
(re)training, a few seconds, next to a retrain of tens of seconds.

Usage of the child (internal): ``python -m edgecnn.edge.isolated <job dir>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

from edgecnn import data as data_lib
from edgecnn import train as train_lib

JOB = "job.json"
DATA = "data.npz"
INIT = "init.weights.h5"
TRAINED = "trained.weights.h5"
RESULT = "result.json"
LOG = "child.log"


class IsolatedTrainer:
  """Trains EdgeCNN models in child processes.

  Args:
    payload_path: the shared-layers payload the models are built from.
    workdir: where jobs are written (one sub-directory per training, removed
      after success, kept after a failure for inspection).
    build_args: keyword arguments of ``models.build_edge_cnn_from_payload``
      besides the payload (num_classes, pretrained, seed).
  """

  def __init__(self, payload_path: str | os.PathLike,
               workdir: str | os.PathLike, build_args: dict):
    self.payload_path = pathlib.Path(payload_path)
    self.workdir = pathlib.Path(workdir)
    self.build_args = dict(build_args)

  def __call__(self, model, dataset: data_lib.Dataset, split: data_lib.Split,
               config: train_lib.TrainConfig, *, seed: int,
               evaluate_test: bool = True, label: str | None = None,
               **unused) -> train_lib.TrainResult:
    job = self.workdir / f"job-{time.time_ns()}"
    job.mkdir(parents=True)
    model.save_weights(job / INIT)
    np.savez(job / DATA, x_train=dataset.x_train, y_train=dataset.y_train,
             x_test=dataset.x_test, y_test=dataset.y_test,
             train=split.train, val=split.val)
    (job / JOB).write_text(json.dumps({
        "payload": str(self.payload_path.resolve()), "build": self.build_args,
        "info": dataclasses.asdict(dataset.info), "source": dataset.source,
        "config": dataclasses.asdict(config), "seed": seed,
        "evaluate_test": evaluate_test, "label": label}))
    with open(job / LOG, "wb") as log:
      proc = subprocess.run([sys.executable, "-m", "edgecnn.edge.isolated",
                             str(job)], stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not (job / RESULT).is_file():
      tail = (job / LOG).read_text(errors="replace").strip().splitlines()[-3:]
      raise RuntimeError(f"training process exited with {proc.returncode} "
                         f"(log {job / LOG}): {' | '.join(tail)}")
    model.load_weights(job / TRAINED)
    result = train_lib.TrainResult(**json.loads((job / RESULT).read_text()))
    shutil.rmtree(job, ignore_errors=True)
    return result


def _child(job: pathlib.Path) -> None:
  from edgecnn import models
  spec = json.loads((job / JOB).read_text())
  info = data_lib.DatasetInfo(**{
      k: tuple(v) if isinstance(v, list) else v
      for k, v in spec["info"].items()})
  arrays = np.load(job / DATA)
  dataset = data_lib.Dataset(info, arrays["x_train"], arrays["y_train"],
                             arrays["x_test"], arrays["y_test"], spec["source"])
  split = data_lib.Split(train=arrays["train"], val=arrays["val"])
  config = train_lib.TrainConfig(**spec["config"])
  model = models.build_edge_cnn_from_payload(
      pathlib.Path(spec["payload"]).read_bytes(), **spec["build"])
  model.load_weights(job / INIT)
  result = train_lib.train_and_evaluate(
      model, dataset, split, config, seed=spec["seed"],
      evaluate_test=spec["evaluate_test"], label=spec["label"])
  model.save_weights(job / TRAINED)
  tmp = job / (RESULT + ".tmp")
  tmp.write_text(json.dumps(dataclasses.asdict(result)))
  tmp.replace(job / RESULT)


if __name__ == "__main__":
  import logging
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  _child(pathlib.Path(sys.argv[1]))
