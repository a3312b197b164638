"""The ``cryosgd`` command line: a thin layer over the library (options in :mod:`.parser`, the commands in
:mod:`.commands`).

User errors (bad files, bad values) end with one line, ``cryosgd: error:
<file>: <problem>``, exit status 2 and no traceback.
"""
from __future__ import annotations

import os
import sys
import warnings

from ..runtime import launch, memory, parallel
from .commands import _settings_from  # noqa: F401  (used by tests and notebooks)
from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv=None) -> int:
    from ..io import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    memory.reuse_freed_memory()
    if getattr(args, "nproc", 1) > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return launch.run_spawned(main, argv, args.nproc)
    device = getattr(args, "device", "cpu")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    parallel.init_from_environment(device)
    show = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, *a, **k: print(f"cryosgd: warning: {msg}", file=sys.stderr)
        try:
            args.func(args)
        except InputError as err:
            return launch.report_failure(f"cryosgd: error: {err}", 2)
        except KeyboardInterrupt:
            print("cryosgd: interrupted", file=sys.stderr)
            return 130
        except parallel.DistributedFailure as err:
            return launch.report_failure(f"cryosgd: error: {err}; the last checkpoint is intact: run the same "
                                         "command again (with any number of processes) to resume", 3)
        finally:
            warnings.showwarning = show
    return 0
