"""The second paper (spec: specs/sleep-continual.md, arXiv 2606.03979): a continual learner that sleeps.
Wake steps accumulate gradients into memory levels that update at their own periods; a sleep first
consolidates what a fast memory holds into a newly unlocked low-rank expert of a slower level (knowledge
seeding), then dreams: samples synthetic data about its context, keeps the dreams whose isolated LoRA
fine-tunes measurably help, and learns to dream better (ReST-EM). Each module holds one piece; import
them directly (e.g. `from lmsleep.continual.lora import finetune`).
"""
