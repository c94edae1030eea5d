"""Every test starts from the same random state, so a test's random inputs are the same on every run."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
