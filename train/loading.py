"""Loading trained Keras models so that nothing is skipped in silence.

Keras 3 loads a ``.keras`` file whose nested containers it cannot match by warning ("Skipping nested
container ... Affected layers will retain their freshly-initialized weights") and going on: the model then
runs with random layers, and nothing says so but a warning line among TensorFlow's. Every place that loads
a model (the export, ``--init-from``, the out-of-fold predictions, distillation) goes through here, where
that warning is an error naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SKIPPED = r"Skipping nested container"


class ModelLoadError(Exception):
    """A model file that cannot be loaded whole; the message names the file and the reason."""


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def _whole(path: str | Path, what: str) -> Iterator[None]:
    """Keras's "skipping" warning as an error, and every load failure as one :class:`ModelLoadError`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=SKIPPED)
        try:
            yield
        except UserWarning as exc:
            raise ModelLoadError(f"{path}: some layers would keep random weights ({_why(exc)})") from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{path}: cannot load {what} ({_why(exc)})") from None


def load_keras(path: str | Path) -> Any:
    """The model saved at ``path`` (uncompiled), every weight loaded, or :class:`ModelLoadError`."""
    import keras

    with _whole(path, "it"):
        return keras.models.load_model(path, compile=False)


def load_weights_into(model: Any, path: str | Path) -> None:
    """Load ``path``'s weights into ``model`` (same architecture), every weight, or :class:`ModelLoadError`."""
    with _whole(path, "its weights"):
        model.load_weights(path)
