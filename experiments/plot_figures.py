r"""Draws the paper's figures and tables from result CSVs, ours beside the
paper's values: results/figures/*.png and results/figures/tables.md.

  python -m experiments.plot_figures --results_dir=results --out_dir=results/figures

The notebooks in notebooks/ draw the same figures with the same code
(edgecnn.figures); this command is for scripts and CI.
"""

from __future__ import annotations

from absl import app
from absl import flags

from edgecnn import figures

RESULTS_DIR = flags.DEFINE_string("results_dir", "results",
                                  "Directory holding the result CSVs.")
OUT_DIR = flags.DEFINE_string("out_dir", "results/figures",
                              "Where the PNGs and tables.md go.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for path in figures.render_all(RESULTS_DIR.value, OUT_DIR.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
