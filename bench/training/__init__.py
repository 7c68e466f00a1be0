"""The training room: configs, the model registry, one run (train), run records (runs), studies
and the executor that trains their missing runs."""
