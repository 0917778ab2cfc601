"""Comparison 1: model forward in process -- eager PyTorch vs ONNX Runtime (vs channels_last,
torch.compile), for the production stage classifier and the default progression generator.

The production architectures are timed (EfficientNet-B4 at 256 x 256, the default U-Net
generator at 256 x 256) with untrained weights: the cost of a forward pass does not depend on
the values of the weights. The ONNX graphs are exported with the project's own exporter
(:func:`alzprog.artifacts.export_onnx_model`), so the graph timed here is the graph served.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from benchmarks.harness import Measurement, measurement, time_callable, torch_threads

log = logging.getLogger(__name__)

IMAGE_SIZE = 256
NUM_CLASSES = 4


# The smoke test (``--quick``) times these instead: the same code paths on models small enough
# for a test suite on two shared cores. Their figures mean nothing for users.
TINY_CLASSIFIER = {"arch": "efficientnet_b0", "image_size": 64, "width_mult": 0.25, "depth_mult": 0.25}
TINY_GENERATOR = {"base_channels": 8, "depth": 2}


def classifier_config(tiny: bool = False) -> dict[str, Any]:
    """Config of the production stage classifier: EfficientNet-B4 at 256 x 256, four stages."""
    try:
        from alzprog.models.stage_classifier import classifier_config as project_config

        if tiny:
            t = TINY_CLASSIFIER
            return project_config(t["arch"], t["image_size"], width_mult=t["width_mult"], depth_mult=t["depth_mult"],
                                  pretrained="none")
        return project_config("efficientnet_b4", IMAGE_SIZE, pretrained="none")
    except ImportError:
        return {"kind": "stage_classifier", "arch": "efficientnet_b4", "image_size": IMAGE_SIZE,
                "num_classes": NUM_CLASSES, "in_channels": 3}


def build_classifier(tiny: bool = False) -> nn.Module:
    """The production classifier, untrained; torchvision's EfficientNet-B4 if the model file is absent.

    Falling back keeps the forward figures meaningful while the project's model module is not
    importable: the project's classifier is torchvision's B4 with a four-class head.
    """
    try:
        from alzprog.models.stage_classifier import build_stage_classifier
    except ImportError:
        from torchvision.models import efficientnet_b4

        log.warning("alzprog.models.stage_classifier missing; timing torchvision efficientnet_b4")
        return efficientnet_b4(weights=None, num_classes=NUM_CLASSES).eval()
    return build_stage_classifier(classifier_config(tiny)).eval()


def generator_config(variant: str = "default", tiny: bool = False) -> dict[str, Any]:
    """Config of a production transition generator: the ``full`` preset's architecture at 256.

    ``dcgan`` is the original published generator (it has no size settings).
    """
    from alzprog.models.progression_generator import GeneratorConfig
    from alzprog.models.progression_generator import generator_config as project_config

    arch: dict[str, Any] = {"image_size": IMAGE_SIZE}
    if variant == "default":
        try:
            from alzprog.training.config import load_config

            preset = load_config("progression", "full")
            names = {f for f in GeneratorConfig.__dataclass_fields__}
            arch.update({k: v for k, v in preset.items() if k in names and k != "variant"})
        except (ImportError, FileNotFoundError) as exc:
            log.warning("progression full preset unavailable (%s); timing the default generator config", exc)
        arch["image_size"] = IMAGE_SIZE
        if tiny:
            arch.update(TINY_GENERATOR)
    return project_config(variant, **arch)


def build_progression_generator(variant: str = "default", tiny: bool = False) -> nn.Module:
    """An untrained transition generator of ``variant`` (production U-Net or original ``dcgan``)."""
    from alzprog.models.progression_generator import build_generator, init_dcgan_weights

    model = build_generator(generator_config(variant, tiny))
    if variant == "dcgan":
        model.apply(init_dcgan_weights)
    return model.eval()


def classifier_example(batch: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def generator_example(batch: int) -> torch.Tensor:
    """The generator's single-tensor input: channel 0 image in [-1, 1], channel 1 brain mask."""
    image = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
    disc = (((yy - IMAGE_SIZE / 2) ** 2 + (xx - IMAGE_SIZE / 2) ** 2) < (IMAGE_SIZE * 0.4) ** 2).float()
    return torch.cat([image, disc.expand(batch, 1, -1, -1)], dim=1)


def ort_session(onnx_path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export with the project's exporter (dynamic batch axis) and return the path."""
    from alzprog.artifacts import export_onnx_model

    export_onnx_model(model, example, path)
    return path


def _eager_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def _ort_fn(session, x: torch.Tensor) -> Callable[[], Any]:
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}

    def run() -> Any:
        return session.run(None, feed)

    return run


def bench_model(
    name: str,
    model: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    *,
    batches: tuple[int, ...] = (1, 8),
    repeats: int = 20,
    warmup: int = 3,
    max_seconds: float = 20.0,
    variants: tuple[str, ...] = ("eager", "channels_last", "onnxruntime"),
    workdir: Path | None = None,
) -> list[Measurement]:
    """Time ``model`` under each variant at each batch size; ``eager`` is every row's baseline.

    ``compile`` (torch.compile, inductor) is timed only when listed; its compile time goes in the
    row's note, not in the latency. Batch-8 rows get a quarter of the repeats (each call is ~8x
    longer) so the whole comparison stays within its time budget.
    """
    rows: list[Measurement] = []
    threads = torch_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="alzprog-bench-") if workdir is None else None
    wd = Path(tmp.name) if tmp else Path(workdir)  # type: ignore[union-attr]
    try:
        session = None
        if "onnxruntime" in variants:
            t0 = time.perf_counter()
            onnx_path = export_onnx(model, make_input(1), wd / f"{name.replace(' ', '_')}.onnx")
            session = ort_session(onnx_path, threads)
            log.info("%s: ONNX export + session in %.1fs", name, time.perf_counter() - t0)
        compiled = None
        compile_note = ""
        for batch in batches:
            x = make_input(batch)
            # Batch-8 calls are ~8x longer: fewer of them keep the comparison inside its budget.
            reps = repeats if batch == 1 else max(3, repeats // 6)
            case = f"{name} b{batch}"
            for variant in variants:
                note = ""
                if variant == "compile" and batch != batches[0]:
                    continue  # compile is timed at the first batch size only: each new shape recompiles
                if variant == "eager":
                    fn = _eager_fn(model, x)
                elif variant == "channels_last":
                    cl_model = model.to(memory_format=torch.channels_last)
                    fn = _eager_fn(cl_model, x.contiguous(memory_format=torch.channels_last))
                elif variant == "bf16":
                    # What the generator service serves where the CPU runs bf16 natively
                    # (alzprog.precision): channels_last under bfloat16 autocast.
                    from alzprog.precision import autocast_bf16

                    cl_model = model.to(memory_format=torch.channels_last)
                    inner = _eager_fn(cl_model, x.contiguous(memory_format=torch.channels_last))

                    def fn(inner=inner) -> Any:  # noqa: ANN001
                        with autocast_bf16():
                            return inner()
                elif variant == "onnxruntime":
                    fn = _ort_fn(session, x)
                elif variant == "compile":
                    if compiled is None:
                        t0 = time.perf_counter()
                        compiled = torch.compile(model.to(memory_format=torch.contiguous_format), dynamic=False)
                        with torch.inference_mode():
                            compiled(x)
                        compile_note = f"compile {time.perf_counter() - t0:.0f}s"
                        note = compile_note
                    else:
                        t0 = time.perf_counter()
                        with torch.inference_mode():
                            compiled(x)  # a new batch size recompiles (dynamic=False)
                        note = f"recompile {time.perf_counter() - t0:.0f}s"
                    fn = _eager_fn(compiled, x)
                else:
                    raise ValueError(f"unknown variant {variant!r}")
                stats = time_callable(fn, warmup=warmup if batch == 1 else 1, repeats=reps,
                                      items_per_call=batch, max_seconds=max_seconds)
                rows.append(measurement("forward", case, variant, stats, unit="image", batch=batch,
                                        baseline="eager", note=note))
                log.info("%s %-13s p50 %.1f ms  %.2f img/s", case, variant, stats["p50_ms"], stats["throughput"])
                if variant in ("channels_last", "bf16"):
                    model.to(memory_format=torch.contiguous_format)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def run(
    *,
    quick: bool = False,
    repeats: int = 20,
    compile_generators: bool = True,
    compile_classifier: bool = False,
) -> list[Measurement]:
    """Comparison 1 for the classifier (B4) and the default and dcgan generators.

    ``quick`` (the smoke test) times tiny models at batch 1 with 2 repeats and no torch.compile.
    """
    batches = (1,) if quick else (1, 8)
    reps = 2 if quick else repeats
    warm = 1 if quick else 3
    base_variants: tuple[str, ...] = ("eager", "onnxruntime") if quick else ("eager", "channels_last", "onnxruntime")
    rows: list[Measurement] = []
    torch.manual_seed(0)
    tiny = quick
    clf_size = int(classifier_config(tiny)["image_size"])
    rows += bench_model("classifier", build_classifier(tiny), lambda b: classifier_example(b, clf_size),
                        batches=batches, repeats=reps, warmup=warm,
                        variants=base_variants + (("compile",) if compile_classifier and not quick else ()))
    from alzprog.precision import cpu_bf16_native

    gen_variants = base_variants + (("compile",) if compile_generators and not quick else ())
    if cpu_bf16_native():
        gen_variants += ("bf16",)
    rows += bench_model("generator", build_progression_generator("default", tiny), generator_example, batches=batches,
                        repeats=reps, warmup=warm, variants=gen_variants)
    if not quick:
        rows += bench_model("dcgan generator", build_progression_generator("dcgan"), generator_example,
                            batches=(1,), repeats=reps, warmup=warm, variants=gen_variants)
    return rows
