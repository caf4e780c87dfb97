"""Paper 2, "sleep as consolidation into long-term parameters" (spec: sleep-continual.md): a continual
learner whose memory levels (layers.levels) accumulate gradients while awake and, while asleep,
consolidate what a fast memory holds into newly unlocked experts of a slower one, then dream."""
