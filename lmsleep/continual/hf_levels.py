"""Memory levels on a Hugging Face causal LM (spec: sleep-continual.md, "Memory levels"; issue 20).

    attach(model)    every chosen decoder layer's `mlp` becomes layers.levels.MemoryLevels holding that MLP
                     (the same module object, no weights copied) as the base expert of its slowest level,
                     beside pools of masked low-rank experts: the model computes exactly what it computed
    levels_of(model) levels_of(model)[ℓ] = level ℓ of every attached layer, fast → slow (what the learner drives)
    detach(model)    puts each original MLP back: the model is the original bit for bit (module objects,
                     parameter names and values, state_dict keys); refused while a level holds experts

With k levels the chain is MemoryLevels' own, h_0 = x, h_ℓ = h_{ℓ−1} + Level_ℓ(h_{ℓ−1}): the pretrained MLP is
the slowest level's base (a pretrained transformer is one frozen level), and the k − 1 faster levels are new
memories with no base expert, only their pools (zero output until a sleep unlocks and trains an expert).

Decoder layers are found where Llama / SmolLM2, Qwen2 and Qwen3 keep them (LAYER_PATHS). What was attached
is read off the model itself (which layers' `mlp` is MemoryLevels), so there is no second record to go stale.
transformers is never imported here: any module tree of that layout works.
"""
from __future__ import annotations

from torch import nn

from .. import validate
from ..layers.levels import GATINGS, MemoryLevel, MemoryLevels

LAYER_PATHS = ("model.layers", "layers")  # *ForCausalLM, and the bare decoder (*Model)


def _find(model: nn.Module, path: str):
    for name in path.split("."):
        model = getattr(model, name, None)
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers (each with an `mlp`), or a clear error naming what was looked for."""
    for path in LAYER_PATHS:
        layers = _find(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(
            isinstance(getattr(layer, "mlp", None), nn.Module) for layer in layers
        ):
            return layers
    looked = " or ".join(f"model.{path}[i].mlp" for path in LAYER_PATHS)
    raise ValueError(f"{type(model).__name__} has no decoder layers with an MLP that attach recognises "
                     f"(looked for {looked}, as in Llama / SmolLM2, Qwen2 and Qwen3)")


def attached(model: nn.Module) -> dict[int, MemoryLevels]:
    """{layer index: the MemoryLevels in its MLP slot} for every attached layer, in layer order ({} if none)."""
    return {i: layer.mlp for i, layer in enumerate(decoder_layers(model)) if isinstance(layer.mlp, MemoryLevels)}


def levels_of(model: nn.Module) -> list[list[MemoryLevel]]:
    """levels_of(model)[ℓ]: level ℓ (0 = fastest) of every attached layer, in layer order."""
    chains = list(attached(model).values())
    if not chains:
        raise ValueError(f"{type(model).__name__} has no memory levels attached; call lmsleep.continual.attach(model) first")
    return [[chain.levels[level] for chain in chains] for level in range(len(chains[0].levels))]


def _chosen(layers, count: int, model_name: str) -> list[int]:
    if layers is None:
        return list(range(count))
    if not isinstance(layers, (list, tuple, range)) or not layers:
        raise ValueError(f"layers must be None (all) or a non-empty list of layer indices, got {layers!r}")
    chosen = [validate.integer(f"layers[{n}]", i) for n, i in enumerate(layers)]
    for n, i in enumerate(chosen):
        if not 0 <= i < count:
            raise ValueError(f"layers[{n}] = {i} is out of range: {model_name} has {count} decoder layers (0..{count - 1})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"layers lists a layer twice: {list(layers)}")
    return sorted(chosen)


def _hidden_size(model: nn.Module) -> int:
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(model).__name__} has no config.hidden_size: attach needs the model's width")
    return size


def attach(model: nn.Module, *, layers=None, levels: int = 1, rank: int = 4, pool: int = 8,
           gating: str = "sigmoid") -> nn.Module:
    """Turn the MLPs of `model`'s decoder layers into memory levels, in place; returns `model`.

    layers: indices of the decoder layers to attach to (default: all); levels: k, the chain's length (the
    pretrained MLP is the slowest level's base); rank, pool: r and the number of pre-allocated low-rank
    experts per level; gating: layers.levels.GATINGS. The pools take the device and dtype of each MLP's
    parameters. Nothing changes what the model computes until an expert is unlocked and trained."""
    blocks = decoder_layers(model)
    name = type(model).__name__
    already = [i for i, layer in enumerate(blocks) if isinstance(layer.mlp, MemoryLevels)]
    if already:
        raise ValueError(f"{name} already has memory levels attached (layers {already}); detach(model) first")
    chosen = _chosen(layers, len(blocks), name)
    validate.positive_int("levels", levels)
    validate.positive_int("rank", rank)
    validate.positive_int("pool", pool)
    validate.one_of("gating", gating, GATINGS)
    d_model = _hidden_size(model)
    for i in chosen:
        mlp = blocks[i].mlp
        like = next(mlp.parameters(), None)
        chain = MemoryLevels(d_model, None, levels, base=mlp, rank=rank, pool=pool, gating=gating,
                             device=None if like is None else like.device, dtype=None if like is None else like.dtype)
        chain.train(mlp.training)
        blocks[i].mlp = chain
    return model


def _holdings(level: MemoryLevel) -> str | None:
    """What a level holds that detaching would lose, or None."""
    slots = level.active_slots()
    if slots:
        return f"experts in slots {slots}"
    if any(bool(t.any()) for t in level.pool_tensors):
        return "non-zero values in its masked pool"
    return None


def detach(model: nn.Module, *, discard: bool = False) -> nn.Module:
    """Put every attached layer's original MLP back, in place; returns `model`.

    Refused (ValueError naming the levels) while a level holds experts, since what they learnt would be lost;
    discard=True drops them anyway: every low-rank expert (its A, B and gate) is lost. The base MLPs are the
    model's own modules and keep whatever they hold (trained in place, if a level's base was trained)."""
    chains = attached(model)
    if not chains:
        raise ValueError(f"{type(model).__name__} has no memory levels attached: nothing to detach")
    if not discard:
        held = [f"layer {i} level {n}: {what}" for i, chain in chains.items()
                for n, level in enumerate(chain.levels) if (what := _holdings(level))]
        if held:
            raise ValueError(f"cannot detach: memory levels hold what they learnt ({'; '.join(held)}); "
                             "detach(model, discard=True) drops them")
    blocks = decoder_layers(model)
    for i, chain in chains.items():
        blocks[i].mlp = chain.levels[-1].base[0]
    return model
