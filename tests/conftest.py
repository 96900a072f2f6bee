from shared_data import data_dir  # noqa: F401  (the fixture, shared with benchmarks/)
