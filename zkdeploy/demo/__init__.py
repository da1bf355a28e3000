"""A local fleet on one machine: for newcomers (``zkdeploy demo``), the end-to-end tests and the benchmarks."""
