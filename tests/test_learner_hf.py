"""ContinualLearner on a transformers model with levels attached (AttachedLM), tiny and random (no download):
a sleep trains only the new expert; a learner file keeps only what attach added, resumes bit for bit, and is
refused on another base."""
import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import llama  # noqa: E402

from lmsleep.continual import attach  # noqa: E402
from lmsleep.continual.causal_lm import AttachedLM  # noqa: E402
from lmsleep.continual.learner import ContinualLearner, LearnerConfig  # noqa: E402
from lmsleep.continual.levels import level_modules  # noqa: E402

CONFIG = LearnerConfig(periods=[0], prompt=[5, 6], unrelated=[7], dream=False, imitation=True,
                       seeding={"steps": 2, "batch_size": 2, "sample_length": 6, "group_size": 2})


def _model(seed=0):
    torch.manual_seed(seed)
    return AttachedLM(attach(llama(), levels=1, pool=3), name="tiny")


def test_a_sleep_trains_only_the_new_expert():
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    learner = ContinualLearner(model, CONFIG)
    learner.read(torch.tensor([[10, 11, 12, 13, 14]]))
    record = learner.sleep()["consolidation"]
    new = {block: slot for block, slot in record["unlocked"]}
    assert len(new) == 2 and record["divergence_after"] is not None
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".mlp.levels.0." in name and name.split(".")[-1] in ("A", "B", "pool_router") for name in changed)
    for block, level in enumerate(level_modules(model, 0)):
        others = [s for s in range(level.pool_size) if s != new[block]]
        prefix = f"lm.model.layers.{block}.mlp.levels.0."
        for name in ("A", "B", "pool_router"):
            assert torch.equal(getattr(level, name)[others], before[prefix + name][others])


def test_a_learner_file_keeps_only_the_added_parts_and_resumes(tmp_path):
    model = _model()
    learner = ContinualLearner(model, CONFIG)
    learner.read(torch.tensor([[10, 11, 12, 13, 14]]))
    learner.sleep()
    learner.read(torch.tensor([[20, 21, 22]]))
    path = tmp_path / "learner.safetensors"
    learner.save(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert not any(".base." in key or "embed" in key for key in handle.keys())
    assert path.stat().st_size < sum(p.numel() for p in model.parameters()) * 4 / 2  # not the base weights

    resumed_model = _model()  # the same base, fresh levels
    resumed = ContinualLearner.load(resumed_model, path)
    assert torch.equal(resumed.context, learner.context)
    for (name, a), (_, b) in zip(model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name
    learner.sleep(), resumed.sleep()  # the next sleep repeats bit for bit
    for (name, a), (_, b) in zip(model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="was saved for the base"):
        ContinualLearner.load(_model(seed=1), path)
