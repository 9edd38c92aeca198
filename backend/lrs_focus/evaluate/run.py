"""`python -m lrs_focus.evaluate.run lrs|mme ...` = `lrs-focus eval lrs|mme ...`.

For launchers that start a module: `torchrun --nproc_per_node 4 -m lrs_focus.evaluate.run lrs ...`.
"""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
