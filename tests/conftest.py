import os

import pytest

# timm must never wait on the Hugging Face hub: tests run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine intra-op threads cost far more than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
