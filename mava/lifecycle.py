"""How a command ends: nothing it started still runs, or touches Python, when the interpreter exits.

Every command's ``__main__`` runs its ``main`` through :func:`run_main`, which ends what the command
started (:func:`end_command`) before the exit code goes back to the shell. The exit codes are the
same for every command (:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`; :func:`exit_codes`
writes them into a ``--help``).

Why (issue 22): ``mava verify`` printed "OK" and then died at exit with ``terminate called without
an active exception`` (exit 134) in a few runs out of a hundred. ``pyarrow.parquet.read_table`` reads
through Arrow's dataset scanner, whose last callbacks run on Arrow's CPU/IO thread pool *after*
``read_table`` has returned; the last of them releases the reader over the Python ``bytes`` of the
file, and so calls ``PyGILState_Ensure`` from a pool thread. When the command returns at that moment
the interpreter is already finalizing: CPython ends a thread that asks for the GIL then with
``pthread_exit``, whose unwinding runs into Arrow's ``noexcept`` ``PyBuffer`` destructor, and the C++
runtime calls ``std::terminate`` (backtrace in the closing note of issue 22). :func:`read_parquet`
reads a file entirely on the calling thread, so nothing is left behind on Arrow's pool.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import textwrap
import threading
from typing import Callable

log = logging.getLogger(__name__)

EXIT_OK = 0       # the command did what was asked
EXIT_FAILED = 1   # the data is damaged or incomplete, or the work failed (named on stderr)
EXIT_USAGE = 2    # bad arguments, a missing input, an unwritable output: one line on stderr, no traceback


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...``) and exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def exit_codes(failed: str, usage: str = "bad arguments, a missing input, an unwritable output") -> str:
    """The ``--help`` epilog of a command: ``failed`` says when it exits 1, ``usage`` when 2."""
    return textwrap.fill(f"exit status: {EXIT_OK} done; {EXIT_FAILED} {failed}; {EXIT_USAGE} usage error ({usage}): "
                         "one line on stderr, no traceback.", width=100, break_on_hyphens=False)


def read_parquet(source, columns: list[str] | None = None):
    """A parquet file (path, file object or ``pyarrow.BufferReader``) as a ``pyarrow.Table``, read
    entirely on the calling thread.

    ``pyarrow.parquet.read_table`` (the dataset scanner) and ``ParquetFile.read(use_threads=True)``
    leave callbacks on Arrow's thread pool that still hold the source after they return; when the
    source is a Python object they need the GIL to drop it, which kills the process with
    ``std::terminate`` if the interpreter is exiting by then (see the module docstring)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(source) as f:
        return f.read(columns=columns, use_threads=False)


def _stop_tqdm_monitors() -> None:
    """Stop tqdm's monitor thread(s): any bar, even a disabled one, starts one that outlives it."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    todo, seen = [std.tqdm], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        monitor = cls.__dict__.get("monitor")
        if monitor is not None:
            monitor.exit()   # sets its event and joins it
            cls.monitor = None


def _stop_ray() -> None:
    """Disconnect from Ray (and stop the local cluster this process started), if it was used."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def end_command() -> None:
    """End what a command may have started that would outlive it: the Ray driver (its gRPC and
    event-loop threads, the local cluster it started) and tqdm's monitor threads; then collect
    garbage, so that objects left in reference cycles (a decoder and its threads) are destroyed while
    the interpreter still runs, not during its finalization. Imports nothing that the command did
    not import; safe to call twice."""
    _stop_ray()
    _stop_tqdm_monitors()
    gc.collect()
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if left:
        log.debug("threads still alive at the end of the command: %s", left)


def run_main(main: Callable[[], int | None]) -> int:
    """Run a command's ``main()``, then :func:`end_command` (also when it raises, e.g. argparse's exit 2),
    and return its exit code (``None`` counts as :data:`EXIT_OK`). Use as ``sys.exit(run_main(main))``."""
    try:
        code = main()
    finally:
        end_command()
    return EXIT_OK if code is None else int(code)
