r"""Training time to the stopping rule, EdgeCNN0-m vs EdgeCNN1-m (Fig. 10).

Runs the edge_accuracy sweep (same flags) at the paper's sample counts (Sec.
4.3.4: CIFAR-10 120, MNIST 100, Fashion-MNIST 120 images) and writes to
results/training_time.csv; the `wall_time` rows are the training times
(evaluation excluded). EdgeCNN1-m and EdgeCNN0-m train one after the other
in the same process, so their ratio is measured side by side.

  python -m experiments.training_time --dataset=mnist --seeds=0,1,2
"""

from __future__ import annotations

from absl import flags

from experiments import cli
from experiments import common
from experiments import edge_accuracy

# --help lists edge_accuracy's flags, which this binary runs with.
flags.adopt_module_key_flags(edge_accuracy)

PAPER_N = {"cifar10": 120, "mnist": 100, "fashion_mnist": 120}


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  if edge_accuracy.NUM_IMAGES.value == ["paper"]:
    flags.FLAGS.num_images = [str(PAPER_N[common.DATASET.value])]
  experiment = edge_accuracy.EXPERIMENT.value
  edge_accuracy.dispatch("training_time" if experiment == "edge_accuracy"
                         else experiment)


if __name__ == "__main__":
  cli.run(main)
