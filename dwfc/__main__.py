"""`python -m dwfc ...` and `torchrun --nproc_per_node N -m dwfc compress ...`."""

from dwfc.cli import main

main()
