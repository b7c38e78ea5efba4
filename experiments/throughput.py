r"""Training and prediction throughput of CloudCNN (both presets) and
EdgeCNN1-3/5/10, with their trainable and frozen parameter counts.

Each model trains on random images of the dataset's crop size for --steps
mini-batches of 32 after a warm-up, --repeats times; the median images/s
and the half-range go to results/throughput.csv. Models are measured one
after the other in one process, so ratios between them are side by side.

  python -m experiments.throughput --dataset=fashion_mnist --repeats=3
"""

from __future__ import annotations

import logging

from absl import app
from absl import flags
import numpy as np

from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
eval_lib = cli.lazy_import("edgecnn.evaluate")
models = cli.lazy_import("edgecnn.models")
train_lib = cli.lazy_import("edgecnn.train")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("dataset", "training", "results")

STEPS = flags.DEFINE_integer("steps", 20, "Mini-batches per timed repeat.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per model.")
PRESETS = flags.DEFINE_list("presets", ["compact", "paper"], "Presets to time.")
SHARED = flags.DEFINE_list("shared", ["3", "5", "10"], "Values of m.")
PRECISIONS = flags.DEFINE_list(
    "precisions", ["float32"], "Keras dtype policies to time, each model in "
    "each in turn (float32, mixed_bfloat16); rows of a policy other than "
    "float32 carry condition precision=<policy>.")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  for precision in PRECISIONS.value:
    if precision not in common.PRECISION_POLICIES:
      raise app.UsageError(f"--precisions: unknown policy {precision!r}; "
                           f"use any of {', '.join(common.PRECISION_POLICIES)}.")
  from edgecnn import data as data_lib
  info = data_lib.dataset_info(common.DATASET.value)
  config = common.train_config()
  crop = config.crop_size or info.default_crop
  shape = (crop, crop, info.image_shape[2])
  batch = config.batch_size
  rng = np.random.default_rng(0)
  x = rng.random((batch * STEPS.value, *shape), dtype=np.float32)
  y = rng.integers(0, info.num_classes, len(x))
  log = common.result_log("throughput")
  common.save_flags(log, info.name)
  import keras
  for preset in PRESETS.value:
    for precision in PRECISIONS.value:
      keras.mixed_precision.set_global_policy(precision)
      _measure(preset, precision, shape, info, config, x, y, log)
  keras.mixed_precision.set_global_policy("float32")


def _measure(preset, precision, shape, info, config, x, y, log):
  """Times CloudCNN and EdgeCNN1-m of one preset under the current policy."""
  import keras
  batch = config.batch_size
  cloud = models.build_cloud_cnn(shape, info.num_classes, preset=preset,
                                 seed=0)
  named = [("CloudCNN", cloud, 15, "")] + [
      (f"EdgeCNN1-{m}", models.build_edge_cnn(cloud, int(m), seed=0), int(m),
       True) for m in SHARED.value]
  for name, model, m, pretrained in named:
    train_lib._compile(model, config)
    fit = eval_lib.time_call(
        lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                          shuffle=False), repeats=REPEATS.value, warmup=1)
    pred = eval_lib.time_call(
        lambda: model.predict(x, batch_size=256, verbose=0),
        repeats=REPEATS.value, warmup=1)
    trainable, frozen = models.count_params(model)
    key = {"dataset": info.name, "preset": preset, "model": name,
           "num_shared": m, "pretrained": pretrained, "labels": "",
           "num_images": len(x), "seed": 0}
    if precision != "float32":
      key["condition"] = f"precision={precision}"
    log.append(key, [
        ("train_images_per_s", len(x) / fit.median, "images/s"),
        ("train_images_per_s_spread",
         len(x) / min(fit.samples) - len(x) / max(fit.samples), "images/s"),
        ("predict_images_per_s", len(x) / pred.median, "images/s"),
        ("trainable_params", trainable, "params"),
        ("frozen_params", frozen, "params"),
        ("repeats", REPEATS.value, "count")])
    logging.info("%s %s %s: train %.0f images/s, predict %.0f images/s, "
                 "params %d trainable / %d frozen", preset, precision, name,
                 len(x) / fit.median, len(x) / pred.median, trainable, frozen)
    keras.backend.clear_session()


if __name__ == "__main__":
  cli.run(main)
