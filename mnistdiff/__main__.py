"""``python -m mnistdiff`` (also what ``torchrun -m mnistdiff`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
