"""Training: Lightning tasks per task kind, losses and optimisers by name, epoch metrics, the ``fit``/``test`` CLI."""
