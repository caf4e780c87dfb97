"""The second paper, "Language Models Need Sleep: Learning to Self-Modify and Consolidate Memories"
(spec `specs/sleep-continual.md`): a continual learner whose MLPs are memory levels updated at different
periods, that sleeps to consolidate what a fast level holds into a new low-rank expert of a slower one
(knowledge seeding: distillation from a frozen teacher plus learning to imitate by REINFORCE), and then
dreams. Each module is one piece of the method and reads beside its section of the spec; import the
modules themselves (`from lmsleep.continual import divergence`).
"""
