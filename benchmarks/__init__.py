"""The benchmark harness of issue 6: ``python benchmarks/run.py`` (see benchmarks/README.md)."""
