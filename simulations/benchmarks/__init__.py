"""The benchmarks behind BENCHMARKS.md, one module each, run by `python -m simulations bench`.

lifecycle     the lifecycle on the memory store, SQLite and PostgreSQL against a bare SimPy model
growth        whole `simulations run`s at growing sizes (rate and peak memory)
sweep_engine  a sweep in process and on a local Dask cluster of 1 and 2 workers
dashboard     the dashboard's data functions on a big database
bulk          bulk remediation dry runs and executions on a copy of a big database
database      the million-task database the last two (and backtest) measure on
common        the workload, the error, peak memory, a scratch PostgreSQL database of the run's own
cli           the command line
"""
