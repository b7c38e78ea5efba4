"""Flags and helpers shared by the experiment binaries.

Flags are defined here once and read only in the binaries' ``main``; the
library in edgecnn/ never sees them (STYLE: libraries never read flags).
"""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import shlex
import socket
import sys

from absl import app
from absl import flags

from experiments import cli
from edgecnn import config as config_lib
from edgecnn import results

# The library loads on first use, so --help needs no TensorFlow.
data_lib = cli.lazy_import("edgecnn.data")
eval_lib = cli.lazy_import("edgecnn.evaluate")
models = cli.lazy_import("edgecnn.models")

# Keras dtype policies the binaries offer (train_cloud --precision,
# throughput --precisions); float32 is every binary's default.
PRECISION_POLICIES = ("float32", "mixed_bfloat16")

DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", sorted(config_lib.DATASETS),
                            "Dataset to use.")
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Directory with the datasets' original files; defaults "
    f"to ${config_lib.DATA_DIR_ENV}, then Debian's path, then tfds.")
PRESET = flags.DEFINE_enum("preset", "compact", list(config_lib.PRESETS),
                           "CloudCNN architecture preset (see edgecnn/models.py).")
TRAIN_CONFIG = flags.DEFINE_enum(
    "train_config", "paper", sorted(config_lib.CONFIGS),
    "Named training schedule: paper (Sec. 4.3.1), robust (adds warm-up, "
    "clipping, dead-run restarts) or quick (2 epochs, for smoke tests).")
MAX_EPOCHS = flags.DEFINE_integer(
    "max_epochs", None, "Cap on epochs (the paper has none); overrides the "
    "named config.")
LR_PATIENCE = flags.DEFINE_integer(
    "lr_patience", None, "Epochs without validation improvement before each "
    "/10 learning-rate cut (the paper does not say; the named configs use "
    "10, Keras' ReduceLROnPlateau default); overrides the named config.",
    lower_bound=1)
AUGMENT = flags.DEFINE_bool(
    "augment", None, "Train on random crops (and mirrors where the dataset "
    "allows them), the named configs' default, which 10-crop testing "
    "implies; --noaugment trains on centre crops (an ablation); overrides "
    "the named config.")
FLIP = flags.DEFINE_bool(
    "flip", None, "With random crops, also mirror at random where the "
    "dataset allows it (Fashion-MNIST, CIFAR-10; never MNIST), the named "
    "configs' default; --noflip trains on random crops without mirrors (an "
    "ablation; testing keeps the 10 crops with their mirrors). Overrides "
    "the named config.")
TIE_BREAK_LOSS = flags.DEFINE_bool(
    "tie_break_loss", None, "Count an equal validation accuracy with a lower "
    "validation loss as an improvement (the named configs' default: tiny "
    "validation sets tie constantly); --notie_break_loss counts accuracy "
    "alone. Overrides the named config.")
RESTORE_BEST = flags.DEFINE_bool(
    "restore_best", None, "Test and keep the weights of the epoch with the "
    "best validation accuracy; --norestore_best (the named configs' default "
    "since session 7: the paper's stop rule keeps the last model) tests the "
    "last epoch's. Overrides the named config.")
CROP_SIZE = flags.DEFINE_integer(
    "crop_size", None, "Crop side for training and 10-crop testing; default "
    "24 for 28x28 datasets and 28 for CIFAR-10.")
INITIALIZER = flags.DEFINE_enum("kernel_initializer", "he_normal",
                                list(config_lib.INITIALIZERS),
                                "Initialiser of the ReLU layers.")
WORKDIR = flags.DEFINE_string(
    "workdir", "workdir", "Where trained models and payloads are kept.")
RESULTS_CSV = flags.DEFINE_string(
    "results_csv", None, "Long-format CSV the rows are appended to; defaults "
    "to results/<experiment>.csv.")
TENSORBOARD_DIR = flags.DEFINE_string(
    "tensorboard_dir", None, "If set, write TensorBoard logs there.")
USE_TFDS = flags.DEFINE_bool(
    "use_tfds", True, "Fall back to tensorflow-datasets (needs internet).")


def reject_args(argv: list[str]) -> None:
  """Refuses stray arguments, and shared flags this binary does not read.

  Every binary accepts every flag defined here, but reads only the groups it
  declares key (FLAG_GROUPS); one it does not read would be ignored without
  a word (throughput --preset=paper would time its --presets all the same).
  """
  if len(argv) > 1:
    raise SystemExit(f"Unexpected arguments: {argv[1:]}; all options are "
                     "--flags (see --help).")
  read = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(sys.argv[0])}
  unread = sorted(flag.name for flag in flags.FLAGS.get_flags_for_module(__name__)
                  if flag.present and flag.name not in read)
  if unread:
    binary = _binary().rpartition(".")[2]
    raise app.UsageError(
        f"{binary} does not read {', '.join('--' + n for n in unread)}: it "
        f"would be ignored. Drop it; {binary} --help lists the flags it "
        "reads.")


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("edgecnn").setLevel(logging.INFO)


# TrainConfig fields a flag overrides (train_config, schedule_condition).
_FLAG_OF_FIELD = {"max_epochs": MAX_EPOCHS, "lr_patience": LR_PATIENCE,
                  "augment": AUGMENT, "flip": FLIP,
                  "tie_break_loss": TIE_BREAK_LOSS,
                  "restore_best": RESTORE_BEST, "crop_size": CROP_SIZE}


# Fields whose flag came after rows were already being written: a saved
# flags record without one ran under the named config's value (before
# session 57 every run mirrored where its dataset allows).
_FIELDS_NEWER_THAN_HISTORY = frozenset({"flip"})


def train_config() -> config_lib.TrainConfig:
  """The named config with every schedule flag that was set applied.

  Raises:
    app.UsageError: for flags that contradict each other or --dataset.
  """
  overrides = {field: flag.value for field, flag in _FLAG_OF_FIELD.items()
               if flag.value is not None}
  if overrides.get("flip") is False:
    if overrides.get("augment") is False:
      raise app.UsageError("--noflip changes nothing with --noaugment, which "
                           "trains on centre crops and never mirrors; drop "
                           "one of them.")
    if not config_lib.DATASETS[DATASET.value].flip:
      raise app.UsageError(f"--noflip changes nothing on --dataset="
                           f"{DATASET.value}, which is never mirrored (a "
                           "mirror changes its classes); drop it.")
  return config_lib.get_config(TRAIN_CONFIG.value, **overrides)


def schedule_condition() -> list[str]:
  """The run's schedule where it is not the paper's, as condition parts.

  The named config if not ``paper``, then each schedule flag whose value
  differs from that config's (``max_epochs=30``), so a row says how it was
  trained without its flags file (which the next run of the same name
  overwrites).
  """
  named = config_lib.get_config(TRAIN_CONFIG.value)
  config = train_config()
  parts = [f"train_config={TRAIN_CONFIG.value}"] * (
      TRAIN_CONFIG.value != "paper")
  for field in _FLAG_OF_FIELD:
    if getattr(config, field) != getattr(named, field):
      parts.append(f"{field}={getattr(config, field)}")
  return parts


def _config_of(values: dict) -> config_lib.TrainConfig | None:
  """The training config a saved flags record ran under; None if the record
  predates a flag it needs (but those of _FIELDS_NEWER_THAN_HISTORY, which
  take the named config's value) or names a config that no longer exists."""
  try:
    overrides = {field: values.get(field) if field in
                 _FIELDS_NEWER_THAN_HISTORY else values[field]
                 for field in _FLAG_OF_FIELD}
    overrides = {f: v for f, v in overrides.items() if v is not None}
    return config_lib.get_config(values["train_config"], **overrides)
  except (KeyError, ValueError, TypeError):
    return None


def refuse_mixed_history(log: results.ResultLog, name: str, *,
                         also: tuple[str, ...] = (),
                         facts: dict[str, str] | None = None) -> None:
  """Refuses a sweep whose rows would mix with rows of another setting.

  Edge sweeps' rows do not carry their schedule or teacher in their key
  (train_cloud's carry the schedule, as condition): a robust run appended
  to the paper grid's CSV, or a sweep on a retrained CloudCNN, would look
  like the rows already there, and its key would count their runs as done.
  So the CSV's history (save_flags) is read: an earlier command of the same
  ``name`` (dataset-preset) under a different training config, with a
  different value of a flag in ``also``, or with different ``facts`` (what
  save_flags recorded beside the flags, such as the CloudCNN's content
  hash) refuses this one. Records older than a flag or fact are not
  compared on it.

  Raises:
    cli.UserError: naming what differs and the earlier command.
  """
  facts = facts or {}
  here = {flag: flags.FLAGS[flag].value for flag in also}
  here_config = train_config()
  history = results.read_invocations(results.invocations_path(log.path))
  for record in history:
    values = record.get("flags", {})
    if record.get("name") != name:
      continue
    there = _config_of(values)
    differ = [f"train_config={values['train_config']} there, "
              f"{TRAIN_CONFIG.value} here"] * (
                  values.get("train_config", TRAIN_CONFIG.value)
                  != TRAIN_CONFIG.value)
    differ += [f"{field}={getattr(there, field)!r} there, "
               f"{getattr(here_config, field)!r} here"
               for field in config_lib.TrainConfig.__dataclass_fields__
               if there is not None
               and getattr(there, field) != getattr(here_config, field)]
    differ += [f"--{flag}={values[flag]} there, {here[flag]} here"
               for flag in also
               if flag in values and values[flag] != here[flag]]
    differ += [f"{key}={record[key]} there, {value} here"
               for key, value in facts.items()
               if key in record and record[key] != value]
    if differ:
      raise cli.UserError(
          f"{log.path} holds rows of {name} from a command with another "
          f"setting ({'; '.join(differ)}): `{record.get('command', '?')}` "
          f"(started {record.get('started', '?')}). This binary's rows do not "
          "record it, so the two would mix and this run would take the "
          "other's rows for done. Give this run a CSV of its own "
          "(--results_csv=results/ablation_<what>.csv).")


def load_dataset() -> data_lib.Dataset:
  return data_lib.load_dataset(DATASET.value, DATA_DIR.value,
                               use_tfds=USE_TFDS.value)


def result_log(experiment: str) -> results.ResultLog:
  path = RESULTS_CSV.value or os.path.join("results", f"{experiment}.csv")
  device, threads = eval_lib.device_description()
  return results.ResultLog(path, {
      "experiment": experiment, "device": device, "threads": threads,
      "commit": results.git_commit(pathlib.Path(__file__).parent)})


def _is_project_module(module: str) -> bool:
  here = pathlib.Path(__file__).resolve().parent
  if module.startswith("experiments.") or module == "__main__":
    return True
  return module.endswith(".py") and pathlib.Path(module).resolve().parent == here


def save_flags(log: results.ResultLog, name: str,
               facts: dict[str, str] | None = None) -> None:
  """Writes the values of the project's flags beside the CSV (simclr's habit).

  Only flags defined in experiments/ (the binary run with ``-m`` registers
  its flags under its file path or ``__main__``); absl's and TensorFlow's own
  flags are left out. ``facts`` (such as the CloudCNN's content hash) go into
  the history record beside them.
  """
  values = {flag.name: flag.value
            for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
            if _is_project_module(module)
            for flag in module_flags}
  results.write_metadata(results.flags_path(log.path, name), values)
  # The flags file holds the latest run of this name only; the history says
  # which command ran when, so every row (its timestamp, its commit) can be
  # traced to the command line that wrote it.
  results.append_invocation(
      results.invocations_path(log.path), {
          "started": datetime.datetime.now(datetime.timezone.utc)
                     .isoformat(timespec="seconds"),
          "name": name, "commit": log.common.get("commit", ""),
          "host": socket.gethostname(), "pid": os.getpid(),
          "machine": eval_lib.machine_description(),
          "command": "python -m " + _binary() + "".join(
              " " + shlex.quote(a) for a in sys.argv[1:]),
          "flags": values, **(facts or {})})


def _binary() -> str:
  """The module this process runs as (experiments.edge_accuracy)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return spec.name
  return os.path.basename(sys.argv[0]) if sys.argv else "?"


CLOUD_DIR = flags.DEFINE_string(
    "cloud_dir", None, "Directory of a trained CloudCNN (from train_cloud); "
    "default: <workdir>/cloud/<dataset>-<preset>-seed<cloud_seed>.")
CLOUD_SEED = flags.DEFINE_integer("cloud_seed", 0,
                                  "Seed of the CloudCNN to load by default.")


def cloud_directory(dataset_name: str) -> pathlib.Path:
  from edgecnn import cloud_model
  if CLOUD_DIR.value:
    return pathlib.Path(CLOUD_DIR.value)
  return cloud_model.cloud_dir(WORKDIR.value, dataset_name, PRESET.value,
                               CLOUD_SEED.value)


def cloud_row_key(directory: str | os.PathLike) -> dict:
  """``preset`` and ``seed`` for the rows that measure the CloudCNN in
  ``directory`` (or EdgeCNNs built from it with no seed of their own).

  They come from the directory's build.json: with --cloud_dir, the defaults of
  --preset and --cloud_seed would label, say, a seed-1 CloudCNN seed 0. A
  --preset or --cloud_seed given on the command line that contradicts the
  directory is refused. A directory without build.json (a copy holding
  payloads and labels only) falls back to the flags.
  """
  from edgecnn import cloud_model
  try:
    args = cloud_model.load_build_args(directory)
  except FileNotFoundError:
    return {"preset": PRESET.value, "seed": CLOUD_SEED.value}
  key = {"preset": args.get("preset", PRESET.value),
         "seed": int(args.get("seed", CLOUD_SEED.value))}
  for holder, field in ((PRESET, "preset"), (CLOUD_SEED, "seed")):
    if holder.present and holder.value != key[field]:
      raise app.UsageError(
          f"--{holder.name}={holder.value} contradicts {directory}, whose "
          f"CloudCNN was built with {field} {key[field]!r}; drop the flag or "
          "pass the directory of the CloudCNN you mean.")
  return key


# The shared flags above by what reads them. absl's --help lists only the
# flags a binary defines and those it declares key (--helpfull lists all, with
# absl's and TensorFlow's own), so each binary declares the groups it reads,
# and reject_args refuses a shared flag outside them that the command sets:
#   common.declare_key_flags("data", "results")
FLAG_GROUPS = {
    "data": ("dataset", "data_dir", "use_tfds"),  # load_dataset
    "cloud": ("cloud_dir", "cloud_seed", "workdir", "preset"),  # cloud_directory
    "training": ("train_config", *_FLAG_OF_FIELD),  # train_config
    "results": ("results_csv",),  # result_log
}


def key_flags(*groups: str) -> list[str]:
  """Names of the shared flags in ``groups`` (FLAG_GROUPS keys or flag names)."""
  names = [name for group in groups
           for name in FLAG_GROUPS.get(group, (group,))]
  unknown = [name for name in names if name not in flags.FLAGS]
  if unknown:
    raise KeyError(f"{unknown} are neither groups of FLAG_GROUPS "
                   f"({', '.join(FLAG_GROUPS)}) nor flags")
  return list(dict.fromkeys(names))


def declare_key_flags(*groups: str) -> None:
  """Declares the shared flags in ``groups`` key flags of the binary that
  calls this (absl attributes them past this module: see the end of it)."""
  for name in key_flags(*groups):
    flags.declare_key_flag(name)


# Every flag of this module is defined above. From here on absl looks past
# this module for the module that declares a key flag, so declare_key_flags
# declares them for its caller, the binary.
flags.disclaim_key_flags()
