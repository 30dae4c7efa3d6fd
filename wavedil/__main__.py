"""``python -m wavedil ...`` (also what ``torchrun -m wavedil train ...`` runs)."""

from .cli import main

main()
