"""Starting a command in several processes on this machine (``--nproc N``), and reporting a failed
process's one line where the user, or torchrun, will see it."""
from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import parallel

__all__ = ["run_spawned", "report_failure"]


def _spawned(index: int, main: Callable, argv: list, world: int, port: int, errors: str) -> None:
    """Process ``index`` of ``world``: ``main(argv)`` as a client of the store the parent holds (the agent
    store of torchrun's protocol)."""
    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "TORCHELASTIC_USE_AGENT_STORE": "True", "CRYOSGD_ERROR_DIR": errors})
    code = main(argv)
    if code:
        sys.exit(code)


def _reports(errors: Path) -> dict[int, tuple[int, str]]:
    """``{rank: (exit code, line)}`` of the processes that reported a failure."""
    out = {}
    for path in errors.glob("rank*"):
        code, _, line = path.read_text().partition(" ")
        out[int(path.name[4:])] = (int(code), line.strip())
    return out


def _cause(reports: dict[int, tuple[int, str]], exitcodes: list[int | None], resume: str) -> tuple[int, str] | None:
    """The failure to show, first cause first: a process's own error (bad input, code other than 3), then
    a process that died without a word (killed, crashed: the others' lost connection follows from it),
    then a process that only saw another fail (code 3), lowest rank first in each kind.  Processes that the
    launcher itself stopped (SIGTERM, after the first failure) are not causes."""
    own = [r for r in sorted(reports) if reports[r][0] != 3]
    if own:
        return reports[own[0]]
    silent = [r for r, c in enumerate(exitcodes) if r not in reports and c not in (0, None, -signal.SIGTERM)]
    if silent:
        r, code = silent[0], exitcodes[silent[0]]
        how = f"{code} ({signal.Signals(-code).name})" if -code in signal.valid_signals() else f"{code}"
        return 3, f"cryosgd: error: process {r} of {len(exitcodes)} exited with code {how}; {resume}"
    return reports[min(reports)] if reports else None


def run_spawned(main: Callable, argv: list, nproc: int) -> int:
    """``--nproc N``: ``main(argv)`` (the same command) in N processes on this machine; the exit status.

    The parent holds the rendezvous store on a port the system picks and keeps while it lives, so
    runs started at the same time cannot collide on a port (no free-port probe that another run
    could take before the store binds it).  A failed process's first error line is what the user
    sees: processes report their one line to the parent instead of each printing it, and the parent
    shows the first cause (see ``_cause``), not the lost connection the other processes then report.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "terminating process ..."
    minutes = float(os.environ.get("CRYOSGD_DIST_TIMEOUT_MIN", "10"))
    store = dist.TCPStore("127.0.0.1", 0, nproc, True, datetime.timedelta(minutes=minutes), wait_for_workers=False)
    resume = "the last checkpoint is intact: run the same command again (with any number of processes) to resume"
    with tempfile.TemporaryDirectory(prefix="cryosgd-errors-") as tmp:
        errors = Path(tmp)
        # each process sees WORLD_SIZE > 1, so its own --nproc does not spawn again
        context = mp.start_processes(_spawned, args=(main, argv, nproc, store.port, tmp), nprocs=nproc,
                                     join=False, start_method="spawn")
        exited = None  # what spawn saw first, shown when no process gives a cause
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException as err:
            exited = (3, f"cryosgd: error: process {err.error_index} of {nproc} exited with code {err.exit_code}; "
                         f"{resume}")
        except mp.ProcessRaisedException as err:
            last = str(err).strip().splitlines()[-1]
            print(f"cryosgd: error: process {err.error_index} of {nproc} failed ({last}); {resume}",
                  file=sys.stderr)
            return 3
        # join() has waited for every process: their reports and exit codes are final (none after a clean run)
        cause = _cause(_reports(errors), [p.exitcode for p in context.processes], resume) or exited
    del store
    if cause is not None:
        print(cause[1], file=sys.stderr)
        return cause[0]
    return 0


def report_failure(line: str, code: int) -> int:
    """Print a failure's one line, or hand it to the launcher: the parent of ``--nproc`` or torchrun."""
    spawned = os.environ.get("CRYOSGD_ERROR_DIR")
    if spawned:  # the parent prints the first rank's line, once
        Path(spawned, f"rank{parallel.rank() if parallel.active() else os.environ.get('RANK', '0')}").write_text(
            f"{code} {line}\n")
        return code
    print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # torchrun shows this line in its failure summary instead of "<N/A>"
        with open(error_file, "w") as fh:
            json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                   "timestamp": str(int(time.time()))}}}, fh)
    return code
