"""`python -m kubeq.cli`: the same as the `kubeq` command."""

from kubeq.cli import main

main()
