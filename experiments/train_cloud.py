r"""Trains CloudCNN on the 9:1 split of a full training set (Sec. 4.3.1).

Saves the weights, the shared-layers payloads for m in --shared and a
SavedModel under --workdir/cloud/<dataset>-<preset>-seed<seed>/, and appends
10-crop and centre-crop test accuracy to results/train_cloud.csv.

  python -m experiments.train_cloud --dataset=fashion_mnist --preset=compact \
      --max_epochs=15
"""

from __future__ import annotations

import json
import logging
import os

from absl import app
from absl import flags

from edgecnn import config as config_lib
from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
sweeps = cli.lazy_import("edgecnn.sweeps")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "preset", "workdir", "training", "results",
                         "kernel_initializer", "tensorboard_dir")

SEED = flags.DEFINE_integer("seed", 0, "Seed of split, initialisation, shuffle.")
NUM_IMAGES = flags.DEFINE_integer(
    "num_images", None, "Train on a seeded subset of this many images (quick "
    "runs); default: the whole training set.")
SHARED = flags.DEFINE_list("shared", ["3", "5", "10"],
                           "m values whose shared-layers payloads are saved.")
STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker"],
    "tf.distribute strategy: default (one device), mirrored (all local "
    "devices) or multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG).")
TEST_EVAL = flags.DEFINE_bool(
    "test_eval", True, "Evaluate on the test set (10-crop and centre); off "
    "for models made only for timing.")
PRECISION = flags.DEFINE_enum(
    "precision", "float32", list(common.PRECISION_POLICIES),
    "Keras dtype policy for training. float32 (default; the paper does not "
    "say, and float32 is what its GPUs of the time ran). mixed_bfloat16 "
    "computes in bfloat16 with float32 weights (the softmax stays float32): "
    "on CPUs with AMX (oneDNN picks it by itself) training runs faster; "
    "rows carry condition precision=mixed_bfloat16, and the saved weights "
    "are float32 like any other CloudCNN's.")
KEEP_EPOCHS = flags.DEFINE_list(
    "keep_epochs", [], "Epochs whose weights are also kept, each as a cloud "
    "directory of its own beside the model's (<model dir>-epoch<e>/: "
    "weights, payloads, build.json, dataset.json and snapshot.json, the "
    "epoch's history line; no SavedModel). crop_protocols tests one, "
    "edge_accuracy --cloud_dir trains EdgeCNN1 on one: e.g. --keep_epochs=30 "
    "with the stop rule compares the 30-epoch cap with the run it is part "
    "of. An epoch the run does not reach is not kept.")
FORCE = flags.DEFINE_bool("force", False,
                          "Retrain even if the model directory is complete.")


def make_strategy(name: str):
  import tensorflow as tf
  if name == "default":
    return None
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if "TF_CONFIG" not in os.environ:
    raise app.UsageError("--strategy=multi_worker needs TF_CONFIG describing "
                         "the cluster and this worker's task.")
  return tf.distribute.MultiWorkerMirroredStrategy()


def _task_id() -> int:
  return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get(
      "task", {}).get("index", 0))


def _is_chief(strategy) -> bool:
  if strategy is None or not hasattr(strategy, "cluster_resolver"):
    return True
  resolver = strategy.cluster_resolver
  return resolver is None or (resolver.task_type in (None, "chief")
                              or (resolver.task_type == "worker"
                                  and resolver.task_id == 0))


def keep_epochs(values: list[str], max_epochs: int | None) -> tuple[int, ...]:
  """--keep_epochs as epochs, or a usage error naming the bad value."""
  epochs = []
  for value in values:
    try:
      epochs.append(int(value))
    except ValueError:
      raise app.UsageError(f"--keep_epochs takes epoch numbers (e.g. "
                           f"--keep_epochs=10,30); received {value!r}.") from None
  try:
    return config_lib.kept_epochs(epochs, max_epochs,
                                  name=f"--keep_epochs={','.join(values)}")
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  config = common.train_config()
  kept = keep_epochs(KEEP_EPOCHS.value, config.max_epochs)
  if PRECISION.value != "float32":
    import keras
    keras.mixed_precision.set_global_policy(PRECISION.value)
  strategy = make_strategy(STRATEGY.value)
  dataset = common.load_dataset()
  directory = cloud_model.cloud_dir(common.WORKDIR.value, dataset.info.name,
                                    common.PRESET.value, SEED.value)
  chief = _is_chief(strategy)
  if not chief:
    # Every worker runs the same program; only the chief's files count.
    directory = directory.with_name(directory.name + f"-worker{_task_id()}")
  if cloud_model.is_trained(directory) and not FORCE.value:
    logging.info("%s already holds a trained CloudCNN; --force retrains it.",
                 directory)
    return
  log = common.result_log("train_cloud")
  if chief:
    common.save_flags(log, f"{dataset.info.name}-{common.PRESET.value}-seed{SEED.value}")
  _, result = cloud_model.train_cloud(
      dataset, config, preset=common.PRESET.value, seed=SEED.value,
      directory=directory, num_images=NUM_IMAGES.value,
      kernel_initializer=common.INITIALIZER.value, strategy=strategy,
      tensorboard_dir=common.TENSORBOARD_DIR.value,
      shared=tuple(int(m) for m in SHARED.value),
      evaluate_test=TEST_EVAL.value, keep_epochs=kept)
  key = {"dataset": dataset.info.name, "preset": common.PRESET.value,
         "model": "CloudCNN", "num_shared": 15, "pretrained": "",
         "labels": "true",
         "num_images": NUM_IMAGES.value or len(dataset.x_train),
         "seed": SEED.value}
  # Rows of the paper's recipe carry no condition; anything else says what.
  condition = common.schedule_condition() + [
      f"precision={PRECISION.value}"] * (PRECISION.value != "float32")
  if condition:
    key["condition"] = ";".join(condition)
  if chief:
    log.append(key, sweeps.train_metrics(result))
  logging.info("CloudCNN saved to %s: %s", directory, json.dumps({
      "test_accuracy_10crop": result.test_accuracy_10crop,
      "test_accuracy_center": result.test_accuracy_center,
      "epochs": result.epochs, "stop_reason": result.stop_reason}))


if __name__ == "__main__":
  cli.run(main)
