"""Times every garbage-collector pass of a process, for ``python -m loadtests soak --gc-pauses``.

Python imports ``sitecustomize`` at start-up from the path; the soak puts this folder on the
``PYTHONPATH`` of the server it starts, so the server's main process and every worker load it. With
``SEQSERVE_GC_PAUSES_DIR`` set, each process appends ``unix time,generation,milliseconds,collected`` lines
for its passes to ``<dir>/<pid>.csv``: the callback only appends to a list (allocating objects inside a
collection is allowed; writing a file per pass would add to what it measures), a daemon thread writes
them out every two seconds.

Beside the collector, a heartbeat thread sleeps ``BEAT_S`` at a time and writes ``unix time,milliseconds``
to ``<dir>/<pid>.stalls.csv`` whenever it woke more than ``STALL_S`` late: the process did not run for that
long, whatever the reason (the machine paused it, or one of its threads held the GIL). The soak gives its
load generator the same environment, so a latency spike can be laid at the server's door or the client's.
Nothing here runs in a process started any other way.
"""

import _thread
import gc
import os
import time

# The real sleep, bound now, and bare OS threads outside ``threading``'s registry: the load generator's
# gevent later patches ``time.sleep`` and ``threading`` for its greenlets (with registered threads, locust
# hung at start), and these threads must go on as plain OS threads.
_sleep = time.sleep

FOLDER = os.environ.get("SEQSERVE_GC_PAUSES_DIR")
WRITE_EVERY_S = 2.0
BEAT_S = 0.01
STALL_S = 0.1

if FOLDER:
    _lines: list[str] = []
    _stalls: list[str] = []
    _started = [0.0]  # perf_counter() when the pass under way began

    def _time_pass(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1000
        _lines.append(f"{time.time():.3f},{info['generation']},{ms:.3f},{info['collected']}\n")

    def _append(lines: list[str], suffix: str) -> None:
        batch = lines[:]
        del lines[: len(batch)]  # the callback may append meanwhile: keep those for next time
        if batch:
            with open(os.path.join(FOLDER, f"{os.getpid()}{suffix}"), "a") as f:
                f.writelines(batch)

    def _write_out() -> None:
        while True:
            _sleep(WRITE_EVERY_S)
            _append(_lines, ".csv")
            _append(_stalls, ".stalls.csv")

    def _beat() -> None:
        while True:
            before = time.perf_counter()
            _sleep(BEAT_S)
            late = time.perf_counter() - before - BEAT_S
            if late > STALL_S:
                _stalls.append(f"{time.time() - late:.3f},{late * 1000:.1f}\n")

    gc.callbacks.append(_time_pass)
    open(os.path.join(FOLDER, f"{os.getpid()}.stalls.csv"), "a").close()  # watched, even if it never stalls
    _thread.start_new_thread(_write_out, ())
    _thread.start_new_thread(_beat, ())
