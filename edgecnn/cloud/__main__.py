r"""Starts the cloud service: python -m edgecnn.cloud --cloud_dir=... .

  python -m edgecnn.cloud --cloud_dir=workdir/cloud/fashion_mnist-compact-seed0 \
      --workdir=workdir/cloud-service --port=8500

The bearer token is --token, else $EDGECNN_CLOUD_TOKEN, else the one stored
in <workdir>/token (created with owner-only permissions on first start).
"""

from __future__ import annotations

import logging
import os

from absl import app
from absl import flags

CLOUD_DIR = flags.DEFINE_string("cloud_dir", None,
                                "A trained CloudCNN from experiments.train_cloud.",
                                required=True)
WORKDIR = flags.DEFINE_string("workdir", "workdir/cloud-service",
                              "Label database and token.")
HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to bind.")
PORT = flags.DEFINE_integer("port", 8500, "Port to bind.")
TOKEN = flags.DEFINE_string("token", None, "Bearer token (see module doc).")
LABEL_MODE = flags.DEFINE_enum("label_mode", "ten_crop", ["ten_crop", "center"],
                               "Crop protocol CloudCNN labels uploads with.")
SSL_CERTFILE = flags.DEFINE_string("ssl_certfile", None, "TLS certificate.")
SSL_KEYFILE = flags.DEFINE_string("ssl_keyfile", None, "TLS private key.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s %(levelname)s %(message)s")
  from edgecnn import serving
  from edgecnn.cloud import service
  runtime = service.CloudRuntime(
      CLOUD_DIR.value, WORKDIR.value,
      token=TOKEN.value or os.environ.get("EDGECNN_CLOUD_TOKEN"),
      label_mode=LABEL_MODE.value)
  logging.info("cloud model %s (hash %s) on %s:%d; token in %s",
               CLOUD_DIR.value, runtime.model_hash[:12], HOST.value, PORT.value,
               "the flag/env" if TOKEN.value or os.environ.get(
                   "EDGECNN_CLOUD_TOKEN") else runtime.workdir / "token")
  serving.run_until_signal(service.create_app(runtime), host=HOST.value,
                           port=PORT.value, ssl_certfile=SSL_CERTFILE.value,
                           ssl_keyfile=SSL_KEYFILE.value)
  logging.info("cloud service stopped cleanly")


if __name__ == "__main__":
  app.run(main)
