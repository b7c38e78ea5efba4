"""Running an experiment binary: app.run, with user errors as one line, and
the lazy imports that keep ``--help`` free of TensorFlow.

Free of flags, so every binary may import it (main_job defines its own
--dataset and cannot import common).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

from absl import app

# What a user can mend from the message alone: a missing file or directory
# (data, CloudCNN, payloads), a payload of the wrong CloudCNN or m, labels a
# weightless cloud directory lacks, a binary's own refusal (UserError). A
# binary prints these as one line and exits 1; anything else is a bug and
# keeps its traceback. Named as (module, class) and looked up only if the
# binary imported that module (plot_figures, for one, runs without
# TensorFlow).
USER_ERRORS = (("builtins", "FileNotFoundError"),
               ("experiments.cli", "UserError"),
               ("edgecnn.models", "PayloadError"),
               ("edgecnn.sweeps", "MissingCloudLabels"))


class UserError(Exception):
  """A refusal the binaries themselves raise, printed as one line."""


def lazy_import(name: str) -> types.ModuleType:
  """The module ``name``, loaded when an attribute of it is first read.

  The binaries import the library (and so TensorFlow, seconds on two
  cores) this way: ``--help`` and usage errors then answer without it, and
  main() loads it on first use. Flag choices come from edgecnn.config,
  which needs no TensorFlow. (importlib.util.LazyLoader; on Python 3.11
  the first attribute read must not race between threads, which holds as
  main() reads its modules before it starts any.) Only for edgecnn's own
  modules: Keras, for one, sets itself up on import in ways LazyLoader
  breaks (``keras.layers`` went missing), so binaries import it in main().
  """
  if not name.startswith("edgecnn."):
    raise ValueError(f"lazy_import is for edgecnn's modules; received "
                     f"{name!r}: import it where it is used instead.")
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.find_spec(name)
  if spec is None:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
  spec.loader = importlib.util.LazyLoader(spec.loader)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(sys.modules[parent], child, module)
  return module


def user_errors() -> tuple[type[BaseException], ...]:
  """The classes of USER_ERRORS whose modules are loaded (a lazy module not
  yet read cannot have raised, and reading it would load TensorFlow)."""
  return tuple(getattr(sys.modules[module], name)
               for module, name in USER_ERRORS
               if type(sys.modules.get(module)) is types.ModuleType)


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
