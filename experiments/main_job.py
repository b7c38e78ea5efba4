r"""The project's main job: the whole framework on one machine, on loopback.

Trains (or reuses) a CloudCNN, starts the cloud service and two edges
(EdgeCNN-3 and EdgeCNN-10), initialises them from shared layers (Alg. 1),
replays a stream of users uploading unlabelled training images through the
edges' HTTP APIs, lets the quiet-network upload policy and retraining run
(Alg. 2), and prints each edge's test accuracy per model version beside
EdgeCNN0 at the same label count and CloudCNN. Rows go to
results/main_job.csv (one per edge and model version).

  python -m experiments.main_job            # Fashion-MNIST, compact preset
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import app
from absl import flags

from experiments import cli
from edgecnn import config as config_lib

# The library loads on first use, so --help needs no TensorFlow.
main_job = cli.lazy_import("edgecnn.main_job")

DEFAULTS = config_lib.MainJobConfig(workdir=pathlib.Path("workdir/main_job"),
                                    results_csv=pathlib.Path("results/main_job.csv"))

WORKDIR = flags.DEFINE_string("workdir", str(DEFAULTS.workdir),
                              "Cached CloudCNN, edges' stores and models.")
RESULTS_CSV = flags.DEFINE_string("results_csv", str(DEFAULTS.results_csv),
                                  "Rows are appended here.")
DATASET = flags.DEFINE_enum("dataset", DEFAULTS.dataset,
                            sorted(config_lib.DATASETS), "Dataset.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "See edgecnn.data.")
PRESET = flags.DEFINE_enum("preset", DEFAULTS.preset, list(config_lib.PRESETS),
                           "CloudCNN preset.")
CLOUD_DIR = flags.DEFINE_string(
    "cloud_dir", None, "Use this trained CloudCNN (from train_cloud) instead "
    "of the shipped or a cached one.")
USE_SHIPPED = flags.DEFINE_bool(
    "use_shipped_cloud", DEFAULTS.use_shipped_cloud,
    "Use the CloudCNN committed in results/models/<dataset>-<preset>-seed0 "
    "when there is one (Fashion-MNIST compact: 30 epochs, 91.7% 10-crop). "
    "--nouse_shipped_cloud trains (and caches) one for --cloud_epochs.")
CLOUD_EPOCHS = flags.DEFINE_integer("cloud_epochs", DEFAULTS.cloud_epochs,
                                    "Epochs of the cached CloudCNN.")
CLOUD_NUM_IMAGES = flags.DEFINE_integer(
    "cloud_num_images", None, "Train the cached CloudCNN on a subset (smoke "
    "runs); default: the whole training set.")
EDGES = flags.DEFINE_list("edges", [str(m) for m in DEFAULTS.edges],
                          "m of each edge (one edge per value).")
NUM_LABELLED = flags.DEFINE_integer("num_labelled", DEFAULTS.num_labelled,
                                    "N, each edge's own labelled images.")
STREAM = flags.DEFINE_integer("stream_per_edge", DEFAULTS.stream_per_edge,
                              "Images users upload to each edge.")
BURST = flags.DEFINE_integer("burst", DEFAULTS.burst, "Uploads per burst.")
QUIET_GAP = flags.DEFINE_float("quiet_gap_s", DEFAULTS.quiet_gap_s,
                               "Seconds of quiet between bursts.")
THRESHOLD = flags.DEFINE_integer("retrain_threshold", DEFAULTS.retrain_threshold,
                                 "M: new cloud labels per retrain.")
EDGE_MAX_EPOCHS = flags.DEFINE_integer(
    "edge_max_epochs", DEFAULTS.edge_max_epochs,
    "Epoch cap of edge (re)training and of the EdgeCNN0 baselines.")
TEST_IMAGES = flags.DEFINE_integer("test_images", DEFAULTS.test_images,
                                   "Test images each version is evaluated on.")
QUIET_BPS = flags.DEFINE_float(
    "quiet_bytes_per_s", DEFAULTS.quiet_bytes_per_s,
    "Edges upload to the cloud only while their traffic is below this.")
SEED = flags.DEFINE_integer("seed", DEFAULTS.seed, "Seed.")
FRESH = flags.DEFINE_bool("fresh", True, "Start the edges from scratch "
                          "(the cached CloudCNN is kept).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
  for handler in logging.getLogger().handlers:
    handler.setLevel(logging.WARNING)
  # Epoch lines of the (long) CloudCNN training are progress worth seeing;
  # the edges' many short trainings are summarised by the job itself.
  progress = logging.StreamHandler(sys.stdout)
  progress.addFilter(lambda record: "cloud_cnn[" in record.getMessage())
  progress.setFormatter(logging.Formatter("[%(asctime)s] %(message)s",
                                          "%H:%M:%S"))
  logging.getLogger("edgecnn").addHandler(progress)
  logging.getLogger("edgecnn").setLevel(logging.INFO)
  cfg = config_lib.MainJobConfig(
      workdir=pathlib.Path(WORKDIR.value),
      results_csv=pathlib.Path(RESULTS_CSV.value), dataset=DATASET.value,
      data_dir=DATA_DIR.value, preset=PRESET.value,
      cloud_dir=pathlib.Path(CLOUD_DIR.value) if CLOUD_DIR.value else None,
      use_shipped_cloud=USE_SHIPPED.value, cloud_epochs=CLOUD_EPOCHS.value, cloud_num_images=CLOUD_NUM_IMAGES.value,
      edges=tuple(int(m) for m in EDGES.value), num_labelled=NUM_LABELLED.value,
      stream_per_edge=STREAM.value, burst=BURST.value,
      quiet_gap_s=QUIET_GAP.value, retrain_threshold=THRESHOLD.value,
      edge_max_epochs=EDGE_MAX_EPOCHS.value, test_images=TEST_IMAGES.value,
      quiet_bytes_per_s=QUIET_BPS.value, seed=SEED.value, fresh=FRESH.value)
  frame = main_job.run(cfg, say=lambda line: print(line, flush=True))
  print("\n" + main_job.format_table(frame), flush=True)


if __name__ == "__main__":
  cli.run(main)
