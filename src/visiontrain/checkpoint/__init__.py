"""The checkpoint contract every later command stands on: weights in safetensors with a JSON sidecar that says
how to rebuild and use them (:mod:`~visiontrain.checkpoint.format`), the checks a file passes before any of it is
used (:mod:`~visiontrain.checkpoint.validate`), and reading weights from any file people bring — safetensors,
a PyTorch state_dict (never unpickled in full unless the user trusts it), or a run
(:mod:`~visiontrain.checkpoint.weights`).
"""
