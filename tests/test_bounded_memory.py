"""Memory bounded forever (issue 18, item 3): however long a learner runs, no level's pool overflows and the
parameter count never changes; a full level consolidates its own experts (LearnerConfig.full_pool) and the
sleep log names what was merged."""
import torch
import pytest

from lmsleep import SleepConfig, SleepLM
from lmsleep.continual.learner import ContinualLearner, LearnerConfig
from lmsleep.continual.levels import level_modules
from lmsleep.layers.levels import ExpertPoolExhausted
from lmsleep.rundir import RunDirectory


def readme_learner(run_dir=None, **changes):
    """The README's learner example (periods [4, 8], pool 8), with `changes` to its LearnerConfig."""
    torch.manual_seed(0)
    model = SleepLM(SleepConfig(layout="AGAG", window=16, memory_levels=2, expert_pool=8))
    fields = {"periods": [4, 8], "seeding": {"steps": 5, "batch_size": 4, "sample_length": 8},
              "dreaming": {"dreams": 4, "dream_length": 8, "keep_top": 1, "keep_random": 1}}
    config = LearnerConfig(**{**fields, **changes})
    return model, ContinualLearner(model, config, run_dir)


def test_the_readme_learner_runs_2000_wake_steps_with_constant_parameters_and_bounded_pools(tmp_path):
    # the README's learner; its sleeps made cheap (one seeding step, no imitation) so that 2,000 steps are quick
    model, learner = readme_learner(tmp_path / "run", seeding={"steps": 1, "batch_size": 2, "sample_length": 4},
                                    imitation=False)
    parameters = sum(p.numel() for p in model.parameters())
    occupancy = []
    generator = torch.Generator().manual_seed(1)
    for step in range(2000):
        learner.wake(torch.randint(0, 32, (2, 9), generator=generator))
        occupancy.append([len(level_modules(model, level)[0].active_slots()) for level in range(2)])
    assert learner.updates.step == 2000
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert max(o[1] for o in occupancy) <= 8 and max(o[0] for o in occupancy) <= 8
    records = [r["sleep"] for r in RunDirectory(tmp_path / "run").records()]
    merges = [r for r in records if r["trigger"] == "level 2 pool full"]
    # level 2 receives one expert per level-1 sleep (500) and holds 8: it merged, each time naming what it merged
    assert len(merges) >= 500 // 8 - 1
    assert all(r["policy"] == "merge" and len(r["merged"]) == 8 * len(model.blocks) for r in merges)
    assert occupancy[-1][1] <= 8 and any(o[1] == 8 for o in occupancy)


@pytest.mark.parametrize("policy", ["merge", "base"])
def test_a_full_level_consolidates_its_own_experts_first(policy, tmp_path):
    model, learner = readme_learner(tmp_path / policy, full_pool=policy, periods=[1, 0])
    level_two = level_modules(model, 1)
    for step in range(8):  # eight level-1 sleeps fill level 2's pool of 8
        learner.wake(torch.randint(0, 32, (2, 9)))
    assert all(len(m.active_slots()) == 8 for m in level_two)
    base_before = [p.clone() for m in level_two for p in m.base.parameters()]
    learner.wake(torch.randint(0, 32, (2, 9)))  # the ninth needs a slot
    occupied = len(level_two[0].active_slots())
    assert occupied == (2 if policy == "merge" else 1)  # merged into one (+ the new), or into the base (+ the new)
    base_moved = any(not torch.equal(a, p) for a, p in zip(base_before, (p for m in level_two for p in m.base.parameters())))
    assert base_moved == (policy == "base")
    record = [r["sleep"] for r in RunDirectory(tmp_path / policy).records() if r["sleep"]["trigger"] == "level 2 pool full"]
    assert len(record) == 1 and record[0]["policy"] == policy and len(record[0]["merged"]) == 8 * len(model.blocks)


def test_the_error_policy_still_says_how_to_enlarge_the_pool():
    model, learner = readme_learner(full_pool="error", periods=[1, 0])
    with pytest.raises(ExpertPoolExhausted, match="expert_pool"):
        for _ in range(9):
            learner.wake(torch.randint(0, 32, (2, 9)))
