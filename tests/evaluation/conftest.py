import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The toy problems here are tiny: intra-op thread hand-offs cost more than the maths (10x on a loaded machine).
    Results do not depend on the thread count; it is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
