"""Training, saving and loading a CloudCNN with its shared-layers payloads.

A trained cloud model lives in one directory::

  <dir>/build.json              arguments of models.build_cloud_cnn
  <dir>/dataset.json            the dataset's name, image shape, class names
  <dir>/cloud.weights.h5        its weights
  <dir>/shared_m{m}.bin         shared-layers payloads (Alg. 1, step 1)
  <dir>/saved_model/cloud_cnn/1 SavedModel for TensorFlow Serving
  <dir>/train_result.json       what training measured
  <dir>/train_labels_<mode>.npz CloudCNN's labels of training images
                                (sweeps.CloudLabeler's cache)

``train_cloud(keep_epochs=...)`` also keeps the weights of chosen epochs of
the same run, each as a directory of its own beside it (snapshot_dir:
``<dir>-epoch<e>/``) with build.json, dataset.json, cloud.weights.h5, the
payloads and snapshot.json (the epoch's line of the training history); no
SavedModel, no train_result.json. load_cloud and load_payloads read it
like any cloud directory, so crop_protocols tests it and edge_accuracy
trains EdgeCNN1 on it: a run's epoch-30 weights against its last, paired
within one run.

A copy of the directory without the weights and SavedModel (a few MB) is
enough for an edge_accuracy sweep whose update-phase labels are all in the
label cache (``edge_accuracy --label_only`` fills it where the weights are):
EdgeCNN1 needs only the payloads. See load_payloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
from typing import Iterable

import keras
import numpy as np

from edgecnn import config as config_lib
from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from edgecnn import export as export_lib
from edgecnn import models
from edgecnn import train as train_lib

logger = logging.getLogger("edgecnn")
WEIGHTS = "cloud.weights.h5"
BUILD = "build.json"
DATASET = "dataset.json"
RESULT = "train_result.json"
SNAPSHOT = "snapshot.json"


def cloud_dir(workdir: str | os.PathLike, dataset: str, preset: str,
              seed: int) -> pathlib.Path:
  """Conventional directory of a cloud model under a work directory."""
  return pathlib.Path(workdir) / "cloud" / f"{dataset}-{preset}-seed{seed}"


def snapshot_dir(directory: str | os.PathLike, epoch: int) -> pathlib.Path:
  """Where train_cloud(keep_epochs=...) keeps a run's weights of ``epoch``."""
  directory = pathlib.Path(directory)
  return directory.with_name(f"{directory.name}-epoch{epoch}")


def payload_path(directory: str | os.PathLike, num_shared: int) -> pathlib.Path:
  return pathlib.Path(directory) / f"shared_m{num_shared}.bin"


def save_cloud(model: keras.Model, build_args: dict,
               directory: str | os.PathLike,
               shared: tuple[int, ...] = (3, 5, 10),
               saved_model: bool = True) -> pathlib.Path:
  """Saves weights, build arguments, payloads and (``saved_model``) a
  SavedModel."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / (WEIGHTS + ".tmp.weights.h5")
  model.save_weights(tmp)
  os.replace(tmp, directory / WEIGHTS)
  (directory / BUILD).write_text(json.dumps(build_args, indent=2,
                                            sort_keys=True) + "\n")
  for m in shared:
    payload_path(directory, m).write_bytes(models.export_shared_layers(model, m))
  if saved_model:
    export_lib.export_saved_model(model, directory / "saved_model",
                                  "cloud_cnn", 1, overwrite=True)
  return directory


def save_dataset_info(directory: str | os.PathLike,
                      info: data_lib.DatasetInfo) -> None:
  (pathlib.Path(directory) / DATASET).write_text(json.dumps(
      dataclasses.asdict(info), indent=2) + "\n")


def load_dataset_info(directory: str | os.PathLike) -> data_lib.DatasetInfo:
  """The DatasetInfo a cloud model was trained on."""
  path = pathlib.Path(directory) / DATASET
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; retrain with train_cloud or "
                            "write it with save_dataset_info.")
  record = json.loads(path.read_text())
  return data_lib.dataset_info(record["name"])


def load_build_args(directory: str | os.PathLike) -> dict:
  """The arguments of models.build_cloud_cnn a cloud directory was saved with
  (``preset``, ``seed``, ``input_shape``, ...)."""
  path = pathlib.Path(directory) / BUILD
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: {directory} holds no CloudCNN "
                            "saved by experiments/train_cloud.py.")
  return json.loads(path.read_text())


def load_cloud(directory: str | os.PathLike) -> keras.Model:
  """Rebuilds a saved CloudCNN from its build arguments and weights."""
  directory = pathlib.Path(directory)
  missing = [n for n in (BUILD, WEIGHTS) if not (directory / n).is_file()]
  if missing:
    raise FileNotFoundError(f"{directory} holds no saved CloudCNN (missing "
                            f"{missing}); train one with "
                            "experiments/train_cloud.py.")
  build_args = load_build_args(directory)
  model = models.build_cloud_cnn(**build_args)
  model.load_weights(directory / WEIGHTS)
  return model


def has_weights(directory: str | os.PathLike) -> bool:
  """Whether a cloud directory holds CloudCNN's weights (load_cloud works)."""
  d = pathlib.Path(directory)
  return all((d / n).is_file() for n in (BUILD, WEIGHTS))


def load_payloads(directory: str | os.PathLike,
                  shared: Iterable[int]) -> dict[int, bytes]:
  """The shared-layers payloads a cloud directory holds, by m.

  Raises:
    FileNotFoundError: if the directory does not exist, or naming the m
      values missing and those present.
    models.PayloadError: if a payload is malformed, or the payloads come
      from different CloudCNNs.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(
        f"No cloud directory {directory}: train a CloudCNN there with "
        "experiments/train_cloud.py, or pass the directory it wrote (its "
        "default is <workdir>/cloud/<dataset>-<preset>-seed<seed>; the "
        "committed ones are under results/models/).")
  wanted = sorted({int(m) for m in shared})
  missing = [m for m in wanted if not payload_path(directory, m).is_file()]
  if missing:
    present = sorted(int(p.stem.removeprefix("shared_m"))
                     for p in directory.glob("shared_m*.bin")
                     if p.stem.removeprefix("shared_m").isdigit())
    weights = ("" if has_weights(directory) else
               f" It holds no CloudCNN weights ({WEIGHTS}) either.")
    raise FileNotFoundError(
        f"{directory} has no shared-layers payload for m={missing} (it has "
        f"m={present}).{weights} Train a CloudCNN with experiments/"
        "train_cloud.py (--shared lists the m values written), or pass "
        "--shared with the m values the directory has.")
  payloads = {m: payload_path(directory, m).read_bytes() for m in wanted}
  models.payloads_cloud_hash(payloads, str(directory))
  return payloads


def is_trained(directory: str | os.PathLike) -> bool:
  d = pathlib.Path(directory)
  return all((d / n).is_file() for n in (BUILD, WEIGHTS, DATASET, RESULT))


def train_cloud(dataset: data_lib.Dataset, config: train_lib.TrainConfig, *,
                preset: str, seed: int, directory: str | os.PathLike,
                num_images: int | None = None,
                kernel_initializer: str = "he_normal",
                strategy=None, tensorboard_dir: str | None = None,
                shared: tuple[int, ...] = (3, 5, 10),
                evaluate_test: bool = True,
                keep_epochs: Iterable[int] = ()
                ) -> tuple[keras.Model, train_lib.TrainResult]:
  """Trains CloudCNN on the 9:1 split of the training set and saves it.

  Args:
    dataset: the dataset.
    config: the training schedule.
    preset: "paper" or "compact".
    seed: seed of the split, initialisation and shuffling.
    directory: where the model and its payloads are saved; a checkpoint
      under <directory>/checkpoint lets a killed run resume.
    num_images: train on a seeded subset (for quick runs); None for all.
    kernel_initializer: see models.build_cloud_cnn.
    strategy: an optional tf.distribute strategy.
    tensorboard_dir: optional TensorBoard log directory.
    shared: the m values whose payloads are written.
    evaluate_test: run 10-crop and centre-crop testing after training.
    keep_epochs: epochs whose weights are also kept, each in
      snapshot_dir(directory, epoch) (see the module docstring). An epoch
      before 1 or after config.max_epochs raises ValueError before any
      training; one the stopping rule cuts off is not kept.

  Returns:
    (model, TrainResult).
  """
  info = dataset.info
  crop = config.crop_size or info.default_crop
  build_args = {"input_shape": [crop, crop, info.image_shape[2]],
                "num_classes": info.num_classes, "preset": preset,
                "kernel_initializer": kernel_initializer, "seed": seed}
  split = data_lib.subset_split(len(dataset.x_train), num_images, seed=seed)
  keep_epochs = config_lib.kept_epochs(keep_epochs, config.max_epochs)

  def keep(epoch: int, model: keras.Model, history_entry: dict) -> None:
    where = snapshot_dir(directory, epoch)
    save_cloud(model, build_args, where, shared, saved_model=False)
    save_dataset_info(where, info)
    (where / SNAPSHOT).write_text(json.dumps(
        {"epoch": epoch, "of": str(directory), **history_entry}, indent=2,
        default=float) + "\n")
    logger.info("cloud_cnn[%s]: kept epoch %d's weights in %s", info.name,
                epoch, where)

  keras.utils.set_random_seed(seed)
  scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
  with scope:
    model = models.build_cloud_cnn(**build_args)
  result = train_lib.train_and_evaluate(
      model, dataset, split, config, seed=seed, strategy=strategy,
      tensorboard_dir=tensorboard_dir, label=f"cloud_cnn[{info.name}]",
      evaluate_test=evaluate_test,
      checkpoint_dir=str(pathlib.Path(directory) / "checkpoint"),
      keep_checkpoint=True, snapshot_epochs=keep_epochs, snapshot=keep)
  save_cloud(model, build_args, directory, shared)
  save_dataset_info(directory, info)
  summary = dataclasses.asdict(result)
  summary["dataset_source"] = dataset.source
  summary["num_train"] = int(len(split.train))
  summary["num_val"] = int(len(split.val))
  (pathlib.Path(directory) / RESULT).write_text(
      json.dumps(summary, indent=2, default=float) + "\n")
  # Only now: a run killed while it tested or saved is tested and saved
  # again on rerun, from the checkpoint of its last epoch.
  train_lib.discard_checkpoint(pathlib.Path(directory) / "checkpoint")
  return model, result


def cloud_labels(model: keras.Model, images: np.ndarray, *, flip: bool,
                 mode: str = "ten_crop") -> tuple[np.ndarray, np.ndarray]:
  """CloudCNN's labels and probabilities for images (Alg. 2, step 2)."""
  crop = model.input_shape[1]
  probs = eval_lib.predict_probs(model, images, crop_size=crop, mode=mode,
                                 flip=flip)
  return probs.argmax(axis=-1).astype(np.int64), probs
