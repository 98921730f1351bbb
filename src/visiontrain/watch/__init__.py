"""What a person watches while a run trains, as callbacks of the engine: the console (progress bar or lines),
``metrics.jsonl``, ``results.csv``, TensorBoard and the pictures (confusion matrix, mistakes, curves) drawn by
:mod:`.plots`."""
