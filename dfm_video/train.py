"""Entry point: `deepspeed dfm_video/train.py --config k700.yaml [--set key=value ...] [--resume auto]`.

Also runs under torchrun. The config is loaded and validated before any process group starts, so
a bad key fails at once with a message naming it.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts dfm_video/ first on sys.path, where our `data`, `models`, ...
# folders would shadow same-named top-level modules: drop it and import the installed package.
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

from dfm_video.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
