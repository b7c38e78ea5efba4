r"""Test-time crop protocols of a trained CloudCNN: centre crop, the 5 crops of
the image (4 corners + centre) and the standard 10 crops (with mirrors).

MNIST digits change class under a mirror, so edgecnn trains MNIST without
flips and tests it on 5 crops; this measures that choice against the other
two. Rows go to results/crop_protocols.csv, the flags beside it; a rerun
with the rows already there does nothing.

  python -m experiments.crop_protocols --dataset=mnist
"""

from __future__ import annotations

import logging

from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
eval_lib = cli.lazy_import("edgecnn.evaluate")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "cloud", "results")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dataset = common.load_dataset()
  log = common.result_log("crop_protocols")
  directory = common.cloud_directory(dataset.info.name)
  cloud = common.cloud_row_key(directory)
  key = {"dataset": dataset.info.name, "model": "CloudCNN", "num_shared": 15,
         "pretrained": "", "labels": "true",
         "num_images": len(dataset.x_test), **cloud}
  if log.done(key):
    logging.info("%s: already in %s; delete those rows to measure again",
                 dataset.info.name, log.path)
    return
  common.save_flags(log, f"{dataset.info.name}-{cloud['preset']}")
  model = cloud_model.load_cloud(directory)
  crop = model.input_shape[1]
  metrics = []
  for name, mode, flip in (("center", "center", False),
                           ("five_crop", "ten_crop", False),
                           ("ten_crop_with_mirrors", "ten_crop", True)):
    acc = eval_lib.accuracy(eval_lib.predict_probs(
        model, dataset.x_test, crop_size=crop, mode=mode, flip=flip),
        dataset.y_test)
    metrics.append((f"test_accuracy_{name}", acc, "fraction"))
    logging.info("%s: %s %.4f", dataset.info.name, name, acc)
  log.append(key, metrics)


if __name__ == "__main__":
  cli.run(main)
