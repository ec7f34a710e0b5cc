"""`python -m video3d_fast ...` is the `video3d-fast` command (video3d_fast/cli.py)."""
import sys

from .cli import main

sys.exit(main())
