r"""How large the shared layers' output of a CloudCNN is, and the loss a fresh
EdgeCNN1-m head starts at on it, for each m (a diagnostic of why a longer-
trained CloudCNN can give a head a rougher start at the paper's fixed
learning rate; results/REPRODUCTION.md, section 2).

Measured on the first --num_images training images, centre crop. One row per
m and metric (shared_output_mean, shared_output_rms, shared_output_max,
initial_loss); the row's condition names the CloudCNN (its directory's name
and content hash), so several CloudCNNs can share one CSV. A rerun with the
rows already there does nothing.

  python -m experiments.feature_scale --dataset=cifar10 \
      --cloud_dir=results/models/cifar10-compact-seed0 \
      --results_csv=results/feature_scale.csv
"""

from __future__ import annotations

import logging
import pathlib

from absl import flags

from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
eval_lib = cli.lazy_import("edgecnn.evaluate")
models = cli.lazy_import("edgecnn.models")

SHARED = flags.DEFINE_list("shared", ["3", "5", "10"], "Values of m.")
NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 512, "How many training images (the first ones) to measure "
    "on.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 0, "Seed of the fresh head's weights.")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "cloud", "results")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  try:
    shared = sorted({int(m) for m in SHARED.value})
  except ValueError:
    raise SystemExit(f"--shared takes integers such as 3,5,10. Received: "
                     f"{','.join(SHARED.value)}") from None
  dataset = common.load_dataset()
  directory = pathlib.Path(common.cloud_directory(dataset.info.name))
  payloads = cloud_model.load_payloads(directory, shared)
  cloud_hash = models.payloads_cloud_hash(payloads, str(directory))
  condition = f"cloud={directory.name}@{cloud_hash[:12]}"
  preset = common.cloud_row_key(directory)["preset"]
  log = common.result_log("feature_scale")
  common.save_flags(log, f"{dataset.info.name}-{preset}")
  count = min(NUM_IMAGES.value, len(dataset.x_train))
  images, labels = dataset.x_train[:count], dataset.y_train[:count]
  for m in shared:
    key = {"dataset": dataset.info.name, "preset": preset,
           "model": f"EdgeCNN1-{m}", "num_shared": m, "pretrained": 1,
           "labels": "true", "num_images": count, "seed": SEED.value,
           "condition": condition}
    if log.done(key):
      logging.info("m=%d of %s: already in %s", m, condition, log.path)
      continue
    scale = eval_lib.shared_output_scale(payloads[m], images, labels,
                                         seed=SEED.value)
    logging.info("m=%d of %s: %s", m, condition,
                 ", ".join(f"{k} {v:.4g}" for k, v in scale.items()))
    log.append(key, [(name, value, "nats" if name == "initial_loss"
                      else "activation") for name, value in scale.items()])


if __name__ == "__main__":
  cli.run(main)
