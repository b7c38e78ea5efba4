r"""EdgeCNN0-m vs EdgeCNN1-m accuracy over N and seeds (Tables 2-3, Figs. 7-9).

Needs a CloudCNN from train_cloud. Appends one row per measured value to
results/edge_accuracy.csv; rows already there are skipped, so rerunning the
same command resumes a killed sweep. The N values run in the order given:
put the most informative first. Several copies of one command (or of
overlapping grids) may run at once on the same CSV: each run is claimed while
it trains (a file in <csv>.claims/), so they share the grid out.

  python -m experiments.edge_accuracy --dataset=fashion_mnist --preset=compact \
      --num_images=120,1200,240,600 --seeds=0,1,2
"""

from __future__ import annotations

import dataclasses
import pathlib

from absl import app
from absl import flags
from absl import logging
import pandas as pd

from experiments import cli
from experiments import common
from edgecnn import config as config_lib

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
eval_lib = cli.lazy_import("edgecnn.evaluate")
results = cli.lazy_import("edgecnn.results")
sweeps = cli.lazy_import("edgecnn.sweeps")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("data", "cloud", "training", "results",
                         "kernel_initializer", "tensorboard_dir")

NUM_IMAGES = flags.DEFINE_list(
    "num_images", ["paper"], "Values of N, in run order; 'paper' is the "
    "paper's grid for --dataset. The smallest N is the initialisation phase "
    "(true labels only), so N=5000 alone is another run than N=5000 in "
    "100,500,1000,5000 (an update phase); to fill in one N of a grid, give "
    "the whole list: finished runs are skipped.")
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
SHARED = flags.DEFINE_list("shared", ["3", "5", "10"], "Values of m.")
LABELS = flags.DEFINE_enum(
    "labels", "cloud", list(config_lib.LABEL_SOURCES),
    "Labels of the update-phase images: CloudCNN's predictions, or the "
    "ground truth (the paper's assumption that CloudCNN is always right).")
MODELS = flags.DEFINE_enum("models", "both", ["both", "edgecnn1", "edgecnn0"],
                           "Which models to train.")
CLOUD_LABEL_MODE = flags.DEFINE_enum(
    "cloud_label_mode", "ten_crop", ["ten_crop", "center"],
    "How CloudCNN predicts labels for uploaded images.")
HEAD_POOL = flags.DEFINE_enum(
    "head_pool", "cloud", ["cloud", "paper", "compact"],
    "Pool of the edge's fresh head: the cloud's (Alg. 1, default), or the "
    "paper's (stride 1, 'valid') or compact preset's (stride 2, 'same') "
    "whatever the cloud's preset; an ablation of the head's size, recorded "
    "as condition head_pool=<value>. Use with --results_csv to keep "
    "ablations apart.")
TRAIN_SHARED = flags.DEFINE_bool(
    "train_shared", False, "EdgeCNN1's m shared layers start at the "
    "CloudCNN's weights and train with the head (fine-tuning, at the same "
    "schedule) instead of staying frozen as Alg. 1 and 2 have them: an "
    "ablation of the freezing, recorded as condition shared=trained. "
    "Needs --models=edgecnn1 (EdgeCNN0 trains every layer anyway). Use "
    "with --results_csv to keep ablations apart.")
SUBSET = flags.DEFINE_enum(
    "subset", "random", list(config_lib.SUBSETS),
    "How a seed's N images are chosen. 'random' (default): a seeded random "
    "permutation of the training set, whose first N are taken. 'balanced': "
    "the initialisation phase's images (the smallest N) take the classes in "
    "turn (12 of each of 10 classes at N=120, less the 9:1 split's "
    "validation images), the update phases' uploads stay random. The paper "
    "does not say how it chose its images; an ablation, recorded as "
    "condition subset=balanced. Use with --results_csv to keep ablations "
    "apart.")
TRUNK_CACHE_GB = flags.DEFINE_float(
    "trunk_cache_gb", 5.0, "Memory (GiB) for the test-crop features of "
    "EdgeCNN1's frozen layers, computed once per m and reused by every "
    "later EdgeCNN1-m of the sweep (the same operations on the same values; the 10-crop test "
    "pass is most of a small-N run). m=3,5,10 of the compact preset need "
    "2.9 GiB on Fashion-MNIST, 1.6 on MNIST (5 crops), 4.1 on CIFAR-10. "
    "Trunks whose features do not fit are evaluated whole; 0 turns the cache "
    "off.")
CHECKPOINT_MIN_IMAGES = flags.DEFINE_integer(
    "checkpoint_min_images", 10_000, "Runs with at least this many images "
    "(N=60,000, CIFAR-10's 50,000) checkpoint every epoch under "
    "<workdir>/sweep_checkpoints/ and resume from there when the command is "
    "rerun, so a killed long run loses at most one epoch and then trains as "
    "if never killed (the same batches and dropout masks). 0 turns it off.",
    lower_bound=0)
TEST_BOTH_WEIGHTS = flags.DEFINE_bool(
    "test_both_weights", True, "Test both the best validation epoch's "
    "weights and the last epoch's, as rows best_epoch_test_accuracy_* and "
    "last_epoch_test_accuracy_*, beside test_accuracy_* (the weights "
    "--restore_best picks). One more test pass per run; the training is "
    "the same.")
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the sweep's runs, which are already in the CSV "
    "(and which another sweep is training now, marked *) "
    "and an estimate of the time the rest take (the median wall time of the "
    "same model and N in the CSV, any seed, or, marked ~, of the same run on "
    "a dataset of the same image shape and size: MNIST for Fashion-MNIST "
    "and back, and then in <experiment>.csv beside the CSV, the main grid's, "
    "when --results_csv names another one; last, for --head_pool or "
    "--train_shared runs none of those has, the same run's time without "
    "them, a rough guide), then exit without loading data or training.")
LABEL_ONLY = flags.DEFINE_bool(
    "label_only", False, "Have CloudCNN label every image the sweep's update "
    "phases upload (all --seeds and --num_images), save the labels in the "
    "cloud directory's cache (train_labels_<mode>.npz) and exit without "
    "training. A copy of the directory without cloud.weights.h5 and "
    "saved_model/ (a few MB: payloads, build.json, dataset.json, "
    "train_result.json and the cache) then runs the sweep, for instance in "
    "a later checkout where the 1 GB paper-preset CloudCNN is not kept. "
    "Refused with --labels=oracle, which needs no cloud labels.")
EXPERIMENT = flags.DEFINE_string(
    "experiment", "edge_accuracy", "Experiment name in the rows and default "
    "CSV name (training_time reuses this binary's library).")


def sweep_spec(name: str) -> sweeps.SweepSpec:
  num_images = sweeps.grid(
      [f"paper:{name}" if v == "paper" else v for v in NUM_IMAGES.value])
  return sweeps.SweepSpec(
      preset=common.PRESET.value, num_images=num_images,
      seeds=tuple(int(s) for s in SEEDS.value),
      shared=tuple(int(m) for m in SHARED.value), labels=LABELS.value,
      models={"both": (True, False), "edgecnn1": (True,),
              "edgecnn0": (False,)}[MODELS.value],
      kernel_initializer=common.INITIALIZER.value,
      head_pool=None if HEAD_POOL.value == "cloud" else HEAD_POOL.value,
      train_shared=TRAIN_SHARED.value, subset=SUBSET.value)


def print_plan(name: str, experiment: str) -> pd.DataFrame:
  """--dry_run: the sweep's runs, done or to do, and the time left."""
  log = common.result_log(experiment)
  # An ablation's own CSV starts empty; the main grid's times, for the same
  # model and N, still estimate its runs.
  main_csv = log.path.with_name(f"{experiment}.csv")
  others = ([results.ResultLog(main_csv, {})] if main_csv.exists()
            and main_csv.resolve() != log.path.resolve() else [])
  spec = sweep_spec(name)
  plan = sweeps.plan_sweep(name, spec, log, others)
  clash = sweeps.initialisation_clashes(name, spec, log)
  if clash:
    print(f"Note: {clash}")
  todo = plan[~plan["done"]]
  print(f"{log.path}: {len(plan)} runs in this sweep, {int(plan['done'].sum())} "
        f"already there, {len(todo)} to run.")
  if len(todo):
    todo = todo.assign(model=todo["model"].where(~todo["running"],
                                                 todo["model"] + "*"))
    borrowed = todo["est_from"].ne(name) & todo["est_s"].notna()
    todo = todo.assign(borrowed=borrowed)
    groups = todo.groupby(["seed", "num_images"], sort=False)
    shown = groups.agg(
        runs=("model", lambda m: " ".join(m)),
        est_min=("est_s", lambda e: e.sum(min_count=len(e)) / 60),
        borrowed=("borrowed", "any"))
    shown["est_min"] = [
        "?" if pd.isna(e) else ("~" if b else "") + f"{e:.1f}"
        for e, b in zip(shown["est_min"], shown["borrowed"])]
    print(shown.drop(columns="borrowed").reset_index().to_string(index=False))
    known = todo["est_s"].dropna()
    print(f"Estimated {known.sum() / 3600:.1f} h of training for the "
          f"{len(known)} runs whose model and N have run before (median wall "
          "time to the stop, any seed; the test passes add seconds to "
          "minutes per run)"
          + (f"; {len(todo) - len(known)} runs have no estimate."
             if len(known) < len(todo) else "."))
    if borrowed.any():
      sources = ", ".join(sorted(set(todo.loc[borrowed, "est_from"])))
      print(f"~: {int(borrowed.sum())} runs have no time of their own for "
            f"{name} in {log.path.name}; their estimate is the same run's "
            f"time on {sources} (a dataset of the same image shape and "
            "number of training images, or another CSV; \"without\" names "
            "the condition the estimate's run did not have, so it is a "
            "rough guide only).")
    if todo["running"].any():
      held = int(todo["running"].sum())
      print(f"*: {held} runs are being trained by another sweep now (claims "
            f"in {log.claims_dir}); this sweep would skip them.")
  return plan


def run(experiment: str) -> int:
  dataset = common.load_dataset()
  name = dataset.info.name
  directory = common.cloud_directory(name)
  spec = sweep_spec(name)
  cache = directory / f"train_labels_{CLOUD_LABEL_MODE.value}.npz"
  if cloud_model.has_weights(directory) or LABEL_ONLY.value:
    cloud = cloud_model.load_cloud(directory)
    labeler = sweeps.CloudLabeler(cloud, dataset, mode=CLOUD_LABEL_MODE.value,
                                  cache=cache)
  else:
    # A directory copied without the weights: EdgeCNN1 from its payloads,
    # update-phase labels from its cache (checked before any training).
    cloud = cloud_model.load_payloads(directory, spec.shared)
    labeler = sweeps.CloudLabeler(None, dataset, mode=CLOUD_LABEL_MODE.value,
                                  cache=cache)
    if spec.labels == "cloud" and True in spec.models:
      wanted = sweeps.grid_uploads(dataset.y_train, spec)
      missing = len(labeler.unlabelled(wanted))
      if missing:
        raise sweeps.MissingCloudLabels(
            f"{directory} holds no CloudCNN weights ({cloud_model.WEIGHTS}), "
            f"and its label cache {cache.name} lacks {missing} of the "
            f"{len(wanted)} labels this sweep's update phases need. Run "
            "this command with --label_only where the weights are, or use "
            "--labels=oracle.")
    logging.info("%s holds no CloudCNN weights: EdgeCNN1 from its payloads "
                 "(m=%s), update-phase labels from %s.", directory,
                 list(spec.shared), cache.name)
  if LABEL_ONLY.value:
    wanted, new = sweeps.label_grid(dataset, spec, labeler)
    print(f"{cache}: the sweep's update phases upload {wanted} images; "
          f"{new} newly labelled by CloudCNN, {wanted - new} were cached.")
    return 0
  log = common.result_log(experiment)
  # Exported (and the CloudCNN hashed) once: the sweep takes the payloads.
  payloads, cloud_hash = sweeps.sweep_payloads(cloud, spec.shared)
  teacher = {"cloud_hash": cloud_hash}
  common.refuse_mixed_history(log, f"{name}-{spec.preset}",
                              also=("kernel_initializer", "cloud_label_mode"),
                              facts=teacher)
  common.save_flags(log, f"{name}-{spec.preset}", facts=teacher)
  clash = sweeps.initialisation_clashes(name, spec, log)
  if clash:
    logging.warning("%s", clash)
  config = dataclasses.replace(common.train_config(),
                               test_both_weights=TEST_BOTH_WEIGHTS.value)
  return sweeps.edge_accuracy_sweep(
      dataset, payloads, spec, config, log, labeler=labeler,
      tensorboard_dir=common.TENSORBOARD_DIR.value,
      trunk_cache=(eval_lib.TrunkCache(int(TRUNK_CACHE_GB.value * 2**30))
                   if TRUNK_CACHE_GB.value != 0 else None),
      checkpoint_root=(pathlib.Path(common.WORKDIR.value) / "sweep_checkpoints"
                       if CHECKPOINT_MIN_IMAGES.value else None),
      checkpoint_min_images=CHECKPOINT_MIN_IMAGES.value)


def dispatch(experiment: str) -> None:
  """What this binary does once its flags are parsed, as ``experiment``.

  --dry_run plans, --label_only labels, otherwise the sweep runs.
  training_time calls this too, so every flag it borrows from this binary
  means there what it means here (its --dry_run once trained instead).
  """
  if LABEL_ONLY.value and LABELS.value == "oracle":
    raise app.UsageError(
        "--label_only with --labels=oracle: an oracle sweep trains on the "
        "true labels and needs no cloud labels. Drop --labels=oracle to "
        "label the uploads of the same grid for a --labels=cloud sweep.")
  if TRAIN_SHARED.value and MODELS.value != "edgecnn1":
    raise app.UsageError(
        f"--train_shared with --models={MODELS.value}: it is an ablation of "
        "EdgeCNN1's frozen layers, and EdgeCNN0 trains every layer already "
        "(its runs are the plain grid's). Add --models=edgecnn1.")
  if DRY_RUN.value:
    print_plan(common.DATASET.value, experiment)
    return
  run(experiment)


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dispatch(EXPERIMENT.value)


if __name__ == "__main__":
  cli.run(main)
