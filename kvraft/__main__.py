"""`python -m kvraft ...` is the `kvraft` command (kvraft.cli)."""
import sys

from kvraft.cli import main

sys.exit(main())
