"""fastgen's benchmark suite, installed as ``fastgen.benchmarks``: the cases (``bench_<op>.py``, also run by
``pytest benchmarks/ --benchmark-only``), the measuring harness and the runner behind ``fastgen bench``."""
