r"""Time to classify test images with EdgeCNN1-3/5/10 and CloudCNN (Fig. 11).

Timing needs only the architectures, so the edge models are EdgeCNN1-m built
from the cloud's shared layers (their head weights do not change the time).
After a warm-up, every model classifies the same --num_test_images
centre-cropped test images --repeats times, interleaved, and the median and
half-range go to results/inference_time.csv, per image in ms.

  python -m experiments.inference_time --dataset=cifar10 --repeats=7
"""

from __future__ import annotations

import logging

from absl import app
from absl import flags

from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
models = cli.lazy_import("edgecnn.models")
sweeps = cli.lazy_import("edgecnn.sweeps")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "cloud", "results")

NUM_TEST_IMAGES = flags.DEFINE_integer("num_test_images", 2000,
                                       "Test images classified per repeat.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per model.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 256,
                                  "Batch size of the forward passes.")
SHARED = flags.DEFINE_list("shared", ["3", "5", "10"], "Values of m.")
FORCE = flags.DEFINE_bool("force", False,
                          "Measure again even if the CSV has these rows.")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dataset = common.load_dataset()
  if not 1 <= NUM_TEST_IMAGES.value <= len(dataset.x_test):
    raise app.UsageError(f"--num_test_images must be in 1..{len(dataset.x_test)}"
                         f"; got {NUM_TEST_IMAGES.value}.")
  directory = common.cloud_directory(dataset.info.name)
  cloud_key = common.cloud_row_key(directory)
  cloud = cloud_model.load_cloud(directory)
  named = [(sweeps.model_label(True, int(m)), models.build_edge_cnn(cloud, int(m)))
           for m in SHARED.value] + [("CloudCNN", cloud)]
  images = dataset.x_test[:NUM_TEST_IMAGES.value]
  log = common.result_log("inference_time")
  keys = {name: {"dataset": dataset.info.name, "model": name,
                 "num_shared": getattr(model, "num_shared", 15),
                 "pretrained": name != "CloudCNN", "labels": "",
                 "num_images": len(images), **cloud_key}
          for name, model in named}
  if all(log.done(k) for k in keys.values()) and not FORCE.value:
    logging.info("%s already has these timings; --force measures again.",
                 log.path)
    return
  timings = sweeps.inference_time(named, images, repeats=REPEATS.value,
                                  batch_size=BATCH_SIZE.value)
  common.save_flags(log, f"{dataset.info.name}-{cloud_key['preset']}")
  n = len(images)
  for name, _ in named:
    t = timings[name]
    key = keys[name]
    log.append(key, [("inference_time_median", t.median, "s"),
                     ("inference_time_spread", t.spread, "s"),
                     ("inference_ms_per_image", 1000 * t.median / n, "ms"),
                     ("repeats", len(t.samples), "count"),
                     ("batch_size", BATCH_SIZE.value, "images")])
    logging.info("%s: %.3f ms/image (median of %d, +-%.3f s)", name,
                 1000 * t.median / n, len(t.samples), t.spread)


if __name__ == "__main__":
  cli.run(main)
