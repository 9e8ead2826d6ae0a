"""Model definitions: small U-Net-like fully convolutional networks, built by :func:`get_model`.

``seed-fcn`` is the blog post's network exactly: two 3x3 conv + ReLU per level with 32/64/128
filters, 2x2 max-pooling down, 3x3 stride-2 transposed convolutions up with skip concatenation, and a
1x1 sigmoid output ("never softmax"). The other architectures change one thing at a time so each
change can be measured on ``val``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
from keras import layers


@dataclass(frozen=True)
class Architecture:
    filters: tuple[int, ...]
    batchnorm: bool = False
    separable: bool = False  # depthwise-separable 3x3 convs after the first level
    up_kernel: int = 3
    dropout: float = 0.0  # spatial dropout at the bottleneck
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "seed-fcn": Architecture((32, 64, 128), description="the seed's FCN, unchanged (reference)"),
    "seed-fcn-bn": Architecture((32, 64, 128), batchnorm=True, description="seed FCN + batch norm"),
    "unet4": Architecture(
        (16, 32, 64, 128), up_kernel=2, description="4 levels, half the width of the seed at the top"
    ),
    "unet4-bn": Architecture(
        (16, 32, 64, 128),
        batchnorm=True,
        up_kernel=2,
        description="4 levels, half the width of the seed at the top, batch norm",
    ),
    "unet5-bn": Architecture(
        (16, 32, 64, 128, 256), batchnorm=True, up_kernel=2, description="5 levels (wide receptive field), batch norm"
    ),
    "unet5-ds": Architecture(
        (16, 32, 64, 128, 256),
        batchnorm=True,
        separable=True,
        up_kernel=2,
        dropout=0.1,
        description="5 levels, depthwise-separable convs, batch norm: cheap and wide-field",
    ),
    "unet5-ds-wide": Architecture(
        (24, 48, 96, 192, 384),
        batchnorm=True,
        separable=True,
        up_kernel=2,
        dropout=0.1,
        description="unet5-ds at 1.5x width",
    ),
}


def _conv(x, filters: int, arch: Architecture, separable: bool, name: str):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, 3, padding="same", use_bias=not arch.batchnorm, name=name)(x)
    if arch.batchnorm:
        # momentum 0.9, not Keras' 0.99: with ~25 steps an epoch the moving statistics otherwise lag the
        # weights for several epochs, validation loss swings, and early stopping fires on noise.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _block(x, filters: int, arch: Architecture, level: int, name: str):
    separable = arch.separable and level > 0
    x = _conv(x, filters, arch, separable, f"{name}_a")
    return _conv(x, filters, arch, separable, f"{name}_b")


#: Architectures built by a module of their own (``build(img_size, channels, presence) -> keras.Model``).
EXTERNAL_ARCHITECTURES: dict[str, str] = {
    "effl0-unet": ".efficientnet",  # relative: the package installs as edge_seg_train
}

PROBABILITY = "probability"  #: the per-pixel output: (N, h, w, 1) sigmoid
PRESENCE = "presence"  #: the image-level "nodule present" output: (N, 1) sigmoid


def architecture_names() -> list[str]:
    return sorted({*ARCHITECTURES, *EXTERNAL_ARCHITECTURES})


def presence_head(features, name: str = PRESENCE):
    """Image-level "nodule present" score from encoder features (N, h, w, c): pooled, one hidden layer.

    Average and max pooling side by side: the mean says "this view looks like thyroid with a nodule",
    the max keeps a small nodule from being averaged away.
    """
    avg = layers.GlobalAveragePooling2D(name=f"{name}_avg")(features)
    mx = layers.GlobalMaxPooling2D(name=f"{name}_max")(features)
    x = layers.Concatenate(name=f"{name}_pool")([avg, mx])
    x = layers.Dropout(0.3, name=f"{name}_dropout")(x)
    x = layers.Dense(64, activation="relu", name=f"{name}_hidden")(x)
    return layers.Dense(1, activation="sigmoid", name=name)(x)


def get_model(
    name: str = "seed-fcn", img_size: Sequence[int] = (128, 128), channels: int = 3, presence: bool = False
) -> keras.Model:
    """Build architecture ``name`` for ``img_size`` = (height, width) inputs with ``channels`` channels.

    With ``presence`` the model has two outputs, a dict ``{"probability": (N, h, w, 1), "presence": (N, 1)}``;
    without it, the probability map alone (the seed's shape).
    """
    if name in EXTERNAL_ARCHITECTURES:
        import importlib

        module = importlib.import_module(EXTERNAL_ARCHITECTURES[name], __package__)
        return module.build(tuple(img_size), channels, presence)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(architecture_names())}")
    arch = ARCHITECTURES[name]
    inputs = keras.Input((*img_size, channels), name="image")
    x = inputs
    skips = []
    for level, f in enumerate(arch.filters[:-1]):
        x = _block(x, f, arch, level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _block(x, arch.filters[-1], arch, len(arch.filters) - 1, "bottom")
    bottom = x
    if arch.dropout:
        x = layers.SpatialDropout2D(arch.dropout, name="bottom_dropout")(x)
    for level in reversed(range(len(arch.filters) - 1)):
        f = arch.filters[level]
        x = layers.Conv2DTranspose(f, arch.up_kernel, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, f, arch, level, f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name=PROBABILITY)(x)
    if presence:
        return keras.Model(inputs, {PROBABILITY: outputs, PRESENCE: presence_head(bottom)}, name=name)
    return keras.Model(inputs, outputs, name=name)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates for one image through the conv layers (what dominates these models)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D):
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += h * w * cin * (k + cout)
        elif isinstance(layer, layers.DepthwiseConv2D):  # not a Conv2D subclass in Keras 3
            _, h, w, cout = layer.output.shape
            total += h * w * cout * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, layers.Conv2DTranspose):
            _, h, w, cin = layer.input.shape
            cout = layer.filters
            total += h * w * cin * cout * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, layers.Conv2D):
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            total += h * w * cin * cout * layer.kernel_size[0] * layer.kernel_size[1]
    return int(total)
