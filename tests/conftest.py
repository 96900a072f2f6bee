import pytest
from shared_data import DEMO_BUNDLE, data_dir  # noqa: F401  (the fixture, shared with benchmarks/)


@pytest.fixture(scope="session")
def demo_bundle():
    """The demo bundle shipped in the repository (models/demo-crc7)."""
    from saganet.bundle import load_bundle

    return load_bundle(DEMO_BUNDLE)


@pytest.fixture(scope="session")
def fresh_bundle(tmp_path_factory, demo_bundle):
    """The demo model exported here, now: its AOTInductor package fits this machine's CPU."""
    from saganet.bundle import load_bundle
    from saganet.export import export_bundle
    from saganet.config import TrainConfig
    from saganet.run import save_run

    root = tmp_path_factory.mktemp("bundle")
    save_run(root / "run", demo_bundle.model(), demo_bundle.class_names, demo_bundle.preprocessing, TrainConfig(), {})
    export_bundle(root / "run", root / "bundle", mpp=demo_bundle.mpp, tile_size=demo_bundle.tile_size, log=lambda m: None)
    return load_bundle(root / "bundle")


@pytest.fixture(scope="session", autouse=True)
def _own_choice_cache(tmp_path_factory):
    """"auto" remembers its backend choice (engine/base.py): the tests keep theirs away from ~/.cache."""
    import os

    os.environ["SAGANET_CACHE_DIR"] = str(tmp_path_factory.mktemp("choice-cache"))
