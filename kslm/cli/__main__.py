"""`python -m kslm.cli VERB …`: the same front door as the `kslm` console script (DDP's launcher re-runs this)."""

from kslm.cli import main

main()
