"""Memory levels on a real base, checked by hand (issue 20): SmolLM2-135M-Instruct answers a SQuAD question with
its passage in the prompt (chat template, greedy); with memory levels attached to every layer (k = 1 and 2) the
answer is token for token the same; detach gives the original back (module objects, parameter names and values).
Prints the answers and timings, then one JSON line.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/real_base_check.py [--squad PATH] [--passage 0] [--question 0]
"""
import argparse
import json
import time

import torch

from lmsleep.continual import attach, detach, load_causal_lm

SQUAD = "/work/shared/data/squad/squad_val.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad", default=SQUAD)
    parser.add_argument("--passage", type=int, default=0)
    parser.add_argument("--question", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    with open(args.squad) as f:
        passage = json.load(f)[args.passage]
    qa = passage["questions"][args.question]
    timings = {}
    start = time.perf_counter()
    model, tokenizer = load_causal_lm("smollm2")
    timings["load_s"] = time.perf_counter() - start

    messages = [{"role": "user", "content": f"{passage['context']}\n\nAnswer from the passage above, briefly.\n"
                                            f"Question: {qa['question']}"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_tokens = prompt["input_ids"].shape[1]

    def answer(key):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        timings[key] = time.perf_counter() - start
        return out[0, prompt_tokens:]

    original = answer("generate_original_s")
    names = {name: p.detach().clone() for name, p in model.named_parameters()}
    keys, mlps = list(model.state_dict()), [layer.mlp for layer in model.model.layers]
    same = {}
    for levels in (1, 2):
        start = time.perf_counter()
        attach(model, levels=levels)
        timings[f"attach_k{levels}_s"] = time.perf_counter() - start
        same[f"k{levels}"] = torch.equal(answer(f"generate_attached_k{levels}_s"), original)
        start = time.perf_counter()
        detach(model)
        timings[f"detach_k{levels}_s"] = time.perf_counter() - start
    restored = (all(layer.mlp is mlp for layer, mlp in zip(model.model.layers, mlps))
                and list(model.state_dict()) == keys
                and list(names) == [n for n, _ in model.named_parameters()]
                and all(torch.equal(p, names[n]) for n, p in model.named_parameters()))

    print(f"passage {args.passage} ({passage['title']}), prompt {prompt_tokens} tokens")
    print(f"question:  {qa['question']}")
    print(f"reference: {qa['answer']}")
    print(f"answer:    {tokenizer.decode(original, skip_special_tokens=True)!r}")
    print(f"attached answer equals the original's: {same}; detach restored the original: {restored}")
    for key, seconds in timings.items():
        print(f"  {key:<26} {seconds:7.2f}")
    print(json.dumps({"answer": tokenizer.decode(original, skip_special_tokens=True), "reference": qa["answer"],
                      "same": same, "restored": restored, "parameters": sum(p.numel() for p in model.parameters()),
                      **{k: round(v, 2) for k, v in timings.items()}}))


if __name__ == "__main__":
    main()
