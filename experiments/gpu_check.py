"""lmsleep on a CUDA GPU: the checks a CPU cannot make (run when a machine with a GPU is at hand).

    python experiments/gpu_check.py --out OUT      # writes OUT/gpu_check.json, prints a table and a final JSON line

1. The fast-weight op on CUDA: every backend that runs there ("fla" when flash-linear-attention is installed,
   "torch", "chunk") against the float64 CPU reference, forward and gradients, with an initial state and a
   partial chunk; what `auto` picks.
2. Its speed there, fla's Triton kernel against lmsleep's torch path (forward and forward + backward, float32 and
   bfloat16) at the CPU benchmark's two shapes.
3. The model on CUDA: a hybrid SleepLM's training forward and backward against the same model in float64 on the
   CPU; the streaming engine's logits against the forward's; `DecodeStep` against `SleepLM.wake`, bit for bit.
4. A sleep on CUDA: a continual learner (the demo's model, untrained) reads a context and consolidates it
   (`reset_context`): it runs, and its report is finite.

Each check records its error instead of stopping the others.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-12))


def check_op(results: dict) -> None:
    from lmsleep.ops import auto_backend, gated_delta_rule, recurrent_gated_delta_rule

    torch.manual_seed(0)
    B, T, H, K, V = 2, 77, 3, 16, 24  # a partial chunk at the end
    q, k = torch.randn(B, T, H, K, dtype=torch.float64), torch.randn(B, T, H, K, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    g = -torch.rand(B, T, H, dtype=torch.float64) * 0.5
    beta = torch.rand(B, T, H, dtype=torch.float64)
    state = torch.randn(B, H, K, V, dtype=torch.float64) * 0.1
    grad_out, grad_state = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)
    scale = K ** -0.5

    def run(fn, tensors):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out, final = fn(*leaves)
        torch.autograd.backward([out, final], [grad_out.to(out), grad_state.to(final)])
        return out, final, [leaf.grad for leaf in leaves]

    ref = run(lambda *x: recurrent_gated_delta_rule(*x[:5], scale=scale, initial_state=x[5]), [q, k, v, g, beta, state])
    cuda = [t.cuda() for t in (q, k, v, g, beta, state)]
    results["auto_backend_float32"] = auto_backend(*[t.float() for t in cuda])
    rows = {}
    for backend in ("fla", "torch", "chunk"):
        for dtype in (torch.float32, torch.bfloat16):
            name = f"{backend}/{str(dtype).split('.')[-1]}"
            try:
                out = run(lambda *x: gated_delta_rule(*x[:5], scale=scale, initial_state=x[5], output_final_state=True,
                                                      backend=backend), [t.to(dtype) for t in cuda])
                rows[name] = {"output": rel(out[0], ref[0]), "final_state": rel(out[1], ref[1]),
                              "grads": max(rel(a, b) for a, b in zip(out[2], ref[2]))}
            except Exception as error:  # noqa: BLE001 - recorded, the others go on
                rows[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
    results["op_vs_float64_reference"] = rows


def timed(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def check_op_speed(results: dict) -> None:
    from lmsleep.ops import gated_delta_rule

    rows = []
    for shape in [(16, 384, 4, 64), (4, 2048, 8, 128)]:
        B, T, H, D = shape
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            q = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
            k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1).to(dtype)
            v = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
            g = (-torch.rand(B, T, H, device="cuda") * 0.1).to(dtype)
            beta = torch.rand(B, T, H, device="cuda").to(dtype)
            row = {"shape": list(shape), "dtype": str(dtype).split(".")[-1]}
            for backend in ("fla", "torch"):
                try:
                    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, beta)]

                    def forward():
                        with torch.no_grad():
                            gated_delta_rule(*leaves, scale=D ** -0.5, backend=backend)

                    def both():
                        out, _ = gated_delta_rule(*leaves, scale=D ** -0.5, backend=backend)
                        out.sum().backward()

                    row[f"{backend}_fwd_ms"] = round(timed(forward), 3)
                    row[f"{backend}_fwd_bwd_ms"] = round(timed(both), 3)
                except Exception as error:  # noqa: BLE001
                    row[f"{backend}_error"] = f"{type(error).__name__}: {error}"[:300]
            rows.append(row)
    results["op_speed_cuda"] = rows


def check_model(results: dict) -> None:
    from lmsleep import SleepConfig, SleepLM
    from lmsleep.decode_step import DecodeStep
    from lmsleep.stream import SleepStream, memory_with_room

    config = SleepConfig(vocab_size=37, d_model=64, layout="AGAG", n_heads=2, head_dim=32, n_fast_heads=2,
                         fast_key_dim=32, fast_value_dim=32, mlp_hidden=96, window=16, sleep_passes=3,
                         memory_levels=2, expert_pool=3, expert_rank=4)
    torch.manual_seed(0)
    cpu = SleepLM(config).double()
    gpu = SleepLM(config).cuda()
    gpu.load_state_dict({k: v.float() for k, v in cpu.state_dict().items()})
    tokens = torch.randint(0, 37, (3, 40))
    mask = torch.ones_like(tokens)
    loss_cpu = cpu.loss(tokens, tokens.roll(-1, 1), mask)
    loss_cpu.backward()
    loss_gpu = gpu.loss(tokens.cuda(), tokens.roll(-1, 1).cuda(), mask.cuda())
    loss_gpu.backward()
    grads = {name: rel(p.grad, cpu.get_parameter(name).grad) for name, p in gpu.named_parameters() if p.grad is not None}
    results["model_training_vs_float64_cpu"] = {"loss": [float(loss_gpu.detach()), float(loss_cpu.detach())],
                                                "largest_grad_rel_error": max(grads.values()),
                                                "params_with_grad": len(grads)}
    with torch.no_grad():
        forward = gpu(tokens.cuda())
        stream = SleepStream(gpu, 3)
        streamed = torch.cat([stream.feed(tokens[:, t : t + 1].cuda()) for t in range(tokens.shape[1])], dim=1)
    results["stream_vs_forward_rel"] = rel(streamed, forward)

    attention = SleepLM(SleepConfig(vocab_size=37, d_model=64, layout="AA", eviction="none", n_heads=2, head_dim=32,
                                    mlp_hidden=96, memory_levels=2, expert_pool=3, expert_rank=4)).cuda().eval()
    for block in attention.blocks:
        level = block.mlp.levels[0]
        level.unlock()
        with torch.no_grad():
            level.B[0].normal_(0, 0.3)
    with torch.inference_mode():
        _, _, memory = attention.wake(tokens[:, :9].cuda(), attention.empty_memory())
        fast, plain = memory_with_room(memory, 8), memory
        step = DecodeStep(attention)
        equal = step.fast
        for t in range(9, 17):
            logits, fast = step(tokens[:, t : t + 1].cuda(), fast)
            expected, _, plain = attention.wake(tokens[:, t : t + 1].cuda(), plain)
            equal = equal and torch.equal(logits, expected[:, -1])
    results["decode_step_bit_for_bit_on_cuda"] = bool(equal)


def check_sleep(results: dict) -> None:
    from lmsleep import SleepConfig, SleepLM
    from lmsleep.continual import demo
    from lmsleep.continual.learner import ContinualLearner, LearnerConfig

    torch.manual_seed(0)
    model = SleepLM(SleepConfig(vocab_size=105, window=64, **demo.MODEL)).cuda()
    learner = ContinualLearner(model, LearnerConfig(periods=[8, 16], seeding=demo.SEEDING, dreaming=demo.DREAMING,
                                                    prompt=[1]))
    context = torch.randint(0, 105, (1, 20)).cuda()
    questions = torch.randint(0, 105, (9, 12)).cuda()
    learner.read(context)
    started = time.time()
    report = learner.reset_context()
    torch.cuda.synchronize()
    results["sleep_on_cuda"] = {"wall_s": round(time.time() - started, 2),
                                "divergence_before": report.get("divergence_before"),
                                "divergence_after": report.get("divergence_after"),
                                "unlocked": report.get("unlocked")}

    def measure(model):  # a stand-in for τ (bench_dreams.full_sleep's)
        with torch.no_grad():
            return -float(model.loss(questions[:, :-1], questions[:, 1:], torch.ones_like(questions[:, 1:])))

    started = time.time()
    dream = learner.dream(measure, context=context)
    learner.wake(torch.randint(0, 105, (1, 30)).cuda())
    results["dreaming_and_wake_on_cuda"] = {"wall_s": round(time.time() - started, 2), "kept": dream.get("kept"),
                                            "learnt": dream.get("learnt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="folder for gpu_check.json")
    parser.add_argument("--skip", nargs="*", default=[], help="checks to leave out (check_op, check_op_speed, ...)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU: torch.cuda.is_available() is False here")
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        import fla

        results["fla"] = getattr(fla, "__version__", "installed")
    except Exception as error:  # noqa: BLE001
        results["fla"] = f"not importable: {type(error).__name__}"
    os.makedirs(args.out, exist_ok=True)
    checks = [c for c in (check_op, check_op_speed, check_model, check_sleep) if c.__name__ not in args.skip]
    for check in checks:
        started = time.time()
        try:
            check(results)
        except Exception:  # noqa: BLE001 - recorded, the others go on
            results[f"{check.__name__}_error"] = traceback.format_exc()[-1500:]
            print(results[f"{check.__name__}_error"], flush=True)
        results[f"{check.__name__}_s"] = round(time.time() - started, 1)
        print(f"{check.__name__}: done in {results[f'{check.__name__}_s']} s", flush=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:  # after every check: a timeout keeps them
            json.dump(results, f, indent=1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
