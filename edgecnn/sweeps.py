"""Library side of the experiments: the EdgeCNN0 vs EdgeCNN1 accuracy sweep
(Tables 2-3, Figs. 7-9), training time (Fig. 10) and inference time (Fig. 11).

Semantics of the number of training images N (Sec. 4.3.1): the smallest N
of a sweep is the initialisation phase, trained on true labels. Every larger
N is an update phase: the nested subset of N images holds the initial images
with their true labels plus images "uploaded by users" whose labels come from
CloudCNN (``labels="cloud"``) or from the ground truth (``labels="oracle"``,
the paper's assumption that CloudCNN is always right). EdgeCNN0 always trains
on true labels, as the paper does for a fair comparison. Each N trains a
fresh head from the same seeded initialisation (the paper's tables report
independent models per N).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
import uuid
from typing import Iterable, Iterator, Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from edgecnn import cloud_model
# Defined in config.py (no TensorFlow there) and re-exported.
from edgecnn.config import LABEL_SOURCES, SUBSETS
from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from edgecnn import models
from edgecnn import results
from edgecnn import train as train_lib

logger = logging.getLogger("edgecnn")

PAPER_GRIDS = {
    "mnist": (120, 240, 360, 480, 600, 720, 840, 960, 1080, 1200, 60000),
    "fashion_mnist": (120, 240, 360, 480, 600, 720, 840, 960, 1080, 1200,
                      60000),
    "cifar10": (100, 500, 1000, 2000, 5000, 50000),
}


def model_label(pretrained: bool, num_shared: int) -> str:
  return f"EdgeCNN{int(pretrained)}-{num_shared}"


def train_metrics(result: train_lib.TrainResult) -> list[tuple[str, object, str]]:
  """The rows every training run reports."""
  rows = [
      ("test_accuracy_10crop", result.test_accuracy_10crop, "fraction"),
      ("test_accuracy_center", result.test_accuracy_center, "fraction"),
      ("best_val_accuracy", result.best_val_accuracy, "fraction"),
      ("epochs", result.epochs, "epochs"),
      ("best_epoch", result.best_epoch, "epochs"),
      ("wall_time", result.wall_time_s, "s"),
      ("time_per_epoch", result.time_per_epoch_s, "s"),
      ("train_images_per_s", result.train_images_per_s, "images/s"),
      ("trainable_params", result.trainable_params, "params"),
      ("frozen_params", result.frozen_params, "params"),
      ("restarts", result.restarts, "count"),
      ("trained", int(result.trained), "bool"),
  ]
  for weights, test in (result.epoch_tests or {}).items():
    rows += [(f"{weights}_epoch_test_accuracy_10crop", test["ten_crop"],
              "fraction"),
             (f"{weights}_epoch_test_accuracy_center", test["center"],
              "fraction")]
  return [r for r in rows if r[1] is not None]


class MissingCloudLabels(LookupError):
  """Labels were asked of a CloudLabeler that has neither them nor a model."""


class CloudLabeler:
  """CloudCNN's labels for training images, computed once and cached on disk.

  Args:
    model: the trained CloudCNN, or None to label only from the cache (a
      cloud directory copied without its weights): asking for an image the
      cache lacks then raises MissingCloudLabels.
    dataset: the dataset whose training images are labelled.
    cache: optional .npz file keeping {index: label} across runs.
    mode: crop protocol of the cloud's predictions ("ten_crop" or "center").
  """

  def __init__(self, model: keras.Model | None, dataset: data_lib.Dataset, *,
               cache: str | os.PathLike | None = None, mode: str = "ten_crop"):
    self.model, self.dataset, self.mode = model, dataset, mode
    self.cache = pathlib.Path(cache) if cache else None
    self.labels = np.full(len(dataset.x_train), -1, np.int64)
    self._merge_cache()

  def _merge_cache(self) -> None:
    """Adds the labels on disk (another sweep may have written more)."""
    if self.cache and self.cache.exists():
      with np.load(self.cache) as z:
        self.labels[z["index"]] = z["label"]

  def unlabelled(self, indices: np.ndarray) -> np.ndarray:
    """The indices among ``indices`` with no label yet."""
    return indices[self.labels[indices] < 0]

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    missing = self.unlabelled(indices)
    if len(missing) and self.model is None:
      raise MissingCloudLabels(
          f"{len(missing)} of the {len(indices)} training images asked for "
          f"have no CloudCNN label ({self.mode}) in "
          f"{self.cache or 'the labeler (no cache file)'} and no CloudCNN is "
          f"loaded to label them (first missing indices: "
          f"{missing[:5].tolist()}). Label them where the CloudCNN's weights "
          "are (experiments.edge_accuracy --label_only with the same "
          "--num_images and --seeds), or pass --cloud_dir of a directory "
          "holding cloud.weights.h5.")
    if len(missing):
      logger.info("CloudCNN labels %d training images (%s)", len(missing),
                  self.mode)
      labels, _ = cloud_model.cloud_labels(
          self.model, self.dataset.x_train[missing],
          flip=self.dataset.info.flip, mode=self.mode)
      self.labels[missing] = labels
      if self.cache:
        # Sweeps sharing the cache: keep what others wrote (the labels are
        # the same deterministic predictions) and write through a file of
        # this process's own, so one sweep never renames another's half file.
        self._merge_cache()
        known = np.flatnonzero(self.labels >= 0)
        tmp = self.cache.with_name(
            f"{self.cache.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        np.savez(tmp, index=known, label=self.labels[known])
        os.replace(tmp, self.cache)
    return self.labels[indices]


def uploaded_images(split: data_lib.Split,
                    initial: data_lib.Split) -> np.ndarray:
  """The images of an update phase's subset that the initialisation phase did
  not have (they were uploaded by users), sorted."""
  return np.setdiff1d(np.concatenate([split.train, split.val]),
                      np.concatenate([initial.train, initial.val]))


def update_phase_labels(dataset: data_lib.Dataset, split: data_lib.Split,
                        initial: data_lib.Split, labels: str,
                        labeler: CloudLabeler | None) -> tuple[np.ndarray, int, int]:
  """Training labels for a subset: truth for the initial images, the cloud's
  (or the truth, for "oracle") for the uploaded ones.

  Returns:
    (labels aligned with dataset.y_train, number of cloud-labelled images,
    number of them that are wrong).
  """
  if labels not in LABEL_SOURCES:
    raise ValueError(f"`labels` must be one of {list(LABEL_SOURCES)}. "
                     f"Received: labels={labels!r}")
  out = dataset.y_train.copy()
  uploaded = uploaded_images(split, initial)
  if labels == "oracle" or len(uploaded) == 0:
    return out, int(len(uploaded)), 0
  if labeler is None:
    raise ValueError("labels='cloud' needs a CloudLabeler.")
  out[uploaded] = labeler(uploaded)
  wrong = int(np.sum(out[uploaded] != dataset.y_train[uploaded]))
  return out, int(len(uploaded)), wrong


def sweep_split(spec: SweepSpec, train_labels: np.ndarray, num_images: int,
                seed: int) -> data_lib.Split:
  """The sweep's subset of ``num_images`` training images for ``seed``:
  random, or (``spec.subset == "balanced"``) with a class-balanced
  initialisation phase (data.subset_order)."""
  return data_lib.subset_split(
      len(train_labels), num_images, seed=seed, labels=train_labels,
      balanced_first=(min(spec.num_images) if spec.subset == "balanced"
                      else 0))


def grid_uploads(train_labels: np.ndarray, spec: SweepSpec) -> np.ndarray:
  """Indices of every training image an update phase of the sweep uploads
  (labelled by CloudCNN when ``spec.labels == "cloud"``), sorted.
  ``train_labels``: the training set's true classes (their number sizes the
  set; a balanced subset reads them)."""
  n_initial = min(spec.num_images)
  out = []
  for seed in spec.seeds:
    initial = sweep_split(spec, train_labels, n_initial, seed)
    out += [uploaded_images(sweep_split(spec, train_labels, n, seed), initial)
            for n in spec.num_images if n != n_initial]
  return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def label_grid(dataset: data_lib.Dataset, spec: SweepSpec,
               labeler: CloudLabeler) -> tuple[int, int]:
  """Has ``labeler`` label (and cache) every image the sweep uploads, so the
  sweep can later run from the cloud directory without CloudCNN's weights.

  Returns:
    (images the grid uploads, how many of them were not in the cache).
  """
  wanted = grid_uploads(dataset.y_train, spec)
  new = len(labeler.unlabelled(wanted))
  if len(wanted):
    labeler(wanted)
  return len(wanted), new


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """One edge_accuracy sweep."""
  preset: str
  num_images: tuple[int, ...]
  seeds: tuple[int, ...]
  shared: tuple[int, ...] = (3, 5, 10)
  labels: str = "cloud"
  models: tuple[bool, ...] = (True, False)  # pretrained flags to run
  kernel_initializer: str = "he_normal"
  # None: the edge head is the cloud's (Alg. 1). "paper"/"compact": that
  # preset's head pool (an ablation); recorded in the rows' condition.
  head_pool: str | None = None
  # EdgeCNN1's shared layers train too (an ablation of Alg. 1-2's freezing;
  # condition shared=trained). EdgeCNN0 trains every layer anyway.
  train_shared: bool = False
  # How the N images are chosen (config.SUBSETS): "random" (the default), or
  # "balanced": the initialisation phase's images class-balanced, an
  # ablation recorded in the rows' condition as subset=balanced.
  subset: str = "random"

  def __post_init__(self):
    if self.subset not in SUBSETS:
      raise ValueError(f"`subset` must be one of {list(SUBSETS)}. "
                       f"Received: subset={self.subset!r}")
    if self.train_shared and False in self.models:
      raise ValueError(
          "`train_shared` is an ablation of EdgeCNN1's frozen layers; "
          "EdgeCNN0 trains every layer already, so its runs would repeat "
          "the plain grid's under another name. Run EdgeCNN1 alone "
          "(models=(True,)). Received: models="
          f"{self.models!r}, train_shared=True")

  @property
  def condition(self) -> str:
    """The rows' condition: what this sweep changes of the recipe, or ""."""
    parts = []
    if self.head_pool is not None:
      parts.append(f"head_pool={self.head_pool}")
    if self.train_shared:
      parts.append("shared=trained")
    if self.subset != "random":
      parts.append(f"subset={self.subset}")
    return ";".join(parts)


def sweep_runs(dataset_name: str, spec: SweepSpec
               ) -> Iterator[tuple[int, int, int, bool, dict[str, object]]]:
  """Every run of a sweep in run order: (seed, N, m, pretrained, row key).

  The order is seed, N (as given), m, model; the row key is what
  ``ResultLog.done`` looks up. EdgeCNN1 above the smallest N trains on
  ``spec.labels``; everything else on true labels.
  """
  n_initial = min(spec.num_images)
  for seed in spec.seeds:
    for n in spec.num_images:
      for m in spec.shared:
        for pretrained in spec.models:
          label_source = spec.labels if pretrained and n > n_initial else "true"
          key: dict[str, object] = {
              "dataset": dataset_name, "preset": spec.preset,
              "model": model_label(pretrained, m), "num_shared": m,
              "pretrained": pretrained, "labels": label_source,
              "num_images": n, "seed": seed}
          if spec.condition:
            key["condition"] = spec.condition
          yield seed, n, m, pretrained, key


def initialisation_clashes(dataset_name: str, spec: SweepSpec,
                           log: results.ResultLog) -> str | None:
  """A warning when this sweep starts above the sweeps ``log`` already holds;
  None otherwise.

  The smallest N of a sweep is its initialisation phase, on N true labels;
  in a sweep that starts lower, the same N is an update phase whose uploads
  CloudCNN (or, for ``oracle``, the truth) labelled. Both are legitimate runs
  with their own ``labels`` and skip keys, so nothing clashes in the CSV; but
  ``--num_images=5000`` meant as "the missing N=5,000 of the 100-5,000 grid"
  trains the other experiment. The sign: ``log`` has EdgeCNN1 runs of the
  same dataset and preset initialised (labels=true) at a smaller N.
  """
  if True not in spec.models:
    return None
  n0 = min(spec.num_images)
  rows = log.read()
  rows = rows[(rows["dataset"] == dataset_name)
              & (rows["preset"] == spec.preset)
              & (rows["pretrained"] == "True") & (rows["labels"] == "true")]
  starts = sorted({int(n) for n in rows["num_images"] if int(n) < n0})
  if not starts:
    return None
  grid = ",".join(str(n) for n in sorted({starts[0], *spec.num_images}))
  source = "CloudCNN" if spec.labels == "cloud" else "their true labels"
  return (f"--num_images starts at N={n0:,}, so this sweep's EdgeCNN1 runs "
          f"there are initialisation phases on {n0:,} true labels "
          f"(labels=true). {log.path.name} holds EdgeCNN1 sweeps that start "
          f"at N={starts[0]:,}, in which N={n0:,} is an update phase on "
          f"{starts[0]:,} true labels and {n0 - starts[0]:,} uploads labelled "
          f"by {source} (labels={spec.labels}): different runs, which "
          "will sit beside each other in the CSV (the tables keep them "
          "apart). To add the update phase, give the whole list, e.g. "
          f"--num_images={grid}; the rows already there are skipped.")


def plan_sweep(dataset_name: str, spec: SweepSpec,
               log: results.ResultLog,
               others: Sequence[results.ResultLog] = ()) -> pd.DataFrame:
  """What a sweep would do, without training: one row per run.

  Columns: seed, num_images, model, labels, done (rows already in ``log``),
  running (another live sweep holds the run's claim), est_s and est_from.
  est_s, a planning aid for long grids, is the median wall time of the runs
  in ``log`` with the same dataset, preset, model, N, labels and condition
  (any seed). Where none has run yet, it is the median of such runs on a
  dataset of the same image shape and training set size (MNIST for
  Fashion-MNIST and back: the same network, the same number of batches), and
  est_from names that dataset. Where neither has, the CSVs of ``others`` are
  read the same way, in order (an ablation's CSV borrows the times of the
  main grid's), and est_from says "<dataset> in <file name>". A run under a
  condition (``spec.condition``: an ablation's head or trained shared
  layers) that none of them has run borrows, last, the time of the same run
  without it, and est_from adds "without <condition>": a rough guide, since
  the condition changes the model's cost per epoch and its epochs. NaN and
  "" where none of them has the run.
  """
  info = data_lib.DATASETS.get(dataset_name)
  alikes = [name for name, other in data_lib.DATASETS.items()
            if info is not None and name != dataset_name
            and (other.image_shape, other.num_train)
            == (info.image_shape, info.num_train)]
  keep = ["dataset", "preset", "model", "num_images", "labels", "condition"]
  at_condition = keep.index("condition") - 1  # its place in a key without dataset

  def wall_medians(rows: pd.DataFrame) -> dict:
    walls = rows[rows["metric"] == "wall_time"]
    if not len(walls):
      return {}
    return (walls.assign(value=pd.to_numeric(walls["value"]))
            .groupby(keep)["value"].median().to_dict())

  sources = [(wall_medians(log.read()), "")]
  sources += [(wall_medians(other.read()), f" in {other.path.name}")
              for other in others]
  out = []
  for seed, n, _, _, key in sweep_runs(dataset_name, spec):
    rest = tuple(results.key_text(key.get(c)) for c in keep[1:])
    tries = [(rest, "")]
    if rest[at_condition]:
      bare = rest[:at_condition] + ("",) + rest[at_condition + 1:]
      tries.append((bare, f" without {rest[at_condition]}"))
    source, est = next(((name + where + without, medians[(name,) + wanted])
                        for wanted, without in tries
                        for medians, where in sources
                        for name in [dataset_name, *alikes]
                        if (name,) + wanted in medians), ("", float("nan")))
    out.append({"seed": seed, "num_images": n, "model": key["model"],
                "labels": key["labels"], "done": log.done(key),
                "running": log.claimed_by(key) is not None,
                "est_s": est, "est_from": source})
  return pd.DataFrame(out, columns=["seed", "num_images", "model", "labels",
                                    "done", "running", "est_s", "est_from"])


def sweep_payloads(cloud: keras.Model | Mapping[int, bytes],
                   shared: Iterable[int]) -> tuple[dict[int, bytes], str]:
  """The payload of each m and the CloudCNN's content hash, from a model or
  from payloads already exported (cloud_model.load_payloads), so a teacher
  is named the same either way (payloads carry their CloudCNN's hash)."""
  if isinstance(cloud, keras.Model):
    return ({m: models.export_shared_layers(cloud, m) for m in shared},
            models.model_hash(cloud))
  missing = sorted(set(shared) - set(cloud))
  if missing:
    raise ValueError(f"No payload for m={missing}; received payloads for "
                     f"m={sorted(cloud)}.")
  payloads = {m: cloud[m] for m in shared}
  return payloads, models.payloads_cloud_hash(payloads)


def edge_accuracy_sweep(dataset: data_lib.Dataset,
                        cloud: keras.Model | Mapping[int, bytes],
                        spec: SweepSpec, config: train_lib.TrainConfig,
                        log: results.ResultLog, *,
                        labeler: CloudLabeler | None = None,
                        tensorboard_dir: str | None = None,
                        trunk_cache: eval_lib.TrunkCache | None = None,
                        checkpoint_root: str | os.PathLike | None = None,
                        checkpoint_min_images: int = 10_000) -> int:
  """Trains EdgeCNN0-m and EdgeCNN1-m over a grid of N and seeds.

  Rows already in ``log`` are skipped, so a killed sweep resumes. The loop
  order is seed, N (in the order given), m, model: pass the most informative
  N first to have those rows land first. With a ``trunk_cache``, every
  EdgeCNN1-m after the first of each m runs only its head over the test
  crops (see evaluate.TrunkCache). With a ``checkpoint_root``, runs of at
  least ``checkpoint_min_images`` images checkpoint every epoch under it (one
  directory per run, named by its row key and the cloud model's hash) and
  a rerun resumes them, so a killed N=60,000 run loses at most one epoch; the
  directory is removed once the run's rows are written (a run killed in its
  test passes is tested again on rerun, not retrained), or, if a kill came
  between the two, by the next sweep that finds the rows. Each run is claimed
  in ``log`` (``ResultLog.claim``) while it trains, so several sweeps started
  on the same CSV and grid share the runs out instead of training any twice; a
  sweep killed mid-run leaves its claim to be taken over by the next one
  started on this host.

  ``cloud`` is the CloudCNN, or its payloads by m (all of ``spec.shared``;
  cloud_model.load_payloads): EdgeCNN1 needs only those, and the update
  phases' labels then come from ``labeler``'s cache.

  Returns:
    The number of runs trained (not skipped).
  """
  if not spec.num_images:
    raise ValueError("`num_images` must list at least one N.")
  for m in spec.shared:
    models._check_num_shared(m)
  n_initial = min(spec.num_images)
  payloads, cloud_hash = sweep_payloads(cloud, spec.shared)
  trained = skipped = 0
  runs = list(sweep_runs(dataset.info.name, spec))
  start = time.perf_counter()
  current = None  # (seed, N) whose split and update-phase labels are held

  def run_checkpoint(key) -> str | None:
    if checkpoint_root is None or key["num_images"] < checkpoint_min_images:
      return None
    return str(pathlib.Path(checkpoint_root) / (
        f"{dataset.info.name}-{spec.preset}-"
        f"{model_label(key['pretrained'], key['num_shared'])}"
        f"-N{key['num_images']}-seed{key['seed']}-{key['labels']}"
        # e.g. -head_pool_paper-shared_trained
        + "".join(f"-{part.replace('=', '_')}"
                  for part in filter(None, spec.condition.split(";")))
        + f"-{cloud_hash[:12]}"))

  for i, (seed, n, m, pretrained, key) in enumerate(runs):
    if log.done(key):
      skipped += 1
      left_over = run_checkpoint(key)
      if left_over and os.path.isdir(left_over):
        # Killed after its rows were written, before it removed this.
        logger.info("%s N=%d seed=%d: its rows are in the CSV; removing the "
                    "checkpoint left at %s", model_label(pretrained, m), n,
                    seed, left_over)
        train_lib.discard_checkpoint(left_over)
      continue
    if not log.claim(key):
      # Another sweep on this CSV finished the run or is running it.
      holder = log.claimed_by(key)
      logger.info("%s N=%d seed=%d: %s; skipping it",
                  model_label(pretrained, m), n, seed,
                  "finished by another sweep" if log.done(key) else
                  f"another sweep holds it ({log.claim_path(key)}: "
                  f"{holder or 'holder unknown'})")
      skipped += 1
      continue
    try:
      if current != (seed, n):
        current = (seed, n)
        initial = sweep_split(spec, dataset.y_train, n_initial, seed)
        split = sweep_split(spec, dataset.y_train, n, seed)
        phase_labels = None
      label_source = key["labels"]
      extra = []
      train_labels = None
      if label_source != "true":
        if phase_labels is None:
          phase_labels = update_phase_labels(dataset, split, initial,
                                             spec.labels, labeler)
        train_labels, n_up, n_wrong = phase_labels
        extra = [("uploaded_images", n_up, "images"),
                 ("wrong_cloud_labels", n_wrong, "images")]
      keras.backend.clear_session()
      keras.utils.set_random_seed(seed)
      edge = models.build_edge_cnn_from_payload(
          payloads[m], pretrained=pretrained,
          kernel_initializer=spec.kernel_initializer, seed=seed,
          head_pool=spec.head_pool,
          train_shared=spec.train_shared)  # EdgeCNN1 only (__post_init__)
      name = f"{model_label(pretrained, m)} N={n} seed={seed}"
      checkpoint_dir = run_checkpoint(key)
      logger.info("training %s (%s labels)", name, label_source)
      result = train_lib.train_and_evaluate(
          edge, dataset, split, config, seed=seed,
          train_labels=train_labels, label=name, trunk_cache=trunk_cache,
          checkpoint_dir=checkpoint_dir, keep_checkpoint=True,
          tensorboard_dir=(os.path.join(tensorboard_dir, name.replace(
              " ", "_")) if tensorboard_dir else None))
      log.append(key, train_metrics(result) + extra)
      if checkpoint_dir:  # only now: the rows hold what it was kept for
        train_lib.discard_checkpoint(checkpoint_dir)
      logger.info("%s: test 10-crop %.4f centre %.4f, %d epochs, %.0f s, %s",
                  name, result.test_accuracy_10crop,
                  result.test_accuracy_center, result.epochs,
                  result.wall_time_s, result.stop_reason)
    finally:
      log.release(key)
    trained += 1
    # Later runs already in the CSV (as far as this sweep has read it) will
    # be skipped, so they are not left.
    left = sum(not log.done(k) for *_, k in runs[i + 1:])
    pace = (time.perf_counter() - start) / trained
    logger.info("sweep: %d of %d runs done (%d of them skipped: done "
                "before or by another sweep), %d left, ~%.0f min at this "
                "run's mean pace (larger N take longer)", trained + skipped,
                len(runs), skipped, left, left * pace / 60)
  return trained


def inference_time(named_models: Sequence[tuple[str, keras.Model]],
                   images: np.ndarray, *, repeats: int = 5, warmup: int = 1,
                   batch_size: int = 256) -> dict[str, eval_lib.Timing]:
  """Times classifying ``images`` (centre crop) with each model, side by side.

  Models are timed in an interleaved order per repeat so that drift in the
  machine's load affects all of them alike.
  """
  prepared = {}
  for name, model in named_models:
    crop = model.input_shape[1]
    prepared[name] = data_lib.center_crop(data_lib.preprocess(images), crop)
  samples: dict[str, list[float]] = {name: [] for name, _ in named_models}
  for name, model in named_models:
    for _ in range(warmup):
      model.predict(prepared[name], batch_size=batch_size, verbose=0)
  for _ in range(repeats):
    for name, model in named_models:
      t = eval_lib.time_call(lambda: model.predict(
          prepared[name], batch_size=batch_size, verbose=0),
          repeats=1, warmup=0)
      samples[name].extend(t.samples)
  return {name: eval_lib.Timing(tuple(s)) for name, s in samples.items()}


def grid(values: Iterable[str | int]) -> tuple[int, ...]:
  """Parses a list of N values; 'paper:<dataset>' expands to the paper's."""
  out: list[int] = []
  for v in values:
    if isinstance(v, str) and v.startswith("paper:"):
      name = v.split(":", 1)[1]
      if name not in PAPER_GRIDS:
        raise ValueError(f"No paper grid for {name!r}; known: "
                         f"{sorted(PAPER_GRIDS)}")
      out.extend(PAPER_GRIDS[name])
    else:
      try:
        out.append(int(v))
      except ValueError:
        raise ValueError(f"Not a number of images: {v!r}") from None
  return tuple(dict.fromkeys(out))
