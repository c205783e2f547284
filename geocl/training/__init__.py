"""Running recipes: the pretraining loop on Lightning, its data and its callbacks."""
