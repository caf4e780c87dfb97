"""Paper 2, "sleep as consolidation into long-term parameters" (spec: sleep-continual.md): a continual
learner whose memory levels (layers.levels) accumulate gradients while awake and, while asleep,
consolidate what a fast memory holds into newly unlocked experts of a slower one, then dream.

Where each part of the spec lives:

    Memory levels (Eq. 2)              layers/levels.py (the MLP kind: router, base experts, masked low-rank
                                       experts), continual/levels.py (accumulate, apply at the period)
    Sleep stage 1, knowledge seeding   seeding.py (steps 1–7), divergence.py (F, TRL's β), rewards.py
                                       (r_abs, judges, REINFORCE with a group-mean baseline)
    Sleep stage 2, dreaming            dreaming.py (steps 1–4), selection.py (gradient importance, top k + b),
                                       lora.py (isolated LoRA copies, trained batched)
    The learner (wake / sleep / save)  learner.py
    Continual-learning metrics         metrics.py (ACC, BWT, FWT, forgetting)
    Our reproduction                   base.py (a cached base for the facts world), demo.py, cli.py
    Hugging Face causal LMs            hf_levels.py (attach / detach memory levels), real_base.py (load a
                                       real base offline: a model directory, a GGUF file, "smollm2")
"""

# Exported lazily (PEP 562), so that `import lmsleep.continual` (the command line's help) stays free of torch.
_EXPORTS = {
    "attach": "hf_levels", "detach": "hf_levels", "levels_of": "hf_levels",
    "load_causal_lm": "real_base",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
