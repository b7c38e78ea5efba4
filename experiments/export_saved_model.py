r"""Exports CloudCNN or an EdgeCNN as a SavedModel for TensorFlow Serving.

Writes <base_dir>/<model_name>/<version>/ with a `serving_default`
signature (input `image`: float32 batch of preprocessed crops; output
`probabilities`), then reloads it in a fresh process and checks its outputs
equal the Keras model's on test images.

  python -m experiments.export_saved_model --dataset=fashion_mnist \
      --model=edge --num_shared=3 --base_dir=/srv/tf-serving --version=1
"""

from __future__ import annotations

import logging

from absl import flags

from experiments import cli
from experiments import common

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
data_lib = cli.lazy_import("edgecnn.data")
export = cli.lazy_import("edgecnn.export")
models = cli.lazy_import("edgecnn.models")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "cloud")

BASE_DIR = flags.DEFINE_string("base_dir", "serving",
                               "TensorFlow Serving model base path.")
MODEL = flags.DEFINE_enum("model", "cloud", ["cloud", "edge"],
                          "Export CloudCNN or EdgeCNN1-m.")
NUM_SHARED = flags.DEFINE_integer("num_shared", 3, "m for --model=edge.")
EDGE_WEIGHTS = flags.DEFINE_string(
    "edge_weights", None, "Trained EdgeCNN weights (.weights.h5) for "
    "--model=edge; without it the head is freshly initialised.")
MODEL_NAME = flags.DEFINE_string("model_name", None,
                                 "Served name; default cloud_cnn / edgecnn.")
VERSION = flags.DEFINE_integer("version", 1, "Version number.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing version.")
CHECK_IMAGES = flags.DEFINE_integer("check_images", 64,
                                    "Test images used for the reload check.")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dataset = common.load_dataset()
  cloud = cloud_model.load_cloud(common.cloud_directory(dataset.info.name))
  if MODEL.value == "cloud":
    model = cloud
  else:
    model = models.build_edge_cnn(cloud, NUM_SHARED.value)
    if EDGE_WEIGHTS.value:
      model.load_weights(EDGE_WEIGHTS.value)
  name = MODEL_NAME.value or ("cloud_cnn" if MODEL.value == "cloud" else "edgecnn")
  path = export.export_saved_model(model, BASE_DIR.value, name, VERSION.value,
                                   overwrite=OVERWRITE.value)
  crop = model.input_shape[1]
  x = data_lib.center_crop(data_lib.preprocess(
      dataset.x_test[:CHECK_IMAGES.value]), crop).numpy()
  diff = export.check_in_fresh_process(path, x, model.predict(x, verbose=0))
  logging.info("Exported %s to %s; fresh-process reload matches (max abs "
               "diff %.2g on %d test images).", model.name, path, diff, len(x))


if __name__ == "__main__":
  cli.run(main)
