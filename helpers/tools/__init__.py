"""The tools on top of the series: the benchmarks, gpu-check, running processes and notebooks.
Nothing the notebooks teach imports them (an import-linter contract keeps it so)."""
