r"""Draws the paper's figures and tables from result CSVs, ours beside the
paper's values: results/figures/*.png and results/figures/tables.md.

  python -m experiments.plot_figures --results_dir=results --out_dir=results/figures

The notebooks in notebooks/ draw the same figures with the same code
(edgecnn.figures); this command is for scripts and CI.

With --refresh_docs, it also recomputes every table that a Markdown document
marks (edgecnn.figures.refresh_tables), keeping the prose around them:

  python -m experiments.plot_figures --refresh_docs=results/REPRODUCTION.md
"""

from __future__ import annotations

import os
import pathlib

from absl import app
from absl import flags

from experiments import cli
from edgecnn import figures

RESULTS_DIR = flags.DEFINE_string("results_dir", "results",
                                  "Directory holding the result CSVs.")
OUT_DIR = flags.DEFINE_string("out_dir", "results/figures",
                              "Where the PNGs and tables.md go.")
REFRESH_DOCS = flags.DEFINE_list(
    "refresh_docs", [],
    "Markdown files whose tables between '<!-- table: CALL -->' and "
    "'<!-- end table -->' are recomputed from the CSVs of --results_dir "
    "(CALL: one of edgecnn.figures.DOC_TABLES with literal arguments, e.g. "
    "accuracy_table('mnist')). Each file is rewritten only if every table "
    "in it was computed.")


def refresh_doc(path: pathlib.Path, results_dir: str) -> bool:
  """Rewrites path's marked tables; True if its text changed."""
  text = path.read_text()
  try:
    new = figures.refresh_tables(text, results_dir)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(f"--refresh_docs: {path}: {e}") from None
  if new != text:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)  # never a half-written document
  return new != text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (why := figures.missing_results(RESULTS_DIR.value)) is not None:
    raise app.UsageError(f"--results_dir: {why}; pass the directory the "
                         "experiment binaries wrote (default: results)")
  missing = [d for d in REFRESH_DOCS.value if not pathlib.Path(d).is_file()]
  if missing:
    raise app.UsageError(f"--refresh_docs: no such file: {', '.join(missing)}")
  for doc in REFRESH_DOCS.value:  # before drawing anything
    try:
      figures.table_markers(pathlib.Path(doc).read_text())
    except ValueError as e:
      raise app.UsageError(f"--refresh_docs: {doc}: {e}") from None
  for path in figures.render_all(RESULTS_DIR.value, OUT_DIR.value):
    print(path)
  for doc in REFRESH_DOCS.value:
    changed = refresh_doc(pathlib.Path(doc), RESULTS_DIR.value)
    print(f"{doc}: tables {'refreshed' if changed else 'already current'}")


if __name__ == "__main__":
  cli.run(main)
