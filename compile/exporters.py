"""Export zoo models that ship as PyTorch weights to ONNX (needs the ``torch`` extra).

torchvision has no CPU build on the package index these machines reach, so each architecture
is declared here with torchvision's module names, and the weights file loads with
``load_state_dict(strict=True)``: every tensor name and shape must match.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from .errors import ConfigError, ModelFetchError

log = logging.getLogger(__name__)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConfigError("this model is exported from PyTorch weights and needs torch: "
                          "pip install -e '.[torch]' (torch==2.13.0, CPU build)") from None
    return torch


def mobilenet_v2():
    """MobileNetV2 (Sandler et al. 2018) as ``torchvision.models.mobilenet_v2`` (width 1.0).

    Returns
    -------
    torch.nn.Module
        Input float32 ``[N, 3, 224, 224]`` NCHW; output ``[N, 1000]`` ImageNet logits.
    """
    torch = _import_torch()
    nn = torch.nn

    def conv_bn_act(inp, out, kernel=3, stride=1, groups=1):
        # torchvision.ops.Conv2dNormActivation with ReLU6: Sequential(conv, bn, relu6).
        return nn.Sequential(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [conv_bn_act(inp, hidden, kernel=1)] if expand_ratio != 1 else []
            layers += [conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, channels c, repeats n, first stride s), torchvision's table.
        SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self, num_classes=1000):
            super().__init__()
            features = [conv_bn_act(3, 32, stride=2)]
            inp = 32
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn_act(inp, 1280, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.classifier(x)

    return MobileNetV2()


#: exporter name (``model.exporter``) -> (architecture builder, input name, input shape, output)
EXPORTERS = {
    "mobilenet_v2": (mobilenet_v2, "input", (1, 3, 224, 224), "logits"),
}


def export_torch_model(exporter: str, weights: Path, dest: Path, opset: int) -> None:
    """Load weights into the named architecture and export it to ONNX (written atomically).

    Parameters
    ----------
    exporter : str
        A key of :data:`EXPORTERS`.
    weights : Path
        A PyTorch ``state_dict`` file (``.pth``).
    dest : Path
        The ONNX file to write.
    opset : int
        ONNX opset of the export (TorchScript exporter, ``dynamo=False``).

    Raises
    ------
    ConfigError
        Unknown exporter, or torch not installed.
    ModelFetchError
        The weights do not fit the architecture.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"model.exporter={exporter!r} is unknown; "
                          f"choose one of {sorted(EXPORTERS)}")
    torch = _import_torch()
    build, input_name, shape, output_name = EXPORTERS[exporter]
    net = build()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFetchError(f"{weights.name} does not fit {exporter}: "
                              f"{str(err).splitlines()[0]}") from None
    net.eval()
    log.info("exporting %s to ONNX opset %d", exporter, opset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(net, (torch.zeros(shape),), tmp, opset_version=opset,
                              input_names=[input_name], output_names=[output_name],
                              dynamo=False)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
