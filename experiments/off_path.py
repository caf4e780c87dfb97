"""Issue 18, item 2: do experts with an off path keep the model's reading? Passages in a row through the
learner as users run it (read, sleep without τ, kept dreams learnt into the new expert), per gating and with
or without unrelated replay; closed-book accuracy on every passage at the end and in-context reading of 64
other passages. Validation passages only (the knowledge benchmark's VALIDATION seed range).

    python experiments/off_path.py --passages 6 --gating sigmoid --unrelated 1 [--seed 0] [--full-pool merge]
"""
import argparse
import json
import time

import torch

from lmsleep.continual.bench import knowledge_setup as kb, knowledge_systems as ks
from lmsleep.continual.base import pretrained_base
from lmsleep.continual.learner import ContinualLearner, LearnerConfig
from lmsleep.continual.levels import set_expert_gating

parser = argparse.ArgumentParser()
parser.add_argument("--passages", type=int, default=6)
parser.add_argument("--gating", default="sigmoid")
parser.add_argument("--unrelated", type=int, default=1)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--pool", type=int, default=24)
parser.add_argument("--full-pool", default="merge")
parser.add_argument("--beta", type=float, default=None)
parser.add_argument("--lam", type=float, default=None)
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--dream", type=int, default=1)
parser.add_argument("--closed", type=int, default=0, help="closed-book replay (LearnerConfig.closed_book_replay)")
parser.add_argument("--gate-scale", type=float, default=None)
args = parser.parse_args()
if args.gate_scale is not None:
    import lmsleep.layers.levels as levels_module
    levels_module.GATE_SCALE = args.gate_scale
torch.set_num_threads(1)
started = time.process_time()
model, _ = pretrained_base(kb.WORLD, {**kb.MODEL, "memory_levels": 2}, None, kb.BASE_STEPS, progress=False)
set_expert_gating(model, args.gating)
if args.pool != kb.MODEL["expert_pool"]:  # a smaller pool: the same weights, fewer slots
    from lmsleep.continual.levels import level_modules
    for level in range(2):
        for m in level_modules(model, level):
            m.A.data, m.B.data = m.A.data[: args.pool].clone(), m.B.data[: args.pool].clone()
            m.pool_router.data = m.pool_router.data[: args.pool].clone()
            m.active = m.active[: args.pool].clone()
    import dataclasses
    model.config = dataclasses.replace(model.config, expert_pool=args.pool)
seeding = dict(kb.SEEDING, steps=args.steps)
if args.beta is not None:
    seeding["beta"] = args.beta
if args.lam is not None:
    seeding["lam"] = args.lam
config = LearnerConfig(periods=[0, 0], seeding=seeding, dreaming=kb.DREAMING, prompt=[ks.SEP], blank=ks.PAD,
                       unrelated=[ks.PAD] if args.unrelated else None, learn_dreams="expert", dream=bool(args.dream),
                       closed_book_replay=bool(args.closed),
                       dream_lr=1e-3, full_pool=args.full_pool, seed=args.seed)
learner = ContinualLearner(model, config, judge=ks.JUDGE)
probe = kb.probe(kb.PROBE_VALIDATION + args.seed)
reading_base = ks.reading(model, probe)
raws = [kb.world(kb.VALIDATION + kb.MAX_PER_SEED * args.seed + i) for i in range(args.passages)]
just, opens = [], []
for raw in raws:
    learner.read(ks.passage(raw))
    record = learner.sleep()
    just.append(ks.accuracy(model, raw))
    opens.append((record["consolidation"]["opens_on_content"], record["consolidation"]["opens_on_unrelated"]))
final = [ks.accuracy(model, raw) for raw in raws]
out = {"args": vars(args), "accuracy": sum(final) / len(final), "just_learnt": sum(just) / len(just),
       "reading_base": reading_base, "reading": ks.reading(model, probe), "opens": opens,
       "cpu_s_per_passage": (time.process_time() - started) / len(raws)}
out["forgetting"] = out["reading_base"] - out["reading"]
print(json.dumps(out))
