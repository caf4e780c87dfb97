"""The second paper (spec: sleep-continual.md): a continual learner whose sleep consolidates memories into
long-term parameters. base.py: the cached pretrained base of the facts world."""
