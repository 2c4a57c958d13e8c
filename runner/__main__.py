"""Command line: ``python -m runner ARTIFACT_DIR [--input NAME=FILE.npy ...] [--bench N]``.

Loads an artifact, runs it on the given inputs (zeros of the right shape when none are given),
prints each output's shape, dtype and value range, optionally saves outputs as ``.npy`` and
times the model. Expected errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import InputMismatchError, RunnerError
from .model import load


def _parse_inputs(pairs: list[str]) -> dict[str, np.ndarray]:
    inputs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise InputMismatchError(f"--input takes NAME=FILE.npy, got {pair!r}")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputMismatchError(f"cannot read input '{name}' from {path}: {err}") from None
    return inputs


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path, help="artifact folder (manifest.json + model.so)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="an input array; repeat for each input (default: zeros)")
    parser.add_argument("--bench", type=int, default=0, metavar="N",
                        help="time N runs after warm-up and print p50/p90/p99 in ms")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before --bench")
    parser.add_argument("--threads", type=int, default=None, help="TVM CPU thread-pool size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device (default: the artifact's own)")
    parser.add_argument("--save", type=Path, default=None, metavar="DIR",
                        help="save each output as DIR/<name>.npy")
    args = parser.parse_args(argv)
    try:
        model = load(args.artifact, device=args.device, num_threads=args.threads)
        if args.input:
            inputs = _parse_inputs(args.input)
        else:
            inputs = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in model.input_info}
            print("no --input given: running on zeros")
        outputs = model.run(inputs)
        for name, value in outputs.items():
            print(f"output {name}: {value.dtype}{list(value.shape)} "
                  f"min={value.min():.6g} max={value.max():.6g} mean={value.mean():.6g}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for name, value in outputs.items():
                safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
                np.save(args.save / f"{safe}.npy", value)
            print(f"outputs saved in {args.save}")
        if args.bench > 0:
            stats = model.benchmark(runs=args.bench, warmup=args.warmup, inputs=inputs)
            print(f"latency over {stats.runs} runs: p50 {stats.p50_ms:.3f} ms, "
                  f"p90 {stats.p90_ms:.3f} ms, p99 {stats.p99_ms:.3f} ms")
    except RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
