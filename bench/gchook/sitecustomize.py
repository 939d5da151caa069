"""bench/gc_pauses.py's hook, loaded by a gateway started with this folder on PYTHONPATH:
records the length of every garbage collection, by generation. SIGUSR2 forgets what was
recorded (the warm-up), SIGUSR1 writes it to ``$BENCH_GC_OUT.<pid>`` as JSON."""

import gc
import json
import os
import signal
import sys
import time

_out = os.environ.get("BENCH_GC_OUT")
if _out:
    _started: dict[int, float] = {}
    _pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def _record(phase, info):
        generation = info["generation"]
        if phase == "start":
            _started[generation] = time.perf_counter()
        elif generation in _started:
            _pauses[generation].append((time.perf_counter() - _started[generation]) * 1000)

    def _write(*_):
        with open(f"{_out}.{os.getpid()}", "w") as file:
            json.dump({"argv": sys.argv, "pauses_ms": _pauses}, file)

    def _forget(*_):
        for pauses in _pauses.values():
            pauses.clear()

    gc.callbacks.append(_record)
    signal.signal(signal.SIGUSR1, _write)
    signal.signal(signal.SIGUSR2, _forget)
