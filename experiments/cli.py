"""Running an experiment binary: app.run, with user errors as one line.

Free of flags, so every binary may import it (main_job defines its own
--dataset and cannot import common).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app

# What a user can mend from the message alone: a missing file or directory
# (data, CloudCNN, payloads), a payload of the wrong CloudCNN or m, labels a
# weightless cloud directory lacks. A binary prints these as one line and
# exits 1; anything else is a bug and keeps its traceback. Named as (module,
# class) and looked up only if the binary imported that module (plot_figures,
# for one, runs without TensorFlow).
USER_ERRORS = (("builtins", "FileNotFoundError"),
               ("edgecnn.models", "PayloadError"),
               ("edgecnn.sweeps", "MissingCloudLabels"))


def user_errors() -> tuple[type[BaseException], ...]:
  """The classes of USER_ERRORS whose modules are loaded."""
  return tuple(getattr(sys.modules[module], name)
               for module, name in USER_ERRORS if module in sys.modules)


def run(main) -> None:
  """app.run(main), with the user errors above reported without a traceback."""

  def guarded(argv):
    try:
      return main(argv)
    except user_errors() as e:
      name = pathlib.Path(sys.argv[0]).stem
      print(f"{name}: error: {e}", file=sys.stderr)
      sys.exit(1)

  app.run(guarded)
