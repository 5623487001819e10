"""graft's benchmark harness: speed and memory figures, each a ratio or a curve measured within one run.

Run it with ``make bench`` (or ``python -m bench.run``); see ``bench/README.md``
for what each figure measures and why its goal is what it is. It writes
``bench/results.json`` and ``bench/results.md``.
"""
