"""Benchmarks of the daemon against its raw ceiling; see ``bench/run_all.py`` and RESULTS.md."""
