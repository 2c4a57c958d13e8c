"""``python -m compile model=<name> target=<name> [quant=...] [tuning=...]``: the main job."""

from __future__ import annotations

from .cli import main, relative
from .config import CompileJob
from .job import CompileResult, run_compile


def summary(result: CompileResult) -> str:
    """Format the job's outcome for the terminal."""
    m, v = result.metrics, result.verification
    lines = [
        f"model      {result.model}",
        f"target     {result.target}  {result.target_dict}",
        f"layout     {result.layout}",
        f"kernels    {result.kernels_before_fusion} before fusion -> "
        f"{result.kernels_after_fusion} after",
        f"tuning     {result.tuning['tasks_tuned']}/{result.tuning['tasks_total']} kernels with "
        f"tuned schedules (database {result.tuning['database'] or 'none'}, "
        f"sha256 {result.tuning['database_sha256'][:12]})",
        f"time       import {m.get('import_s', 0):.1f} s, passes {m.get('passes_s', 0):.1f} s, "
        f"compile {m.get('compile_s', 0):.1f} s, export {m.get('export_s', 0):.1f} s",
    ]
    q = result.quantization
    if q.get("scheme") == "int8":
        settings = q.get("settings", {})
        kind = ("int8" if settings.get("activation_type") != "int16" else
                f"int8 weights, 16-bit activations ({settings['activation_margin']:g}x the "
                "calibrated ranges)")
        lines.append(f"quant      {kind}: {q['integer_ops']} conv2d/matmul in integers, "
                     f"{q['float_nodes']} kept float; library {q['library_bytes'] / 1e6:.2f} MB "
                     f"= {q['library_vs_fp32_weights']:.2f}x the fp32 weights")
        if q.get("packed_pointwise") or q.get("saturating_pointwise"):
            line = (f"x86 dot    {q['packed_pointwise']} 1x1 convs and matmuls on "
                    f"{q['dot_intrinsic']}")
            if q["saturating_pointwise"]:
                line += (f", {q['saturating_pointwise']} left (weights could saturate "
                         "vpmaddubsw: quant.reduce_range=true makes 7-bit weights)")
            lines.append(line)
        lines.append(f"calibrate  {q['calibration']}")
        rounding = q.get("weight_rounding", {})
        if rounding.get("method") == "gptq":
            lines.append(f"rounding   GPTQ: {rounding['layers']} layers, {rounding['biases']} "
                         "biases corrected; layer output error on the calibration samples "
                         f"{rounding['output_error_ratio']:.2f}x nearest rounding's")
        if q.get("instructions"):
            found = {k: v for k, v in q["instructions"].items() if v}
            lines.append("isa        integer dot-product instructions in model.so: "
                         f"{found or 'none'}")
        if "gate" in q:
            g = q["gate"]
            verdict = "passed" if g["passed"] else "FAILED"
            lines.append(f"gate       {verdict}: {g['metric']} drop {g['drop']:.2%} (max "
                         f"{g['max_drop']:.2%}) vs float32 on {g['validation']}")
            bf16 = g.get(f"bf16_weights_{g['metric']}")
            if bf16 is not None:
                lines.append(f"           for scale: float32 weights rounded to bfloat16 alone "
                             f"drop {1 - bf16:.2%}")
            if "match_stripped" in g:
                lines.append(f"           text identical on {g['match_stripped']:.1%} of lines "
                             "once leading/trailing spaces are stripped")
            if "top1_confident" in g:
                lines.append(f"           top-1 agreement {g['top1_confident']:.1%} on the "
                             f"{g['confident_share']:.0%} of samples where float32's top-1 leads "
                             "its top-2 by >= 0.1 probability")
    if v["status"] == "skipped":
        lines.append(f"verify     skipped: {v['reason']}")
    else:
        lines.append(f"verify     {v['status']} vs {v['reference']}: max abs err "
                     f"{v['max_abs_err']:.3g}, max rel err {v['max_rel_err']:.3g}")
        lines.append(f"input      {v['input']}")
        answer = v["answer"]
        lines.append(f"answer     {answer['ours']} (ONNX Runtime: {answer['reference']})")
        if "latency" in v:
            tvm, ort = v["latency"]["tvm"], v["latency"]["onnxruntime"]
            lines.append(f"latency    p50 {tvm['p50_ms']:.2f} ms (TVM runner) vs "
                         f"{ort['p50_ms']:.2f} ms (ONNX Runtime), {v['latency']['threads']} "
                         f"threads: ratio {tvm['p50_ms'] / ort['p50_ms']:.2f}x")
    lines.append(f"artifact   {relative(result.artifact_dir)}")
    for warning in result.warnings:
        lines.append(f"warning    {warning}")
    return "\n".join(lines)


if __name__ == "__main__":
    main("compile", CompileJob, run_compile, summary)
