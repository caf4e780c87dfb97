"""Small builders shared by the tests."""
import pytest
import torch

from lmsleep import SleepConfig, SleepLM


def tiny_config(**changes) -> SleepConfig:
    base = dict(
        vocab_size=23, d_model=32, layout="AGAG", n_heads=2, head_dim=8, n_fast_heads=2, fast_key_dim=8,
        fast_value_dim=6, mlp_hidden=48, window=7, sleep_passes=1,
    )
    return SleepConfig(**{**base, **changes})


def tiny_model(dtype=torch.float64, seed=0, **changes) -> SleepLM:
    torch.manual_seed(seed)
    model = SleepLM(tiny_config(**changes)).to(dtype).eval()
    # Non-trivial norm weights and gates so no test passes by an accident of initialisation.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_tokens(model: SleepLM, batch: int, time: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, time), generator=generator)


def crash_and_resume(cfg, path, monkeypatch, crash_at: int):
    """Train `cfg` in `path` until a KeyboardInterrupt at step `crash_at`, then a Trainer resumed from the last
    checkpoint there (not yet run on)."""
    from lmsleep.train import Trainer

    original_step = Trainer.train_step

    def crash(self):
        if self.step == crash_at:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, path, progress=False).run()
    monkeypatch.setattr(Trainer, "train_step", original_step)
    return Trainer(cfg, path, resume=True, progress=False)
