"""``python -m triton_rerank`` is the ``triton-rerank`` command."""

import sys

from .cli import main

sys.exit(main())
