r"""Starts an edge service: python -m edgecnn.edge --cloud_url=... .

On first start (no model in --workdir) it runs Algorithm 1: fetches CloudCNN's
m lower layers from the cloud, trains EdgeCNN1-m on its labelled images and
serves it as version 1; later starts serve the newest deployed version.

  python -m edgecnn.edge --edge_id=edge-a --cloud_url=http://127.0.0.1:8500 \
      --cloud_token=$(cat workdir/cloud-service/token) --num_shared=3 \
      --dataset=fashion_mnist --num_labelled=120 --workdir=workdir/edge-a

Labelled images come from --labelled_dir (<dir>/<class>/*.png) or, without
it, a seeded subset of --num_labelled images of --dataset's training set.
"""

from __future__ import annotations

import logging
import os
import pathlib

from absl import app
from absl import flags

EDGE_ID = flags.DEFINE_string("edge_id", "edge-a", "This edge's name.")
CLOUD_URL = flags.DEFINE_string("cloud_url", "http://127.0.0.1:8500",
                                "Base URL of the cloud service.")
CLOUD_TOKEN = flags.DEFINE_string(
    "cloud_token", None, "The cloud's bearer token (or $EDGECNN_CLOUD_TOKEN).")
ADMIN_TOKEN = flags.DEFINE_string(
    "admin_token", None, "This edge's admin token; default: generated and "
    "stored in <workdir>/token.")
WORKDIR = flags.DEFINE_string("workdir", "workdir/edge-a",
                              "Store, model versions, SavedModels, token.")
NUM_SHARED = flags.DEFINE_integer("num_shared", 3, "m: shared CloudCNN layers.")
DATASET = flags.DEFINE_string("dataset", "fashion_mnist",
                              "Dataset whose image format the edge serves.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "See edgecnn.data.")
LABELLED_DIR = flags.DEFINE_string("labelled_dir", None,
                                   "Directory of labelled images by class.")
NUM_LABELLED = flags.DEFINE_integer("num_labelled", 120,
                                    "N, labelled images taken from --dataset.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the subset and the head.")
RETRAIN_THRESHOLD = flags.DEFINE_integer("retrain_threshold", 200,
                                         "M: new cloud labels per retrain.")
UPLOAD_BATCH = flags.DEFINE_integer("upload_batch", 64, "Objects per upload.")
QUIET_THRESHOLD = flags.DEFINE_float(
    "quiet_bytes_per_s", 1e6, "Upload only while the edge's measured WAN "
    "traffic is below this many bytes/s.")
TRAFFIC_WINDOW = flags.DEFINE_float("traffic_window_s", 10.0,
                                    "Window of the traffic measurement.")
INTERFACE = flags.DEFINE_string(
    "interface", None, "Also count this network interface's traffic "
    "(/proc/net/dev), not only the edge's own.")
IDLE_WINDOW = flags.DEFINE_string(
    "idle_window", None, "Upload only between HH:MM-HH:MM local time (in "
    "addition to the quiet-network rule).")
GATE_TOLERANCE = flags.DEFINE_float(
    "gate_tolerance", 0.0, "Deploy a retrained model if its validation "
    "accuracy is >= the serving one's minus this (both measured on the same "
    "validation images when the retrain finishes).")
ISOLATE = flags.DEFINE_bool(
    "isolate_training", True, "Train each model version in a child process: "
    "TensorFlow keeps ~40 MB per model trained in a process, so an edge that "
    "retrains for months would grow without bound (docs/reliability.md).")
CLOUD_VAL_EVERY = flags.DEFINE_integer(
    "cloud_val_every", 10, "Every k-th cloud-labelled object (by id hash) "
    "validates instead of training: the paper's 9:1 split over N + M. 0: only "
    "the edge's own held-out images validate.", lower_bound=0)
MAX_BATCH = flags.DEFINE_integer(
    "max_batch", 64, "Server-side dynamic batching: rows per forward pass "
    "(1 turns batching off).")
MAX_BATCH_WAIT = flags.DEFINE_float(
    "max_batch_wait_ms", 1.0, "Longest wait of a request for others to join "
    "its batch.")
MAX_OBJECTS = flags.DEFINE_integer(
    "max_objects", None, "Storage quota in objects; uploads beyond it are "
    "refused (507) until POST /v1/admin/compact.")
MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 60, "Epoch cap of (re)training.")
FAST_PREDICT = flags.DEFINE_bool(
    "fast_predict", True, "Answer well-formed POST /v1/models/edgecnn:predict "
    "bodies in a pure-ASGI fast path (less CPU per request than FastAPI's "
    "routing); anything else, errors included, goes through the FastAPI "
    "route. --nofast_predict sends everything through FastAPI.")
HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to bind.")
PORT = flags.DEFINE_integer("port", 8501, "Port to bind.")
SSL_CERTFILE = flags.DEFINE_string("ssl_certfile", None, "TLS certificate.")
SSL_KEYFILE = flags.DEFINE_string("ssl_keyfile", None, "TLS private key.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s %(levelname)s %(message)s")
  from edgecnn import client as client_lib
  from edgecnn import serving
  from edgecnn import train as train_lib
  from edgecnn.edge import policy as policy_lib
  from edgecnn.edge import runtime as runtime_lib
  from edgecnn.edge import service

  if LABELLED_DIR.value:
    labelled = runtime_lib.labelled_from_directory(LABELLED_DIR.value,
                                                   DATASET.value, seed=SEED.value)
  else:
    labelled = runtime_lib.labelled_from_dataset(DATASET.value,
                                                 NUM_LABELLED.value, SEED.value,
                                                 DATA_DIR.value)
  monitor = policy_lib.TrafficMonitor(TRAFFIC_WINDOW.value, INTERFACE.value)
  policy: policy_lib.UploadPolicy = policy_lib.QuietNetworkPolicy(
      monitor, QUIET_THRESHOLD.value)
  if IDLE_WINDOW.value:
    start, _, end = IDLE_WINDOW.value.partition("-")
    policy = policy_lib.AllOf([policy, policy_lib.IdleWindowPolicy(start, end)])
  config = runtime_lib.EdgeConfig(
      edge_id=EDGE_ID.value, workdir=pathlib.Path(WORKDIR.value),
      num_shared=NUM_SHARED.value, retrain_threshold=RETRAIN_THRESHOLD.value,
      upload_batch=UPLOAD_BATCH.value, gate_tolerance=GATE_TOLERANCE.value,
      cloud_val_every=CLOUD_VAL_EVERY.value,
      isolate_training=ISOLATE.value,
      train_config=train_lib.get_config("paper", max_epochs=MAX_EPOCHS.value),
      model_seed=SEED.value, max_batch=MAX_BATCH.value,
      max_batch_wait_s=MAX_BATCH_WAIT.value / 1000,
      max_objects=MAX_OBJECTS.value)
  cloud = client_lib.CloudClient(
      CLOUD_URL.value, CLOUD_TOKEN.value or os.environ.get("EDGECNN_CLOUD_TOKEN"))
  edge = runtime_lib.EdgeRuntime(config, labelled, cloud, policy=policy,
                                 monitor=monitor, admin_token=ADMIN_TOKEN.value)
  edge.start()
  edge.run_background()
  logging.info("edge %s serving version %d on %s:%d (admin token in %s)",
               EDGE_ID.value, edge.slot.current().version, HOST.value,
               PORT.value, pathlib.Path(WORKDIR.value) / "token")
  try:
    serving.run_until_signal(service.create_app(
        edge, fast_predict=FAST_PREDICT.value), host=HOST.value,
                             port=PORT.value, ssl_certfile=SSL_CERTFILE.value,
                             ssl_keyfile=SSL_KEYFILE.value)
  finally:
    edge.stop()
    logging.info("edge %s stopped cleanly", EDGE_ID.value)


if __name__ == "__main__":
  app.run(main)
