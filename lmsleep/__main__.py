"""`python -m lmsleep …`: the same commands as the `lmsleep` script."""
import sys

from .cli import main

sys.exit(main())
