"""``python -m triton_rerank`` is the ``triton-rerank`` command."""

import sys

from .app.cli import main

sys.exit(main())
