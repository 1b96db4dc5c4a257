import os

import pytest

# timm must never wait on the Hugging Face hub: tests run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# Under pytest-xdist (`make test` runs `-n 2`) the workers already use the cores: one intra-op thread per process
# (the worker and the stages it starts) instead of every process spinning one thread per core. Read by torch at
# import, so it is set here, before any test module imports torch. No test compares bytes across thread counts:
# those that need a fixed count set OMP_NUM_THREADS for their subprocesses themselves.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The end-to-end modules first (a stable sort: the order within each part is kept). Under pytest-xdist
    (`--dist loadfile`) each worker then starts on the longest modules and the unit-test modules fill in around
    them, instead of both workers ending the run on a `dvc repro` each. The tests do not depend on the order."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine intra-op threads cost far more than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
