"""`python -m stylevid ...` (and `torchrun -m stylevid ...`) is the `stylevid` command."""

from stylevid.cli.main import main

main()
