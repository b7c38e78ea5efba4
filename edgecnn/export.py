"""SavedModel export in TensorFlow Serving's layout and reload checks.

TensorFlow Serving watches ``<base>/<model_name>/<version>/`` and serves the
highest integer version. ``export_saved_model`` writes the version into a
temporary sibling directory and renames it into place, so a watching server
never sees a half-written version.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"
OUTPUT_KEY = "probabilities"


def version_dir(base_dir: str | os.PathLike, model_name: str,
                version: int) -> pathlib.Path:
  """``<base>/<model_name>/<version>``, after validating the parts."""
  if not model_name or "/" in model_name or model_name in (".", ".."):
    raise ValueError(f"`model_name` must be a plain directory name. Received: "
                     f"model_name={model_name!r}")
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ValueError(f"`version` must be a positive integer. Received: "
                     f"version={version!r}")
  return pathlib.Path(base_dir) / model_name / str(version)


def export_saved_model(model: keras.Model, base_dir: str | os.PathLike,
                       model_name: str, version: int, *,
                       overwrite: bool = False) -> pathlib.Path:
  """Writes ``model`` as a SavedModel with a ``serving_default`` signature.

  The signature takes ``image``: float32 (batch, H, W, C) in [0, 1], the
  output of data.preprocess cropped to the model's input, and returns
  ``probabilities`` (batch, num_classes).

  Args:
    model: a Keras model.
    base_dir: TF Serving model base path.
    model_name: the served model's name.
    version: the version number (a positive integer).
    overwrite: replace an existing version instead of raising.

  Returns:
    The version directory.
  """
  target = version_dir(base_dir, model_name, version)
  if target.exists() and not overwrite:
    raise FileExistsError(f"{target} already exists; pass overwrite=True or "
                          "choose another version.")
  target.parent.mkdir(parents=True, exist_ok=True)
  spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")

  @tf.function(input_signature=[spec])
  def serve(image):
    return {OUTPUT_KEY: model(image, training=False)}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(name=SIGNATURE, fn=serve)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
  try:
    archive.write_out(str(tmp / "m"), verbose=False)
    if target.exists():
      shutil.rmtree(target)
    os.replace(tmp / "m", target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def load_serving_fn(path: str | os.PathLike):
  """Loads a SavedModel's serving_default as ``f(images) -> probabilities``."""
  loaded = tf.saved_model.load(str(path))
  signature = loaded.signatures[SIGNATURE]

  def predict(images: np.ndarray) -> np.ndarray:
    out = signature(image=tf.convert_to_tensor(images, tf.float32))
    return out[OUTPUT_KEY].numpy()

  predict.loaded = loaded  # keeps the variables alive
  return predict


def latest_version(base_dir: str | os.PathLike, model_name: str) -> int | None:
  """The highest integer version under ``<base>/<model_name>``, if any."""
  root = pathlib.Path(base_dir) / model_name
  if not root.is_dir():
    return None
  versions = [int(p.name) for p in root.iterdir()
              if p.is_dir() and p.name.isdigit()]
  return max(versions) if versions else None


def check_in_fresh_process(path: str | os.PathLike, images: np.ndarray,
                           expected: np.ndarray, *, atol: float = 1e-5) -> float:
  """Reloads a SavedModel in a new Python process and compares its outputs.

  Args:
    path: the version directory.
    images: float32 inputs of the serving signature.
    expected: what the Keras model gave for them.
    atol: largest allowed absolute difference.

  Returns:
    The largest absolute difference.

  Raises:
    AssertionError: if the reloaded outputs differ by more than ``atol``.
  """
  import subprocess
  import sys
  with tempfile.TemporaryDirectory() as tmp:
    x_path, y_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
    np.save(x_path, np.asarray(images, np.float32))
    code = ("import sys, numpy as np; from edgecnn import export; "
            "f = export.load_serving_fn(sys.argv[1]); "
            "np.save(sys.argv[3], f(np.load(sys.argv[2])))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), x_path,
                           y_path], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode:
      raise RuntimeError(f"Reloading {path} in a fresh process failed:\n"
                         f"{proc.stderr[-2000:]}")
    got = np.load(y_path)
  diff = float(np.max(np.abs(got - expected)))
  if got.shape != expected.shape or diff > atol:
    raise AssertionError(f"SavedModel at {path} disagrees with the Keras model:"
                         f" shapes {got.shape} vs {expected.shape}, max abs "
                         f"diff {diff} > {atol}")
  return diff
