"""Where the int8 classifier's error comes from: one stage quantized at a time, the error profile along
the backbone, and how much smaller the feature error would have to be to pass the admission check.

    .venv/bin/python -m benchmarks.int8_diagnose MODEL_DIR --split SPLIT_DIR [--calibration-slices 128]

Everything is quantized as ``alzprog serving quantize`` does (``alzprog.quantization``: QOperator,
per-channel weights, MinMax over training slices of the model's own split) and checked with the same
``compare_outputs`` on the split's held-out test slices. Three parts:

- ``stages``: the whole backbone int8, then only one stage int8 (``keep_fp32`` = the other stages);
- ``profile``: a QDQ graph, its dequantized tensor after every block against fp32 (relative RMS error
  on 8 test slices: the error carried into that point);
- ``scale``: the head run on ``f32 + a * (f_int8 - f32)`` for a range of ``a``: the check as if the
  full int8 feature error were ``a`` times as large.

Prints the figures and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import write_result

SCALES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)


def _figures(check) -> dict:  # noqa: ANN001 - Int8Check
    return {"passed": check.passed, "macro_f1_int8": check.macro_f1_int8, "macro_f1_fp32": check.macro_f1_fp32,
            "max_abs_prob": check.max_abs_prob, "mean_abs_prob": check.mean_abs_prob,
            "ood_flag_changes": None if check.ood is None else round(1 - check.ood["flag_agreement"], 4),
            "reasons": check.reasons}


def _line(tag: str, f: dict) -> str:
    return (f"{tag:>22}: {'pass' if f['passed'] else 'FAIL'}  F1 {f['macro_f1_fp32']:.3f} -> {f['macro_f1_int8']:.3f}  "
            f"max|dp| {f['max_abs_prob']:.4f}  mean|dp| {f['mean_abs_prob']:.5f}  OOD flags changed {f['ood_flag_changes']}")


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnx.utils

    from alzprog.data.split import load_split
    from alzprog.ood import load_reference
    from alzprog.quantization import (DEFAULT_CALIBRATION_SLICES, SliceCalibrationReader, calibration_rows,
                                      canonical_slices, compare_outputs, cpu_session, model_inputs, quantize_graph,
                                      run_graph, serving_graph)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--calibration-slices", type=int, default=DEFAULT_CALIBRATION_SLICES)
    ap.add_argument("--parts", nargs="+", choices=("stages", "profile", "scale"), default=["stages", "profile", "scale"])
    args = ap.parse_args(argv)

    config = json.loads((args.model_dir / "config.json").read_text())
    ref = load_reference(args.model_dir)
    frames = load_split(args.split, ("train", "test"))
    test = frames["test"].reset_index(drop=True)
    rows = calibration_rows(frames["train"], args.calibration_slices)
    reader = SliceCalibrationReader(canonical_slices(list(rows["path"].astype(str))), config)
    images = canonical_slices(list(test["path"].astype(str)))
    batches = [model_inputs(images[i:i + 16], config) for i in range(0, len(images), 16)]
    graph = serving_graph(args.model_dir)
    labels, subjects = test["stage_index"].to_numpy(), test["subject"].astype(str).to_numpy()
    temperature = float(config.get("temperature", 1.0))
    fp32 = run_graph(cpu_session(graph), batches)
    stages = sorted({m.group(0) for n in onnx.load_from_string(graph).graph.node
                     if (m := re.match(r"/features\.\d+/", n.name))}, key=lambda p: int(p.split(".")[1].rstrip("/")))
    out: dict = {"model_dir": str(args.model_dir), "calibration_slices": len(reader), "stages": stages}

    with tempfile.TemporaryDirectory(prefix="int8-diag-") as tmp:
        full = quantize_graph(graph, Path(tmp) / "all.onnx", reader)
        int8 = run_graph(cpu_session(full), batches)
        if "stages" in args.parts:
            out["stages_int8"] = {"all": _figures(compare_outputs(fp32, int8, labels, subjects, temperature, ood_reference=ref))}
            print(_line("all stages int8", out["stages_int8"]["all"]), flush=True)
            for p in stages:
                path = quantize_graph(graph, Path(tmp) / "one.onnx", reader, keep_fp32=[s for s in stages if s != p])
                f = _figures(compare_outputs(fp32, run_graph(cpu_session(path), batches), labels, subjects, temperature,
                                             ood_reference=ref))
                out["stages_int8"][p] = f
                print(_line(f"only {p} int8", f), flush=True)
        if "profile" in args.parts:
            qdq = onnx.load(str(quantize_graph(graph, Path(tmp) / "qdq.onnx", reader, fmt="qdq")))
            names = {o for n in qdq.graph.node for o in n.output}
            # a block's output: a projection convolution or a residual addition (dequantized in the QDQ graph)
            ends = [n.output[0] for n in onnx.load_from_string(graph).graph.node
                    if re.search(r"(project/conv/Conv|/Add)$", n.name) and n.name.count("/") == 3
                    and n.output[0] + "_DequantizeLinear_Output" in names]
            ends = [t for i, t in enumerate(ends) if i + 1 == len(ends) or ends[i + 1].rsplit("/", 2)[0] != t.rsplit("/", 2)[0]
                    or not t.endswith("project/conv/Conv_output_0")]
            m32 = onnx.load_from_string(graph)
            for m, suffix in ((m32, ""), (qdq, "_DequantizeLinear_Output")):
                m.graph.output.extend(onnx.helper.make_tensor_value_info(t + suffix, onnx.TensorProto.FLOAT, None) for t in ends)
            x = model_inputs(images[:8], config)
            a = cpu_session(m32.SerializeToString()).run([t for t in ends], {"input": x})
            b = cpu_session(qdq.SerializeToString()).run([t + "_DequantizeLinear_Output" for t in ends], {"input": x})
            out["profile_rel_rms"] = {}
            for t, u, v in zip(ends, a, b):
                rel = float(np.sqrt(((u - v) ** 2).mean() / (u ** 2).mean()))
                out["profile_rel_rms"][t] = round(rel, 4)
                print(f"  {t:60s} rel RMS error {rel:.4f}", flush=True)
        if "scale" in args.parts and int8[1] is not None:
            m = onnx.load_from_string(graph)
            feat, logit = m.graph.output[1].name, m.graph.output[0].name
            src = Path(tmp) / "fp32.onnx"
            src.write_bytes(graph)
            onnx.utils.extract_model(str(src), str(Path(tmp) / "head.onnx"), [feat], [logit])
            head = cpu_session(Path(tmp) / "head.onnx")
            out["scaled_feature_error"] = {}
            for s in SCALES:
                f = (fp32[1] + s * (int8[1] - fp32[1])).astype(np.float32)
                logits = np.asarray(head.run(None, {feat: f})[0], np.float64)
                fig = _figures(compare_outputs(fp32, (logits, f), labels, subjects, temperature, ood_reference=ref))
                out["scaled_feature_error"][str(s)] = fig
                print(_line(f"feature error x{s}", fig), flush=True)
    path = write_result(out, "int8-diagnose")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
