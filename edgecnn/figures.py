"""Figures and tables of the paper drawn from edgecnn's result CSVs, with the
paper's own values beside ours. Used by experiments/plot_figures.py and by
the notebooks in notebooks/ (which only call these functions).

Nothing here trains or measures: every point comes from a CSV under a
results directory (the long format of edgecnn.results, and main_job.csv).
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import os
import pathlib
import re

import numpy as np
import pandas as pd

from edgecnn import results

MODEL_COLORS = {3: "tab:blue", 5: "tab:orange", 10: "tab:green"}
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST",
                  "cifar10": "CIFAR-10"}


def paper_values() -> pd.DataFrame:
  """The numbers the paper states (Tables 2-3 and the text), as a frame."""
  with importlib.resources.files("edgecnn").joinpath(
      "paper_values.csv").open() as f:
    return pd.read_csv(f, keep_default_na=False)


def paper_value(paper: pd.DataFrame, metric: str, dataset: str, model: str,
                n: int | None = None) -> float | None:
  """One number of ``paper_values()`` (at N=``n`` if given), or None if the
  paper does not state it."""
  row = paper[(paper.metric == metric) & (paper.dataset == dataset)
              & (paper.model == model)]
  if n is not None:
    row = row[row.num_images.astype(str) == str(n)]
  return float(row.value.iloc[0]) if not row.empty else None


# The CSVs the figures and tables read, each results_dir/<name>.csv.
RESULT_CSVS = ("edge_accuracy", "training_time", "inference_time",
               "response_time", "main_job")


def missing_results(results_dir: str | os.PathLike) -> str | None:
  """Why results_dir holds nothing to draw, or None if it holds a result CSV.

  Every figure also draws the paper's values, so a mistyped directory would
  otherwise give figures and tables with the paper's side only.
  """
  path = pathlib.Path(results_dir)
  if not path.is_dir():
    return f"{str(path)!r} is not a directory"
  if not any((path / f"{name}.csv").is_file() for name in RESULT_CSVS):
    return (f"{str(path)!r} holds none of the result CSVs the figures read "
            f"({', '.join(n + '.csv' for n in RESULT_CSVS)})")
  return None


def load(results_dir: str | os.PathLike, name: str) -> pd.DataFrame | None:
  """results_dir/<name>.csv with numeric values, or None if absent."""
  path = pathlib.Path(results_dir) / f"{name}.csv"
  if not path.exists():
    return None
  frame = pd.read_csv(path, keep_default_na=False,
                      dtype={c: str for c in results.TEXT_COLUMNS})
  if "value" in frame:
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
  for col in ("num_images", "num_shared", "seed"):
    if col in frame:
      frame[col] = pd.to_numeric(frame[col], errors="coerce")
  return frame


def accuracy_summary(edge: pd.DataFrame, dataset: str,
                     metric: str = "test_accuracy_10crop",
                     preset: str | None = "compact",
                     condition: str = "") -> pd.DataFrame:
  """Mean, std and count over seeds per (model, N) for one dataset.

  Rows with a condition (an ablation such as ``head_pool=paper``) are left
  out: the tables compare the plain recipe with the paper (``condition``
  names the one ablation to summarise instead). Only rows of
  ``preset`` are summarised (None: every preset together), so the paper
  preset's few rows never average into the compact preset's. Where an
  EdgeCNN1 has update-phase runs at an N (CloudCNN's or oracle labels for
  the uploads), its runs on true labels alone at that N (a sweep that
  started there) are another experiment and are left out too.
  """
  rows = _plain(edge[(edge.dataset == dataset) & (edge.metric == metric)],
                preset, condition)
  if "labels" in rows and len(rows):
    labels = rows["labels"].astype(str).str.lower()
    updated = rows[labels != "true"].groupby(["model", "num_images"]).size()
    cell = pd.MultiIndex.from_frame(rows[["model", "num_images"]])
    rows = rows[~((labels == "true").to_numpy() & cell.isin(updated.index))]
  if rows.empty:
    return pd.DataFrame(columns=["model", "num_shared", "pretrained",
                                 "num_images", "mean", "std", "n"])
  grouped = rows.groupby(["model", "num_shared", "pretrained", "num_images"])
  out = grouped["value"].agg(["mean", "std", "count"]).reset_index()
  return out.rename(columns={"count": "n"})


def _plt():
  import sys
  import matplotlib
  if "ipykernel" not in sys.modules:  # notebooks keep their inline backend
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_accuracy(results_dir, dataset: str, path=None, *,
                  preset: str = "compact"):
  """Accuracy vs number of training images, EdgeCNN0/1-m with the paper's
  points (Tables 2-3, Figs. 7-9). One panel per m; error bars: std over
  seeds; our rows of one preset."""
  plt = _plt()
  edge = load(results_dir, "edge_accuracy")
  paper = _paper_accuracy(dataset)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
  summary = (accuracy_summary(edge, dataset, preset=preset)
             if edge is not None else None)
  for ax, m in zip(axes, (3, 5, 10)):
    for pretrained, style in ((True, "-"), (False, "--")):
      label = f"EdgeCNN{int(pretrained)}-{m}"
      if summary is not None:
        ours = summary[summary.model == label].sort_values("num_images")
        if not ours.empty:
          ax.errorbar(ours.num_images, 100 * ours["mean"],
                      yerr=100 * ours["std"].fillna(0), fmt="o" + style,
                      color=MODEL_COLORS[m] if pretrained else "gray",
                      capsize=3, label=f"{label} (ours, n={int(ours.n.max())})")
      theirs = paper[paper.model == label].astype({"num_images": int})
      theirs = theirs.sort_values("num_images")
      if not theirs.empty:
        ax.plot(theirs.num_images, 100 * theirs.value.astype(float),
                "x" + style, color=MODEL_COLORS[m] if pretrained else "black",
                alpha=0.6, label=f"{label} (paper)")
    cloud = paper[paper.model == "CloudCNN"]
    if not cloud.empty:
      ax.axhline(100 * float(cloud.value.iloc[0]), color="purple", lw=0.8,
                 ls=":", label="CloudCNN (paper)")
    ax.set_xscale("log")
    ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}: m = {m}")
    ax.set_xlabel("number of training images N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("top-1 test accuracy, 10-crop (%)")
  fig.tight_layout()
  return _save(fig, path)


def _model_order(name: str) -> tuple:
  """EdgeCNN1-3, EdgeCNN0-3, EdgeCNN1-5, ..., CloudCNN."""
  if not name.startswith("EdgeCNN"):
    return (1, 0, 0)
  kind, m = name[len("EdgeCNN"):].split("-")
  return (0, int(m), -int(kind))


def plot_training_time(results_dir, path=None):
  """Training time to the stopping rule, EdgeCNN0-m vs EdgeCNN1-m (Fig. 10)."""
  plt = _plt()
  frame = load(results_dir, "training_time")
  if frame is None or frame.empty:
    fig, ax = plt.subplots(figsize=(8, 4))
    return _empty(fig, ax, "no training_time.csv yet", path)
  rows = frame[frame.metric == "wall_time"]
  if "preset" not in rows:
    rows = rows.assign(preset="compact")
  stats = rows.groupby(["dataset", "preset", "model"])["value"].agg(
      ["median", "min", "max"]).reset_index()
  stats = stats.iloc[sorted(range(len(stats)), key=lambda i: (
      stats.dataset.iloc[i], stats.preset.iloc[i],
      _model_order(stats.model.iloc[i])))]
  labels = [f"{DATASET_TITLES.get(d, d)}"
            f"{'' if p == 'compact' else f' ({p})'} {m}"
            for d, p, m in zip(stats.dataset, stats.preset, stats.model)]
  # One bar per model and dataset: widen with the bars, slant the labels.
  fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(stats)), 5))
  colors = ["tab:blue" if m.startswith("EdgeCNN1") else "gray"
            for m in stats.model]
  ax.bar(range(len(stats)), stats["median"], color=colors,
         yerr=[stats["median"] - stats["min"], stats["max"] - stats["median"]],
         capsize=3)
  ax.set_xticks(range(len(stats)), labels, fontsize=7, rotation=45,
                ha="right")
  if stats["median"].min() > 0 and stats["max"].max() > 20 * stats[
      "median"].min():
    ax.set_yscale("log")  # a run that went on for hundreds of epochs
  ax.set_ylabel("training time to the stopping rule (s)")
  ax.set_title("Fig. 10: training time, EdgeCNN1 (blue) vs EdgeCNN0 (grey); "
               "median and range over seeds")
  fig.tight_layout()
  return _save(fig, path)


def plot_inference_time(results_dir, path=None):
  """ms per image for EdgeCNN1-3/5/10 and CloudCNN (Fig. 11)."""
  plt = _plt()
  frame = load(results_dir, "inference_time")
  fig, ax = plt.subplots(figsize=(8, 4))
  if frame is None or frame.empty:
    return _empty(fig, ax, "no inference_time.csv yet", path)
  rows = frame[frame.metric == "inference_ms_per_image"]
  rows = rows.groupby(["dataset", "preset", "model"])["value"].median().reset_index()
  for i, ((dataset, preset), group) in enumerate(rows.groupby(["dataset",
                                                               "preset"])):
    order = sorted(group.model, key=_model_order)
    group = group.set_index("model").loc[order]
    x = np.arange(len(order)) + i * (len(order) + 1)
    ax.bar(x, group.value, label=f"{DATASET_TITLES.get(dataset, dataset)} "
                                 f"({preset})")
    for xi, name in zip(x, order):
      ax.text(xi, 0, name, rotation=90, va="bottom", ha="center", fontsize=7)
  ax.set_ylabel("inference time per image (ms)")
  ax.set_title("Fig. 11: inference time (median over repeats)")
  ax.set_xticks([])
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def _conditions(frame: pd.DataFrame) -> pd.DataFrame:
  """Splits the `condition` column (k=v;k=v) into columns."""
  parsed = frame["condition"].str.split(";").apply(
      lambda parts: dict(p.split("=", 1) for p in parts if "=" in p))
  return pd.concat([frame.reset_index(drop=True),
                    pd.DataFrame(list(parsed))], axis=1)


def plot_response_time(results_dir, path=None):
  """Response, upload, inference and download time vs image size, edge vs
  cloud, over LTE and WiFi (Figs. 4-6); error bars: half-range of repeats."""
  plt = _plt()
  frame = load(results_dir, "response_time")
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  if frame is None or frame.empty:
    for ax in axes[1:]:
      ax.set_axis_off()
    return _empty(fig, axes[0], "no response_time.csv yet", path)
  frame = _conditions(frame)
  frame["size_kb"] = frame["size_kb"].astype(float)
  panels = [("lte", ("response_time", "upload_time"), "Fig. 4: LTE"),
            ("lte", ("inference_time",), "Fig. 5: inference time"),
            ("wifi", ("response_time", "upload_time"), "Fig. 6: WiFi")]
  for ax, (link, metrics, title) in zip(axes, panels):
    sub = frame[frame.link == link]
    for metric in metrics:
      for (model, preset), rows in sub.groupby(["model", "preset"]):
        med = rows[rows.metric == f"{metric}_median"].sort_values("size_kb")
        spr = rows[rows.metric == f"{metric}_spread"]
        if med.empty:
          continue
        spr = spr.groupby("size_kb")["value"].first().reindex(med.size_kb)
        ax.errorbar(med.size_kb, 1000 * med.value,
                    yerr=1000 * spr.fillna(0).values, capsize=3,
                    fmt="o-" if model.startswith("Edge") else "s--",
                    label=f"{model} [{preset}] {metric.replace('_', ' ')}")
    ax.set_xscale("log")
    ax.set_xlabel("image data size (KB)")
    ax.set_ylabel("time (ms), median over repeats")
    ax.set_title(title + (" (no rows)" if sub.empty else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, path)


def plot_update_phase(results_dir, path=None):
  """Each edge's test accuracy per model version over the upload stream,
  beside EdgeCNN0 at the same label count and CloudCNN (main job)."""
  plt = _plt()
  frame = load(results_dir, "main_job")
  fig, ax = plt.subplots(figsize=(8, 4))
  if frame is None or frame.empty:
    return _empty(fig, ax, "no main_job.csv yet", path)
  for col in ("num_labels", "test_accuracy_10crop",
              "edgecnn0_test_accuracy_10crop", "cloud_test_accuracy_10crop"):
    frame[col] = pd.to_numeric(frame[col], errors="coerce")
  last = frame[frame.timestamp == frame.timestamp.max()]
  for edge_id, group in last.groupby("edge_id"):
    group = group.sort_values("model_version")
    deployed = group[group.deployed.astype(str) == "True"]
    line, = ax.plot(deployed.num_labels, 100 * deployed.test_accuracy_10crop,
                    "o-", label=f"{edge_id} EdgeCNN1 (deployed versions)")
    ax.plot(group.num_labels, 100 * group.edgecnn0_test_accuracy_10crop, "x--",
            color=line.get_color(), alpha=0.6, label=f"{edge_id} EdgeCNN0")
    for _, r in deployed.iterrows():
      ax.annotate(f"v{int(r.model_version)}",
                  (r.num_labels, 100 * r.test_accuracy_10crop), fontsize=7)
  ax.axhline(100 * last.cloud_test_accuracy_10crop.iloc[0], color="purple",
             ls=":", label="CloudCNN")
  ax.set_xlabel("labels used for training (N + cloud labels)")
  ax.set_ylabel("test accuracy, 10-crop (%)")
  ax.set_title("Update phase (Alg. 2): accuracy per model version")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, path)


def accuracy_table(results_dir, dataset: str, *, preset: str = "compact",
                   name: str = "edge_accuracy") -> str:
  """Tables 2-3 as Markdown: ours (mean +- std over seeds) beside the paper.

  Args:
    results_dir: directory of the result CSVs.
    dataset: mnist, fashion_mnist or cifar10.
    preset: whose rows are ours (compact or paper).
    name: the CSV's stem, e.g. ``edge_accuracy.patience5`` for rows kept
      from an earlier default.
  """
  edge = load(results_dir, name)
  paper = paper_values()
  paper = paper[(paper.dataset == dataset) &
                (paper.metric == "test_accuracy_10crop") &
                (paper.model != "CloudCNN")].copy()
  paper["num_images"] = paper.num_images.astype(int)
  summary = accuracy_summary(edge, dataset, preset=preset) if edge is not None \
      else accuracy_summary(pd.DataFrame(columns=["dataset", "metric"]), dataset)
  ns = sorted(set(paper.num_images) | set(summary.num_images.astype(int)))
  models = [f"EdgeCNN{p}-{m}" for m in (3, 5, 10) for p in (0, 1)]
  lines = ["| model | " + " | ".join(str(n) for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
  for model in models:
    cells = []
    for n in ns:
      ours = summary[(summary.model == model) & (summary.num_images == n)]
      theirs = paper[(paper.model == model) & (paper.num_images == n)]
      text = ""
      if not ours.empty:
        r = ours.iloc[0]
        spread = "" if int(r.n) < 2 else f"±{100 * r['std']:.2f}"
        text = f"{100 * r['mean']:.2f}{spread} (n={int(r.n)})"
      if not theirs.empty:
        text += f" [{100 * float(theirs.value.iloc[0]):.2f}]"
      cells.append(text or "–")
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\nOurs: mean±std over seeds (n seeds; no ± for " \
                            "one seed); [paper].\n"


def bar_table(results_dir, dataset: str, *, preset: str = "compact",
              name: str = "edge_accuracy", zeros: str | None = None,
              condition: str = "", gap_n: int | None = None) -> str:
  """The issue's bar as Markdown: EdgeCNN1-m minus the paper's cell, per N.

  Each cell is ours (mean over seeds) minus the paper's Table 2/3 value, in
  points, with the number of seeds; only the N where both exist, and only
  the models with at least one such cell ("–" where a model lacks an N that
  another model has). Below the
  table: how many cells are at or above the paper, which are below, and the
  gap EdgeCNN1-m - EdgeCNN0-m at the smallest N, or at ``gap_n`` (paired per
  seed), beside the paper's where it states one (both models' accuracies in
  Tables 2-3, or the gain alone, as Fig. 8a at N=60,000).

  Args:
    results_dir: directory of the result CSVs.
    dataset: mnist, fashion_mnist or cifar10.
    preset: whose rows are ours.
    name: the CSV's stem.
    zeros: stem of a CSV whose EdgeCNN0-m rows the gap pairs with when `name`
      has none for a model at the gap's N (an ablation of the CloudCNN, say,
      trains only EdgeCNN1: EdgeCNN0 never sees the CloudCNN, so the main
      grid's runs of the same seed, trained on the same images, are its
      baseline). The line names the CSV they came from.
    condition: the ablation whose rows of `name` are ours (its `condition`
      column exactly, e.g. "head_pool=paper"); "" takes the rows without
      one. The rows of `zeros` are always those without one.
    gap_n: the N of the gap line; None is the smallest N of ours. The paper
      states gaps at N=120-1,200 (Tables 2-3) and, for MNIST m=3, at
      N=60,000 (Fig. 8a).
  """
  edge = load(results_dir, name)
  if edge is None or edge.empty:
    return f"No {name}.csv yet.\n"
  baseline = _zeros_rows(results_dir, zeros, preset, "EdgeCNN0")
  if isinstance(baseline, str):
    return baseline
  summary = accuracy_summary(edge, dataset, preset=preset,
                             condition=condition)
  paper = _paper_accuracy(dataset)
  cells, ns = {}, set()
  for m in (3, 5, 10):
    model = f"EdgeCNN1-{m}"
    for r in summary[summary.model == model].itertuples():
      theirs = paper_value(paper, "test_accuracy_10crop", dataset, model,
                           int(r.num_images))
      if theirs is not None:
        cells[model, int(r.num_images)] = (r.mean - theirs, int(r.n))
        ns.add(int(r.num_images))
  if not cells:
    which = f" with condition {condition!r}" if condition else ""
    return (f"No {preset}-preset EdgeCNN1 row{which} of {dataset} in "
            f"{name}.csv at "
            "an N where the paper gives EdgeCNN1's accuracy (Tables 2-3: "
            "MNIST and Fashion-MNIST).\n")
  ns = sorted(ns)
  lines = ["| model | " + " | ".join(f"{n:,}" for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
  for m in (3, 5, 10):
    model = f"EdgeCNN1-{m}"
    if not any(key[0] == model for key in cells):
      continue  # a CSV of one m (a ten-seed sweep, say) gets no empty rows
    row = [f"{100 * cells[model, n][0]:+.2f} (n={cells[model, n][1]})"
           if (model, n) in cells else "–" for n in ns]
    lines.append(f"| {model} | " + " | ".join(row) + " |")
  below = [(model, n, d, k) for (model, n), (d, k) in sorted(
      cells.items(), key=lambda c: (_model_order(c[0][0]), c[0][1])) if d < 0]
  text = ["", f"At or above the paper: {len(cells) - len(below)} of "
          f"{len(cells)} cells" + (
              "." if not below else "; below: " + ", ".join(
                  f"{model} at N={n:,} ({100 * d:+.2f}, n={k})"
                  for model, n, d, k in below) + ".")]
  n0 = int(summary.num_images.min()) if gap_n is None else int(gap_n)
  plain = _plain(edge, preset, condition)
  gaps, borrowed = [], False
  stated = paper_values()  # for the gains the paper states without both models
  for m in (3, 5, 10):
    one, zero = f"EdgeCNN1-{m}", f"EdgeCNN0-{m}"
    zero_accuracy, other = _zero_per_seed(plain, baseline, dataset, zero, n0)
    borrowed = borrowed or other
    diffs = _paired(_per_seed(plain, dataset, one, n0), zero_accuracy,
                    lambda x, y: x - y)
    if diffs.empty:
      continue
    gain = _paper_gain(paper, stated, dataset, m, n0)
    theirs = "" if gain is None else f" (paper {100 * gain:+.2f})"
    gaps.append(f"m={m} {_fmt_points(diffs)}{theirs}")
  if gaps:
    source = f" (EdgeCNN0-m from {zeros}.csv)" if borrowed else ""
    text.append(f"Gap EdgeCNN1-m - EdgeCNN0-m at N={n0:,}{source}, paired "
                "per seed: " + "; ".join(gaps) + ".")
  elif gap_n is not None:
    text.append(f"Gap EdgeCNN1-m - EdgeCNN0-m at N={n0:,}: no seed has both "
                f"models there (in {name}.csv"
                + (f" or {zeros}.csv" if zeros else "") + ").")
  return "\n".join(lines) + "\n\nOurs (mean over seeds) minus the paper, " \
      "points; n seeds.\n" + "\n".join(text) + "\n"


def _paper_gain(paper: pd.DataFrame, stated: pd.DataFrame, dataset: str,
                m: int, n: int) -> float | None:
  """The paper's EdgeCNN1-m minus EdgeCNN0-m at N (a fraction), or None.

  Tables 2-3 give both models' accuracies; where the paper gives only the
  gain (Fig. 8a, MNIST m=3 at N=60,000), that. ``paper`` is
  _paper_accuracy(dataset), ``stated`` paper_values().
  """
  one, zero = f"EdgeCNN1-{m}", f"EdgeCNN0-{m}"
  a, b = (paper_value(paper, "test_accuracy_10crop", dataset, model, n)
          for model in (one, zero))
  if a is not None and b is not None:
    return a - b
  return paper_value(stated, "accuracy_gain", dataset, f"{one} vs {zero}", n)


def gap_table(results_dir, dataset: str, *, m: int = 3,
              preset: str = "compact", name: str = "edge_accuracy",
              condition: str = "", zeros: str | None = None) -> str:
  """EdgeCNN1-m, EdgeCNN0-m and their gap at every N, beside the paper's.

  Per N where the CSVs have both models for some seed: each model's 10-crop
  accuracy (mean±std over seeds) and the paper's, and the gap EdgeCNN1-m -
  EdgeCNN0-m paired per seed beside the paper's (Tables 2-3; Fig. 8a's
  stated gain at N=60,000). Below it, how far each model is from the paper
  over the N where the paper gives it: the mean difference and the mean
  and largest absolute difference, in points. Where bar_table asks whether
  EdgeCNN1 beats the paper, this asks whether a setting's pair of models
  looks like the paper's.

  Args:
    results_dir: directory of the result CSVs.
    dataset: mnist, fashion_mnist or cifar10.
    m: the number of shared layers (3, 5 or 10).
    preset: whose rows are ours.
    name: the CSV's stem.
    condition: the ablation whose rows are ours (the `condition` column
      exactly); "" takes the rows without one.
    zeros: stem of a CSV whose EdgeCNN0-m rows pair with `name`'s EdgeCNN1-m
      at each N where `name` has none, as in bar_table: EdgeCNN0 trains
      from scratch on true labels and never meets the CloudCNN, so a sweep
      of EdgeCNN1 alone on another teacher pairs with the EdgeCNN0 runs of
      the same seeds, images and training flags on the first (the caller
      vouches for the flags). The rows of `zeros` are always those without
      a condition. A line under the table names the CSV they came from, and
      the N when only some were borrowed. A named CSV that is missing or
      empty is reported instead of a table.
  """
  if m not in (3, 5, 10):
    raise ValueError(f"m must be 3, 5 or 10 (the paper's shared layers); "
                     f"received {m!r}")
  one, zero = f"EdgeCNN1-{m}", f"EdgeCNN0-{m}"
  edge = load(results_dir, name)
  if edge is None or edge.empty:
    return f"No {name}.csv yet.\n"
  plain = _plain(edge, preset, condition)
  baseline = _zeros_rows(results_dir, zeros, preset, zero)
  if isinstance(baseline, str):
    return baseline
  paper, stated = _paper_accuracy(dataset), paper_values()
  ns = sorted(int(n) for n in plain[(plain.dataset == dataset) & (
      plain.model == one)].num_images.unique())
  lines = [f"| N | {one} | paper | {zero} | paper | gap, paired | paper |",
           "|---|---|---|---|---|---|---|"]
  off = {one: [], zero: []}
  borrowed_ns = []
  for n in ns:
    zero_accuracy, borrowed = _zero_per_seed(plain, baseline, dataset, zero, n)
    ours = {one: _per_seed(plain, dataset, one, n), zero: zero_accuracy}
    diffs = _paired(ours[one], ours[zero], lambda x, y: x - y)
    if diffs.empty:
      continue
    if borrowed:
      borrowed_ns.append(n)
    cells = []
    for model in (one, zero):
      theirs = paper_value(paper, "test_accuracy_10crop", dataset, model, n)
      cells += [_mean_std(ours[model]),
                "–" if theirs is None else f"{100 * theirs:.2f}"]
      if theirs is not None:
        off[model].append(100 * (ours[model].mean() - theirs))
    gain = _paper_gain(paper, stated, dataset, m, n)
    cells += [f"{_mean_std(diffs, '+')} (n={len(diffs)})",
              "–" if gain is None else f"{100 * gain:+.2f}"]
    lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
  if len(lines) == 2:
    which = f" with condition {condition!r}" if condition else ""
    where = f"{name}.csv"
    if zeros is not None and not (
        (plain.dataset == dataset) & (plain.model == zero)).any():
      where = f"{name}.csv ({one}) and {zeros}.csv ({zero})"
    elif zeros is not None:
      where = f"{name}.csv (or, for {zero} where it has none, {zeros}.csv)"
    return (f"No seed of {dataset} in {where}{which} has both {one} and "
            f"{zero} at one N ({preset} preset).\n")
  text = ["", "test_accuracy_10crop, mean±std over seeds; the gap in points."]
  if borrowed_ns and len(borrowed_ns) == len(lines) - 2:
    text.append(f"{one} from {name}.csv, {zero} from {zeros}.csv (its runs "
                f"of the same seeds).")
  elif borrowed_ns:
    text.append(f"{zero} at N=" + ", ".join(f"{n:,}" for n in borrowed_ns)
                + f" from {zeros}.csv (its runs of the same seeds), where "
                f"{name}.csv has none; everything else from {name}.csv.")
  for model in (one, zero):
    d = np.array(off[model])
    if len(d):
      text.append(
          f"{model} minus the paper over {len(d)} N: mean {d.mean():+.2f}, "
          f"mean absolute {np.abs(d).mean():.2f}, largest absolute "
          f"{np.abs(d).max():.2f} points.")
  return "\n".join(lines) + "\n" + "\n".join(text) + "\n"


def _mean_std(values: pd.Series, sign: str = "") -> str:
  """Percent mean, with ±std when there is more than one value."""
  spread = f"±{100 * values.std():.2f}" if len(values) > 1 else ""
  return f"{100 * values.mean():{sign}.2f}{spread}"


def _paper_accuracy(dataset: str) -> pd.DataFrame:
  paper = paper_values()
  return paper[(paper.dataset == dataset) &
               (paper.metric == "test_accuracy_10crop")]


def _by_model_and_n(pairs: pd.DataFrame):
  """(model, N, rows) in table order: EdgeCNN1-3, EdgeCNN0-3, ..., by N.

  With a ``labels`` column, runs of one model and N whose labels differ are
  different runs (an EdgeCNN1 at N=5,000 trained on 5,000 true labels, the
  initialisation phase of a sweep that starts there, against one whose
  uploads CloudCNN labelled) and come as rows of their own; N is then a
  string that says so for the EdgeCNN1 runs on true labels alone above the
  smallest N of ``pairs``.
  """
  by = ["model", "num_images"] + (["labels"] if "labels" in pairs else [])
  smallest = int(pairs.num_images.min()) if len(pairs) else 0
  groups = pairs.groupby(by)
  for key, group in sorted(groups, key=lambda item: (
      _model_order(item[0][0]), int(item[0][1]), str(item[0][2:]))):
    model, n = key[0], int(key[1])
    if (len(key) > 2 and key[2] == "true" and n > smallest
        and model.startswith("EdgeCNN1")):
      yield model, f"{n} (true labels only)", group
    else:
      yield model, n, group


def _paper_cell(paper: pd.DataFrame, model: str, n: int) -> str:
  row = paper[(paper.model == model) &
              (paper.num_images.astype(str) == str(n))]
  return "–" if row.empty else f"{100 * float(row.value.iloc[0]):.2f}"


def weights_table(results_dir, dataset: str, *, preset: str = "compact",
                  name: str = "edge_accuracy",
                  crop: str = "10crop", summary: bool = False) -> str:
  """The best validation epoch's weights against the last epoch's, as Markdown.

  Runs with ``test_both_weights`` test both from one training (rows
  ``best_epoch_test_accuracy_*`` and ``last_epoch_test_accuracy_*``); per
  model and N: each mean±std over seeds, the difference last - best paired
  per run, and in how many runs the last weights tested higher. Ablation
  rows (a condition) are left out, as in the accuracy tables.

  Args:
    results_dir: directory of the result CSVs.
    dataset: mnist, fashion_mnist or cifar10.
    preset: whose rows (compact or paper).
    name: the CSV's stem.
    crop: ``10crop`` or ``center``.
    summary: only the closing line over all runs (how many tested higher
      with the last weights, the median difference), not the table.
  """
  if crop not in ("10crop", "center"):
    raise ValueError(f"`crop` must be '10crop' or 'center'. Received: {crop!r}")
  edge = load(results_dir, name)
  metrics = {w: f"{w}_epoch_test_accuracy_{crop}" for w in ("best", "last")}
  if edge is None:
    return "No runs tested both weights yet.\n"
  rows = _plain(edge[edge.dataset == dataset], preset)
  run = ["model", "num_images", "seed", "labels"]
  best = rows[rows.metric == metrics["best"]].groupby(run)["value"].mean()
  last = rows[rows.metric == metrics["last"]].groupby(run)["value"].mean()
  both = best.index.intersection(last.index)
  if both.empty:
    return "No runs tested both weights yet.\n"
  pairs = pd.DataFrame({"best": best[both], "last": last[both]}).reset_index()
  pairs["diff"] = pairs["last"] - pairs["best"]
  paper = _paper_accuracy(dataset)

  lines = ["| model | N | best epoch's weights | last epoch's weights | "
           "last - best, paired | last higher | paper |",
           "|---|---|---|---|---|---|---|"]
  for model, n, group in _by_model_and_n(pairs):
    theirs = _paper_cell(paper, model, n)
    lines.append(
        f"| {model} | {n} | {_mean_std(group.best)} | "
        f"{_mean_std(group['last'])} | {_mean_std(group['diff'], '+')} "
        f"(n={len(group)}) | {int((group['diff'] > 0).sum())} of "
        f"{len(group)} | {theirs} |")
  higher = int((pairs["diff"] > 0).sum())
  lower = int((pairs["diff"] < 0).sum())
  closing = (f"Over all {len(pairs)} runs: the last epoch's weights tested "
             f"higher in {higher}, lower in {lower}; median difference "
             f"{100 * pairs['diff'].median():+.2f} points.")
  if summary:
    return closing + "\n"
  return ("\n".join(lines) + f"\n\n{closing} Test accuracy, {crop}, "
          "mean±std over seeds.\n")


def ablation_table(results_dir, name: str, dataset: str, *,
                   base: str = "edge_accuracy", preset: str = "compact",
                   metric: str = "test_accuracy_10crop",
                   base_metric: str | None = None) -> str:
  """An ablation CSV's runs against the same runs of a base CSV, as Markdown.

  Runs pair on dataset, preset, model, N and seed (the same images and
  initialisation), whatever their labels or condition: the ablation's rows
  are all of its file, the base's those without a condition. Per model and N:
  each mean±std over the paired seeds, the paired difference ablation - base
  with every seed's value, and the paper's number. A note under the table
  names the two CloudCNNs when the CSVs' commands gave different
  --cloud_dir values (_teachers).

  Args:
    results_dir: directory of the result CSVs.
    name: the ablation CSV's stem, e.g. ``ablation_oracle``.
    dataset: mnist, fashion_mnist or cifar10.
    base: the CSV the ablation is compared with.
    preset: whose rows (compact or paper).
    metric: the accuracy compared.
    base_metric: the base's metric, if not ``metric`` (e.g. a rerun's
      ``best_epoch_test_accuracy_10crop`` against the ``test_accuracy_10crop``
      of an archive that tested the best epoch's weights).

  Raises:
    FileNotFoundError: naming every one of the two CSVs that is missing.
  """
  metrics = {name: metric, base: base_metric or metric}
  frames = {stem: load(results_dir, stem) for stem in (base, name)}
  missing = [f"{stem}.csv" for stem, frame in frames.items() if frame is None]
  if missing:
    raise FileNotFoundError(
        f"No {' or '.join(missing)} in {results_dir}; ablation_table "
        "compares two result CSVs of the same runs.")
  pairs = _ablation_pairs(frames[base], frames[name], dataset, preset,
                          metrics[base], metric)
  unpaired = pairs.attrs.get("unpaired", [])
  if pairs.empty:
    return f"No run of {name}.csv is in {base}.csv.\n" + _unpaired_text(
        unpaired, name, base)
  paper = _paper_accuracy(dataset)

  lines = [f"| model | N | {base} | {name} | {name} - {base}, paired | "
           "paper |", "|---|---|---|---|---|---|"]
  for model, n, group in _by_model_and_n(pairs):
    theirs = _paper_cell(paper, model, n)
    seeds = ", ".join(f"{100 * d:+.2f}" for d in group["diff"])
    lines.append(f"| {model} | {n} | {_mean_std(group.base)} | "
                 f"{_mean_std(group.ablation)} | "
                 f"{_mean_std(group['diff'], '+')} (n={len(group)}; {seeds}) | "
                 f"{theirs} |")
  compared = (metric if metrics[base] == metric
              else f"{name}'s {metric} against {base}'s {metrics[base]}")
  records = {stem: _recorded_flags(results_dir, stem, dataset, preset)
             for stem in (name, base)}
  teachers = {stem: _teachers(records[stem]) for stem in (name, base)}
  teacher_text = ""
  if all(teachers.values()) and teachers[name] != teachers[base]:
    teacher_text = ("\nThe CloudCNNs differ (--cloud_dir): "
                    + "; ".join(f"{', '.join(sorted(teachers[stem]))} in "
                                f"{stem}" for stem in (name, base))
                    + ", so the difference is the teachers' as well.\n")
  set_flags = {stem: _training_flags(records[stem]) for stem in (name, base)}
  if None not in set_flags.values() and set_flags[name] != set_flags[base]:
    teacher_text += ("\nThe training flags differ (those the commands set "
                     "away from their defaults): " + "; ".join(
                         f"{set_flags[stem] or 'none'} in {stem}"
                         for stem in (name, base)) + ".\n")
  return ("\n".join(lines) + f"\n\n{compared}, mean±std over seeds.\n"
          + teacher_text + _unpaired_text(unpaired, name, base))


def _unpaired_text(unpaired: list[tuple], name: str, base: str) -> str:
  """The note under an ablation table on runs left unpaired by their labels."""
  if not unpaired:
    return ""
  seeds: dict[tuple, list[int]] = {}
  for model, n, seed, ours, theirs in unpaired:
    seeds.setdefault((model, int(n), ours, tuple(theirs)), []).append(
        int(seed))
  runs = "; ".join(
      f"{model} N={n} seed{'s' if len(found) > 1 else ''} "
      f"{', '.join(str(s) for s in found)} ({ours} in {name}, "
      f"{' / '.join(theirs)} in {base})"
      for (model, n, ours, theirs), found in seeds.items())
  return ("\nNot paired, their labels differ (a sweep's smallest N trains on "
          "true labels only, its larger N on CloudCNN's labels for the "
          f"uploads): {runs}.\n")


def _ablation_pairs(base: pd.DataFrame, ablation: pd.DataFrame, dataset: str,
                    preset: str, base_metric: str,
                    metric: str) -> pd.DataFrame:
  """Runs of ``ablation`` paired with the same runs of ``base`` (dataset,
  preset, model, N, seed and labels): columns model, num_images, seed,
  labels (the ablation's), base, ablation, diff. The base's rows are those
  without a condition, the ablation's all of its rows of the preset.

  Labels must match, but for ``oracle`` against ``cloud`` (either way
  round): the same update phase with true labels in place of CloudCNN's is
  the contrast an oracle ablation measures. A ``true`` run above a sweep's
  smallest N is an initialisation phase on N true labels, another run than
  the update phase of the same N; such runs, present on both sides under
  labels that do not pair, are listed in ``pairs.attrs["unpaired"]`` as
  (model, N, seed, ablation's labels, base's labels) rather than averaged
  together or paired across. Files without a labels column pair as before.
  """
  keys = ["model", "num_images", "seed"]
  columns = [*keys, "labels", "base", "ablation", "diff"]
  needed = {"dataset", "preset", "metric", "value", *keys}
  if not needed <= set(base.columns) or not needed <= set(ablation.columns):
    return pd.DataFrame(columns=columns)
  per = {}
  for which, frame, wanted in (("base", base, base_metric),
                               ("ablation", ablation, metric)):
    rows = frame[(frame.dataset == dataset) & (frame.metric == wanted)]
    rows = (_plain(rows, preset) if which == "base"
            else rows[rows.preset == preset])
    rows = rows.assign(labels=rows["labels"].astype(str).str.lower()
                       if "labels" in rows else "")
    per[which] = rows.groupby([*keys, "labels"])["value"].mean()
  swap = {"oracle": "cloud", "cloud": "oracle"}
  out, unpaired = [], []
  base_runs = {}
  for (model, n, seed, labels), value in per["base"].items():
    base_runs.setdefault((model, n, seed), {})[labels] = value
  for (model, n, seed, labels), value in per["ablation"].items():
    theirs = base_runs.get((model, n, seed))
    if not theirs:
      continue
    match = labels if labels in theirs else swap.get(labels)
    if match in theirs:
      out.append((model, n, seed, labels, theirs[match], value))
    else:
      unpaired.append((model, n, seed, labels, sorted(theirs)))
  pairs = pd.DataFrame(out, columns=columns[:-1])
  pairs["diff"] = pairs["ablation"] - pairs["base"]
  pairs.attrs["unpaired"] = sorted(unpaired, key=lambda u: (
      _model_order(u[0]), u[1], u[2]))
  return pairs


def _recorded_flags(results_dir, stem: str, dataset: str,
                    preset: str) -> list[dict]:
  """The flags of every command a CSV records for one dataset and preset:
  its history (``<stem>.invocations.jsonl``), then its latest flags
  (``<stem>.<dataset>-<preset>.flags.json``; one that is not JSON is
  skipped). Empty for a CSV older than the history."""
  csv_path = pathlib.Path(results_dir) / f"{stem}.csv"
  name = f"{dataset}-{preset}"
  found = [record.get("flags", {})
           for record in results.read_invocations(
               results.invocations_path(csv_path))
           if record.get("name") == name]
  flags_path = results.flags_path(csv_path, name)
  if flags_path.exists():
    try:
      latest = json.loads(flags_path.read_text())
    except json.JSONDecodeError:
      latest = None
    if isinstance(latest, dict):
      found.append(latest)
  return [flags for flags in found if isinstance(flags, dict)]


def _teachers(records: list[dict]) -> set[str]:
  """The --cloud_dir values of a CSV's recorded commands (_recorded_flags);
  a leading ``results/models/`` is dropped. Empty when none records one (a
  run that trained its own CloudCNN, or a CSV older than the history).
  """
  return {str(flags["cloud_dir"]).removeprefix("results/models/")
          for flags in records if flags.get("cloud_dir")}


# The flags of the experiment binaries that change how an edge model trains
# or what it learns from, with their defaults (tests/test_figures.py checks
# them against the binaries' own). A saved record without one (older than
# the flag) ran under the default; None is a schedule flag left to
# --train_config.
TRAINING_FLAG_DEFAULTS = {
    "train_config": "paper", "max_epochs": None, "lr_patience": None,
    "augment": None, "flip": None, "tie_break_loss": None,
    "restore_best": None, "crop_size": None,
    "kernel_initializer": "he_normal", "head_pool": "cloud",
    "train_shared": False, "labels": "cloud", "cloud_label_mode": "ten_crop",
}


def _training_flags(records: list[dict]) -> str | None:
  """The training flags a CSV's recorded commands (_recorded_flags) set away
  from their defaults, as command-line text (``--noflip``,
  ``--train_config=robust``; values that differ between commands joined
  with ``|``), "" for none, or None when no command is recorded."""
  if not records:
    return None
  parts = []
  for flag, default in TRAINING_FLAG_DEFAULTS.items():
    values = []
    for value in (record.get(flag, default) for record in records):
      if value is not None and value != default and value not in values:
        values.append(value)
    if values == [True]:
      parts.append(f"--{flag}")
    elif values == [False]:
      parts.append(f"--no{flag}")
    elif values:
      parts.append(f"--{flag}=" + "|".join(str(v) for v in values))
  return " ".join(parts)


def ablation_summary(results_dir, *, base: str = "edge_accuracy",
                     preset: str = "compact", weights: str = "last",
                     crop: str = "10crop") -> str:
  """What each ablation bought: every other result CSV of results_dir with
  runs of ``base`` (the same dataset, preset, model, N and seed), one line
  per CSV and dataset, as Markdown.

  Runs pair on the same weights, ``<weights>_epoch_test_accuracy_<crop>``:
  the last epoch's or the best validation epoch's, which every run since
  ``--test_both_weights`` reports. An older run reports only
  ``test_accuracy_*``, of whichever weights its command chose, which the CSV
  does not record; such runs are left out and their CSVs named under the
  table (ablation_table compares them with the base they were measured
  against). A line gives the CSV's conditions, how many runs pair, the models
  and N, the paired difference ablation - base (mean±std over the runs,
  points) and how many runs it raised, lowered or left equal; ablation_table
  gives one CSV cell by cell. The base's runs are those without a condition.
  A line names its CloudCNN (the CSV's --cloud_dir for that dataset and
  preset, _teachers) when it is not the base's: its difference then mixes
  the teacher with the condition. It also gives the training flags the
  CSV's commands set away from their defaults (TRAINING_FLAG_DEFAULTS), as
  the rows of most ablations carry no condition: ``--noflip`` says how they
  were trained where the condition column is empty.

  Args:
    results_dir: directory of the result CSVs.
    base: the CSV the others are compared with.
    preset: whose rows (compact or paper).
    weights: ``last`` or ``best``.
    crop: the test protocol compared, ``10crop`` or ``center``.
  """
  for name, value, allowed in (("weights", weights, ("last", "best")),
                               ("crop", crop, ("10crop", "center"))):
    if value not in allowed:
      raise ValueError(f"`{name}` must be one of {allowed}. Received: "
                       f"{value!r}")
  metric = f"{weights}_epoch_test_accuracy_{crop}"
  base_frame = load(results_dir, base)
  if base_frame is None:
    return f"No {base}.csv in {results_dir} to compare the ablations with.\n"
  lines = ["| CSV | dataset | condition | flags | CloudCNN | paired runs | "
           "models | N | difference, points | higher / lower / equal |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  unrecorded, unpaired, unreadable, by_labels = [], [], [], []
  base_records: dict[str, list[dict]] = {}  # by dataset, read once
  for path in sorted(pathlib.Path(results_dir).glob("*.csv")):
    if path.stem == base:
      continue
    try:
      frame = load(results_dir, path.stem)
    except (pd.errors.EmptyDataError, pd.errors.ParserError,
            UnicodeDecodeError) as e:
      unreadable.append(f"{path.name} ({type(e).__name__}: {e})")
      continue
    datasets = (sorted(set(frame.dataset))
                if {"dataset", "metric"} <= set(frame.columns) else [])
    legacy, paired = 0, False
    for dataset in datasets:
      pairs = _ablation_pairs(base_frame, frame, dataset, preset, metric,
                              metric)
      # Runs of base reported only under the plain metric: older runs.
      # (A run with only the weighted metric counts nowhere, not as -1.)
      legacy += max(0, len(_ablation_pairs(
          base_frame, frame, dataset, preset, f"test_accuracy_{crop}",
          f"test_accuracy_{crop}")) - len(pairs))
      if pairs.attrs.get("unpaired"):
        by_labels.append(f"{path.stem}.csv, {dataset} "
                         f"({len(pairs.attrs['unpaired'])})")
      if pairs.empty:
        continue
      paired = True
      rows = frame[(frame.dataset == dataset) & (frame.preset == preset)]
      conditions = (sorted(set(rows.condition.astype(str)) - {""})
                    if "condition" in rows else [])
      models = sorted(set(pairs.model), key=_model_order)
      sizes = sorted(int(n) for n in set(pairs.num_images))
      size_text = (f"{sizes[0]:,}" if len(sizes) == 1
                   else f"{sizes[0]:,}-{sizes[-1]:,} ({len(sizes)})")
      diff = pairs["diff"]
      records = _recorded_flags(results_dir, path.stem, dataset, preset)
      if dataset not in base_records:
        base_records[dataset] = _recorded_flags(results_dir, base, dataset,
                                                preset)
      teachers, base_teachers = (_teachers(records),
                                 _teachers(base_records[dataset]))
      if not teachers or not base_teachers:
        teacher = "unrecorded"
      elif teachers == base_teachers:
        teacher = "base's"
      else:
        teacher = ", ".join(sorted(teachers))
      set_flags = _training_flags(records)
      lines.append(
          f"| {path.stem} | {dataset} | {'; '.join(conditions) or '–'} | "
          f"{'unrecorded' if set_flags is None else set_flags or '–'} | "
          f"{teacher} | {len(pairs)} | {', '.join(models)} | {size_text} | "
          f"{_mean_std(diff, '+')} | {int((diff > 0).sum())} / "
          f"{int((diff < 0).sum())} / {int((diff == 0).sum())} |")
    if legacy:
      unrecorded.append(f"{path.stem}.csv ({legacy})")
    elif not paired:
      unpaired.append(f"{path.stem}.csv")
  if len(lines) == 2:
    text = (f"No CSV in {results_dir} has runs of {base}.csv that report "
            f"{metric}.\n")
  else:
    text = ("\n".join(lines) + f"\n\n{metric}, paired per run (dataset, "
            f"model, N, seed) with {base}.csv's run without a condition; "
            "difference: mean±std over the paired runs. CloudCNN: the "
            "--cloud_dir of the CSV's commands for that dataset and preset "
            "(its invocations.jsonl and flags.json), \"base's\" where it is "
            f"{base}.csv's, so the difference is the condition's alone; a "
            "named one differs from the base's, and the difference is the "
            "teacher's and the condition's together. Flags: the training "
            "flags the CSV's commands set away from their defaults ("
            "\"unrecorded\" for a CSV older than its history)"
            + "".join(f"; {base}.csv's, for {d}: {f}"
                      for d, f in ((d, _training_flags(r))
                                   for d, r in sorted(base_records.items()))
                      if f)
            + ".\n")
  if unrecorded:
    text += (f"\nRuns of {base}.csv left out because they do not record "
             f"which weights they tested (no {metric}): "
             + ", ".join(unrecorded) + ".\n")
  if unpaired:
    text += (f"\nNo run in {base}.csv: " + ", ".join(unpaired) + ".\n")
  if by_labels:
    text += ("\nRuns left unpaired because their labels differ from the "
             f"same model, N and seed in {base}.csv (ablation_table lists "
             "them): " + ", ".join(by_labels) + ".\n")
  if unreadable:
    text += "\nNot readable as a CSV: " + "; ".join(unreadable) + ".\n"
  return text


def preset_table(results_dir, dataset: str, *,
                 presets: tuple[str, ...] = ("paper", "compact"),
                 name: str = "edge_accuracy",
                 metric: str = "test_accuracy_10crop") -> str:
  """Presets side by side on the same seeds, with the paper's number, as
  Markdown.

  One row per model and N that the first preset has run; each preset's cell
  is the mean±std over the seeds that every preset has for that model and N
  (the same images and initialisation), so a preset with more seeds is not
  compared on seeds the others lack. Ablation rows (a condition) are left
  out.

  Args:
    results_dir: directory of the result CSVs.
    dataset: mnist, fashion_mnist or cifar10.
    presets: the presets compared, the first deciding the rows.
    name: the CSV's stem.
    metric: the accuracy compared.
  """
  if len(presets) < 2:
    raise ValueError(f"`presets` needs two or more presets to compare. "
                     f"Received: {presets!r}")
  edge = load(results_dir, name)
  if edge is None:
    return f"No {name}.csv yet.\n"
  rows = _plain(edge[(edge.dataset == dataset) & (edge.metric == metric)],
                None)
  per = {p: rows[rows.preset == p].groupby(["model", "num_images", "seed"])[
      "value"].mean() for p in presets}
  first = per[presets[0]]
  if first.empty:
    return f"No {presets[0]}-preset run of {dataset} in {name}.csv yet.\n"
  paper = _paper_accuracy(dataset)
  lines = ["| model | N | " + " | ".join(f"{p} preset" for p in presets)
           + " | seeds | paper |", "|---|---|" + "---|" * (len(presets) + 2)]
  for model, n, group in _by_model_and_n(first.reset_index()):
    seeds = set(group.seed)
    for p in presets[1:]:
      if (model, n) in per[p].index.droplevel("seed"):
        seeds &= set(per[p].loc[(model, n)].index)
      else:
        seeds = set()
    seeds = sorted(seeds)
    cells = [_mean_std(per[p].loc[(model, n)].loc[seeds]) if seeds
             else "not yet run" for p in presets]
    lines.append(f"| {model} | {n} | " + " | ".join(cells) + " | "
                 f"{', '.join(str(int(s)) for s in seeds) or '–'} | "
                 f"{_paper_cell(paper, model, n)} |")
  return ("\n".join(lines) + f"\n\n{metric}, mean±std over the seeds every "
          "preset has (listed); not yet run: a preset lacks every seed of "
          "the first.\n")


def training_time_table(results_dir, *, preset: str = "compact",
                        name: str = "training_time") -> str:
  """Fig. 10 as Markdown: EdgeCNN1-m against EdgeCNN0-m, time to the stopping
  rule and per epoch, beside the paper's reductions.

  Per dataset, N and m: each model's median wall time to the stop, epochs
  and seconds per epoch over seeds, and the reductions (EdgeCNN1 -
  EdgeCNN0) / EdgeCNN0 paired per seed (the same images), median over seeds.
  The paper gives one reduction per dataset (Sec. 4.3.4).

  Args:
    results_dir: directory of the result CSVs.
    preset: whose rows (compact or paper).
    name: the CSV's stem.
  """
  frame = load(results_dir, name)
  if frame is None or frame.empty:
    return f"No {name}.csv yet.\n"
  rows = _plain(frame, preset)
  paper = paper_values()
  lines = ["| dataset | N | m | EdgeCNN1: s (epochs; s/epoch) | "
           "EdgeCNN0: s (epochs; s/epoch) | to the stop, ours | "
           "per epoch, ours | seeds | paper |",
           "|---|---|---|---|---|---|---|---|---|"]
  order = {d: i for i, d in enumerate(DATASET_TITLES)}
  keys = rows[["dataset", "num_images", "num_shared"]].drop_duplicates()
  for d, n, m in sorted(keys.itertuples(index=False, name=None),
                        key=lambda k: (order.get(k[0], 9), k[1], k[2])):
    one, zero = f"EdgeCNN1-{m}", f"EdgeCNN0-{m}"
    stats = {model: {metric: _per_seed(rows, d, model, n, metric)
                     for metric in ("wall_time", "epochs", "time_per_epoch")}
             for model in (one, zero)}
    if any(stats[model]["wall_time"].empty for model in (one, zero)):
      continue
    cells = [f"{s['wall_time'].median():.1f} ({s['epochs'].median():.0f}; "
             f"{s['time_per_epoch'].median():.2f})"
             for s in (stats[one], stats[zero])]
    ratio = {metric: _paired(stats[one][metric], stats[zero][metric],
                             lambda x, y: (x - y) / y)
             for metric in ("wall_time", "time_per_epoch")}
    theirs = paper_value(paper, "training_time_reduction", d,
                         f"{one} vs {zero}", n)
    lines.append(
        f"| {DATASET_TITLES.get(d, d)} | {n} | {m} | {cells[0]} | {cells[1]} "
        f"| {ratio['wall_time'].median():+.1%} | "
        f"{ratio['time_per_epoch'].median():+.1%} | "
        f"{len(ratio['wall_time'])} | "
        f"{'' if theirs is None else f'{theirs:+.2%}'} |")
  if len(lines) == 2:
    return (f"No {preset}-preset pair of EdgeCNN1-m and EdgeCNN0-m in "
            f"{name}.csv yet.\n")
  return ("\n".join(lines) + "\n\nMedians over seeds; reductions (EdgeCNN1 -"
          " EdgeCNN0) / EdgeCNN0 paired per seed, then the median.\n")


# The tables a document may embed between markers (refresh_tables); each is
# called with the results directory first.
DOC_TABLES = ("accuracy_table", "bar_table", "gap_table", "headline_table",
              "weights_table", "ablation_table", "ablation_summary",
              "preset_table", "training_time_table")
# Markers are whole lines, so prose may quote them.
_OPEN, _CLOSE = r"^<!-- table: (?P<call>[^\n]*?) -->", r"^<!-- end table -->$"
_TABLE_OPEN = re.compile(_OPEN + "$", re.M)
_TABLE_CLOSE = re.compile(_CLOSE, re.M)
_TABLE_BLOCK = re.compile(
    rf"(?P<open>{_OPEN}\n)(?P<body>.*?)(?P<close>{_CLOSE})", re.S | re.M)


def _table_call(call: str):
  """(function, args, kwargs) of a marker's call, e.g.
  ``accuracy_table('mnist', name='edge_accuracy.best_weights')``; only the
  functions of DOC_TABLES and literal arguments."""
  try:
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
      raise ValueError("not a call of a function by its bare name")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (SyntaxError, ValueError) as e:
    raise ValueError(
        f"A table marker must hold one call of {', '.join(DOC_TABLES)} with "
        f"literal arguments, e.g. <!-- table: accuracy_table('mnist') -->. "
        f"Received: {call!r} ({e})") from None
  if node.func.id not in DOC_TABLES:
    raise ValueError(f"Unknown table {node.func.id!r} in marker {call!r}; "
                     f"known: {', '.join(DOC_TABLES)}")
  return globals()[node.func.id], args, kwargs


def table_markers(text: str) -> list[str]:
  """The calls of ``text``'s table markers (see refresh_tables), checked:
  ValueError for a call that refresh_tables would refuse or an opening marker
  without its end."""
  opens = list(_TABLE_OPEN.finditer(text))
  opened, closed = len(opens), len(_TABLE_CLOSE.findall(text))
  calls = [m["call"] for m in _TABLE_BLOCK.finditer(text)]
  # A nested or unclosed opening marker leaves fewer blocks than openings.
  if not opened == closed == len(calls):
    line = 1 + text[:opens[-1].start()].count("\n") if opens else 0
    raise ValueError(
        f"{opened} table markers and {closed} end markers: every "
        f"'<!-- table: ... -->' needs its own '<!-- end table -->' after it "
        f"(last opening marker on line {line}).")
  for call in calls:
    _table_call(call)
  return calls


def refresh_tables(text: str, results_dir) -> str:
  """``text`` with every marked table recomputed from the CSVs.

  A Markdown document marks a table with two lines of their own::

    <!-- table: accuracy_table('fashion_mnist') -->
    (anything: replaced by figures.accuracy_table(results_dir, 'fashion_mnist'))
    <!-- end table -->

  Prose around the markers is kept as written. Raises ValueError, naming the
  marker, for a call that is not one of DOC_TABLES with literal arguments or
  an opening marker without its end; the text is then not changed at all.
  """
  def block(match):
    fn, args, kwargs = _table_call(match["call"])
    try:
      body = fn(results_dir, *args, **kwargs)
    except TypeError as e:  # a wrong argument in the marker
      raise ValueError(f"Table marker {match['call']!r}: {e}") from None
    return f"{match['open']}\n{body.rstrip()}\n\n{match['close']}"

  table_markers(text)  # every marker checked before any table is computed
  return _TABLE_BLOCK.sub(block, text)

def _empty(fig, ax, message, path):
  ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
  ax.set_axis_off()
  return _save(fig, path)


def _save(fig, path):
  if path is not None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
  return fig


FIGURES = {
    "accuracy_mnist": lambda d, p: plot_accuracy(d, "mnist", p),
    "accuracy_fashion_mnist": lambda d, p: plot_accuracy(d, "fashion_mnist", p),
    "accuracy_cifar10": lambda d, p: plot_accuracy(d, "cifar10", p),
    "training_time": plot_training_time,
    "inference_time": plot_inference_time,
    "response_time": plot_response_time,
    "update_phase": plot_update_phase,
}


def render_all(results_dir, out_dir) -> list[pathlib.Path]:
  """Writes every figure as PNG and the accuracy tables as Markdown."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name, draw in FIGURES.items():
    path = out_dir / f"{name}.png"
    draw(results_dir, path)
    written.append(path)
  tables = out_dir / "tables.md"
  edge = load(results_dir, "edge_accuracy")
  others = sorted(set(edge.preset) - {"compact"}) if edge is not None else []
  datasets = ("mnist", "fashion_mnist", "cifar10")
  sections = ["## Headline numbers (the paper's text) beside ours\n\n"
              + headline_table(results_dir)]
  for p in ["compact", *others]:
    for d in datasets:
      if p == "compact" or not edge[(edge.preset == p)
                                    & (edge.dataset == d)].empty:
        sections.append(
            f"## {DATASET_TITLES[d]}: top-1 test accuracy (%), 10-crop"
            f"{'' if p == 'compact' else f', {p} preset'}\n\n"
            + accuracy_table(results_dir, d, preset=p))
  for d in ("mnist", "fashion_mnist"):
    sections.append(f"## {DATASET_TITLES[d]}: EdgeCNN1 against the paper's "
                    "cells, and the gap at the smallest N\n\n"
                    + bar_table(results_dir, d))
    sections.append(f"## {DATASET_TITLES[d]}: EdgeCNN1-3 and EdgeCNN0-3 and "
                    "the gap between them at every N, beside the paper's\n\n"
                    + gap_table(results_dir, d))
  for p in others:
    for d in datasets:
      if not edge[(edge.preset == p) & (edge.dataset == d)].empty:
        sections.append(
            f"## {DATASET_TITLES[d]}: the {p} preset beside the compact "
            f"preset on the same seeds (%), 10-crop\n\n"
            + preset_table(results_dir, d, presets=(p, "compact")))
  sections.append("## Training time to the stopping rule (Fig. 10)\n\n"
                  + training_time_table(results_dir))
  for d in datasets:
    sections.append(
        f"## {DATASET_TITLES[d]}: the best validation epoch's weights "
        f"against the last epoch's (%), 10-crop\n\n"
        + weights_table(results_dir, d))
  sections.append("## What each ablation bought: every other CSV's runs "
                  "against the same runs of edge_accuracy.csv\n\n"
                  + ablation_summary(results_dir))
  tables.write_text("\n".join(sections))
  written.append(tables)
  return written


def _plain(frame: pd.DataFrame, preset: str | None,
           condition: str = "") -> pd.DataFrame:
  """Rows of one preset (None: any) with exactly `condition` ("": none)."""
  rows = (frame[frame.preset == preset]
          if preset is not None and "preset" in frame else frame)
  if "condition" in rows:
    rows = rows[rows.condition.fillna("").astype(str) == condition]
  elif condition:
    rows = rows.iloc[:0]
  return rows


def _per_seed(frame, dataset, model, n, metric="test_accuracy_10crop"):
  rows = frame[(frame.dataset == dataset) & (frame.model == model)
               & (frame.num_images == n) & (frame.metric == metric)]
  return rows.groupby("seed")["value"].mean()


def _zeros_rows(results_dir, zeros: str | None, preset: str,
                what: str) -> pd.DataFrame | str | None:
  """The rows a gap borrows EdgeCNN0-m from: `zeros`.csv's rows of `preset`
  without a condition; None when no CSV is named; a one-line message naming
  the CSV and `what` its rows are for when it is missing or empty."""
  if zeros is None:
    return None
  rows = load(results_dir, zeros)
  if rows is None or rows.empty:
    return f"No {zeros}.csv yet (the {what} rows of the gap).\n"
  return _plain(rows, preset)


def _zero_per_seed(plain: pd.DataFrame, borrowed: pd.DataFrame | None,
                   dataset: str, model: str, n: int) -> tuple[pd.Series, bool]:
  """EdgeCNN0-m's accuracy per seed at N: `plain`'s own runs, or where it has
  none at that N, those of `borrowed` (a _zeros_rows frame); and whether they
  were borrowed. EdgeCNN0 trains from scratch on true labels and never meets
  the CloudCNN, so a sweep of EdgeCNN1 alone on another teacher pairs with
  the runs of the same seeds and images on the first."""
  own = _per_seed(plain, dataset, model, n)
  if own.empty and borrowed is not None:
    other = _per_seed(borrowed, dataset, model, n)
    return other, not other.empty
  return own, False


def _paired(a: pd.Series, b: pd.Series, how) -> pd.Series:
  both = a.index.intersection(b.index)
  return pd.Series([how(a[s], b[s]) for s in both], index=both, dtype=float)


def _fmt_mean(values: pd.Series, sign: str = "", unit: str = "") -> str:
  """Headline-table cell: percent mean, ' ± std' for more than one value,
  the unit and the count; 'not yet run' for none."""
  if values.empty:
    return "not yet run"
  spread = f" ± {100 * values.std():.2f}" if len(values) > 1 else ""
  return f"{100 * values.mean():{sign}.2f}{spread}{unit} (n={len(values)})"


def _fmt_points(diffs: pd.Series) -> str:
  return _fmt_mean(diffs, "+", " points")


def _fmt_accuracy(values: pd.Series) -> str:
  return _fmt_mean(values)


def _fmt_relative(values: pd.Series) -> str:
  if values.empty:
    return "not yet run"
  extra = (f", seeds {min(values):+.1%} to {max(values):+.1%}"
           if len(values) > 1 else "")
  return f"{values.median():+.2%} (median of n={len(values)}{extra})"


def headline_table(results_dir, preset: str = "compact") -> str:
  """The paper's headline numbers (headline_results.md) beside ours, as
  Markdown, computed from the result CSVs.

  Accuracy gaps and gains are paired per seed (the same subset of images)
  and given as mean ± std over seeds; time reductions are
  (ours - baseline) / baseline per seed (training) or per run
  (inference, response), then the median.
  """
  paper = paper_values()
  lines = ["| claim | paper | ours | from |", "|---|---|---|---|"]

  edge = load(results_dir, "edge_accuracy")
  edge = _plain(edge, preset) if edge is not None else None
  gaps = [("mnist", 3, 120), ("fashion_mnist", 3, 120), ("cifar10", 10, 500),
          ("mnist", 3, 60000)]
  for dataset, m, n in gaps:
    one, zero = f"EdgeCNN1-{m}", f"EdgeCNN0-{m}"
    theirs = paper_value(paper, "accuracy_gain", dataset, f"{one} vs {zero}",
                         n)
    if theirs is None:
      a, b = (paper_value(paper, "test_accuracy_10crop", dataset, model, n)
              for model in (one, zero))
      theirs = a - b if a is not None and b is not None else None
    ours = ("not yet run" if edge is None else _fmt_points(_paired(
        _per_seed(edge, dataset, one, n), _per_seed(edge, dataset, zero, n),
        lambda x, y: x - y)))
    lines.append(f"| {DATASET_TITLES[dataset]}, {one} - {zero}, N={n:,} | "
                 f"{100 * theirs:+.2f} points | {ours} | edge_accuracy.csv |")
  # Fig. 9: at N=60,000 each EdgeCNN1 learns from CloudCNN's labels, so its
  # teacher's accuracy is the line to read them against.
  cloud = load(results_dir, "train_cloud")
  cloud = _plain(cloud, preset) if cloud is not None else None
  theirs, ours = [], []
  for model, frame in [(f"EdgeCNN1-{m}", edge) for m in (3, 5, 10)] + [
      ("CloudCNN", cloud)]:
    theirs.append(paper_value(paper, "test_accuracy_10crop", "fashion_mnist",
                              model, 60000))
    ours.append("not yet run" if frame is None else _fmt_accuracy(
        _per_seed(frame, "fashion_mnist", model, 60000)))
  lines.append("| Fashion-MNIST, N=60,000: EdgeCNN1-3 / EdgeCNN1-5 / "
               "EdgeCNN1-10 / CloudCNN | "
               + " / ".join(f"{100 * v:.2f}" for v in theirs) + " | "
               + " / ".join(ours) + " | edge_accuracy.csv, train_cloud.csv |")
  for model in ("EdgeCNN1-3", "EdgeCNN0-3"):
    theirs = paper_value(paper, "accuracy_gain_100_to_5000", "cifar10", model)
    ours = ("not yet run" if edge is None else _fmt_points(_paired(
        _per_seed(edge, "cifar10", model, 5000),
        _per_seed(edge, "cifar10", model, 100), lambda x, y: x - y)))
    lines.append(f"| CIFAR-10, {model} gain from N=100 to 5,000 | "
                 f"{100 * theirs:+.2f} points | {ours} | edge_accuracy.csv |")

  timing = load(results_dir, "training_time")
  timing = _plain(timing, preset) if timing is not None else None
  for _, row in paper[paper.metric == "training_time_reduction"].iterrows():
    one, zero = row.model.split(" vs ")
    n = int(row.num_images)
    ours = ("not yet run" if timing is None else _fmt_relative(_paired(
        _per_seed(timing, row.dataset, one, n, "wall_time"),
        _per_seed(timing, row.dataset, zero, n, "wall_time"),
        lambda x, y: (x - y) / y)))
    lines.append(f"| training time, {DATASET_TITLES[row.dataset]}, "
                 f"{row.model}, N={n} | {float(row.value):+.2%} | {ours} | "
                 "training_time.csv |")

  infer = load(results_dir, "inference_time")
  infer = _plain(infer, preset) if infer is not None else None
  for _, row in paper[paper.metric == "inference_time_reduction"].iterrows():
    fast, slow = row.model.split(" vs ")
    found = []
    if infer is not None:
      ms = infer[infer.metric == "inference_ms_per_image"]
      for dataset, group in ms.groupby("dataset"):
        per = group.groupby("model")["value"].median()
        if fast in per and slow in per:
          found.append(f"{(per[fast] - per[slow]) / per[slow]:+.2%} "
                       f"({DATASET_TITLES.get(dataset, dataset)})")
    lines.append(f"| inference time, {row.model}, 2,000 "
                 f"{DATASET_TITLES[row.dataset]} test images | "
                 f"{float(row.value):+.2%} | "
                 f"{'; '.join(found) or 'not yet run'} | inference_time.csv |")

  response = load(results_dir, "response_time")
  claims = [("response_time_reduction_lte_60kb", "lte", 60,
             "response_time_median", "response time, LTE, 60 KB"),
            ("upload_time_reduction_lte_512kb", "lte", 512,
             "upload_time_median", "upload time, LTE, 512 KB"),
            ("inference_time_reduction_60kb", "lte", 60,
             "inference_time_median", "inference time, 60 KB"),
            ("response_time_reduction_wifi", "wifi", 60,
             "response_time_median", "response time, WiFi (ours at 60 KB)")]
  for metric, link, size, ours_metric, text in claims:
    theirs = paper[paper.metric == metric].value.astype(float).iloc[0]
    found = []
    if response is not None:
      rows = response[(response.preset == preset)
                      & (response.metric == ours_metric)]
      rows = _conditions(rows) if not rows.empty else rows
      if not rows.empty:
        rows = rows[(rows.link == link) & (rows.size_kb == str(size))]
        for emulation, group in rows.groupby("emulation"):
          per = group.groupby("model")["value"].median()
          if "EdgeCNN1-3" in per and "CloudCNN" in per:
            found.append(f"{(per['EdgeCNN1-3'] - per['CloudCNN']) / per['CloudCNN']:+.2%}"
                         f" ({emulation})")
    lines.append(f"| {text}, EdgeCNN1-3 on the edge vs CloudCNN | "
                 f"{theirs:+.2%} | {'; '.join(found) or 'not yet run'} | "
                 "response_time.csv |")
  return "\n".join(lines) + (
      f"\n\nOurs: {preset} preset. Points: mean ± std over seeds of the per-seed "
      "difference (same images). Relative: (ours - baseline) / baseline.\n")
