"""continual.seeds.derive: one rule for the seeds of random streams, deterministic and without the
collisions of `seed * p + i` arithmetic."""
import random
import subprocess
import sys

import pytest
import torch

from lmsleep.continual.seeds import BITS, derive


def test_distinct_arguments_give_distinct_seeds():
    seen = {derive(seed, i, j) for seed in range(20) for i in range(40) for j in range(40)}
    assert len(seen) == 20 * 40 * 40
    assert derive(0, 1) != derive(1, 0) and derive(3) != derive(3, 0) and derive(3, 0) != derive(3, 0, 0)
    assert derive(0, 1_000_003) != derive(1, 0)  # where seed * 1_000_003 + i collides
    assert derive(0, "wake", 1) != derive(0, "split", 1) != derive(0, 1)
    assert all(0 <= derive(s, i) < 2**BITS for s in (-5, 0, 2**40) for i in range(10))


def test_derived_seeds_are_the_same_in_another_process_and_feed_every_generator():
    here = [derive(7, "wake", 3), derive(0), derive(2**31 - 1, 12, "x")]
    code = "from lmsleep.continual.seeds import derive; print(derive(7, 'wake', 3), derive(0), derive(2**31 - 1, 12, 'x'))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in there] == here
    torch.Generator().manual_seed(derive(1, 2))
    torch.manual_seed(derive(1, 2))
    assert random.Random(derive(1, 2)).random() == random.Random(derive(1, 2)).random()


@pytest.mark.parametrize("args", [(1.0,), ("0",), (True, 1), (0, 1.5), (0, None)], ids=str)
def test_seeds_and_indices_of_other_types_are_refused(args):
    with pytest.raises(TypeError, match="derive"):
        derive(*args)
