"""Times every garbage-collector pass of a process, for ``python -m loadtests soak --gc-pauses``.

Python imports ``sitecustomize`` at start-up from the path; the soak puts this folder on the
``PYTHONPATH`` of the server it starts, so the server's main process and every worker load it. With
``SEQSERVE_GC_PAUSES_DIR`` set, each process appends ``unix time,generation,milliseconds,collected`` lines
for its passes to ``<dir>/<pid>.csv``: the callback only appends to a list (allocating objects inside a
collection is allowed; writing a file per pass would add to what it measures), a daemon thread writes
them out every two seconds. Nothing here runs in a server started any other way.
"""

import gc
import os
import threading
import time

FOLDER = os.environ.get("SEQSERVE_GC_PAUSES_DIR")
WRITE_EVERY_S = 2.0

if FOLDER:
    _lines: list[str] = []
    _started = [0.0]  # perf_counter() when the pass under way began

    def _time_pass(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1000
        _lines.append(f"{time.time():.3f},{info['generation']},{ms:.3f},{info['collected']}\n")

    def _write_out() -> None:
        while True:
            time.sleep(WRITE_EVERY_S)
            batch = _lines[:]
            del _lines[: len(batch)]  # the callback may append meanwhile: keep those for next time
            if batch:
                with open(os.path.join(FOLDER, f"{os.getpid()}.csv"), "a") as f:
                    f.writelines(batch)

    gc.callbacks.append(_time_pass)
    threading.Thread(target=_write_out, name="gc-pauses", daemon=True).start()
