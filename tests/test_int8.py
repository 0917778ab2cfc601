"""Int8 stage classifier: static quantization, the admission check and CLASSIFIER_PRECISION.

A tiny classifier is trained for real on the tiny phantom and registered in the session's MLflow
server; ``alzprog serving quantize`` builds its int8 graph, checks it on the split's test subjects
and records both on the version. The check must refuse when its bounds are violated (a
calibration on blank slices, a tolerance no int8 graph meets), and the classifier service must
serve int8 only where the recorded check passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from service_helpers import wait_client_ready

from alzprog.cli import main as cli_main
from alzprog.constants import CLASSIFIER_MODEL_NAME, STAGES

TINY = ["--preset", "quick", "--image-size", "32", "--phase1-epochs", "1", "--phase2-epochs", "1", "--no-progress",
        "--threads", "1"]
PASSING_ALIAS = "int8-test-passing"
FAILING_ALIAS = "int8-test-failing"


@pytest.fixture(scope="module")
def trained(mlflow_server, tiny_split, tmp_path_factory) -> dict[str, str]:
    """A tiny classifier trained and registered (v_pass), and the same files registered again (v_fail)."""
    from alzprog import registry

    out = tmp_path_factory.mktemp("int8_clf")
    assert cli_main(["train", "classifier", "--split", str(tiny_split), "--out", str(out), *TINY]) == 0
    run_id = json.loads((out / "train_report.json").read_text())["run_id"]
    [mv] = registry.client().search_model_versions(f"run_id='{run_id}'")
    v_pass = str(mv.version)
    v_fail = registry.register_artifact(out / "model", CLASSIFIER_MODEL_NAME, run_id)
    registry.set_alias(CLASSIFIER_MODEL_NAME, PASSING_ALIAS, v_pass)
    registry.set_alias(CLASSIFIER_MODEL_NAME, FAILING_ALIAS, v_fail)
    return {"dir": str(out / "model"), "pass": v_pass, "fail": v_fail, "run_id": run_id}


@pytest.fixture(scope="module")
def quantized(trained, tiny_split, tmp_path_factory) -> dict:
    """``alzprog serving quantize`` on v_pass: the command's JSON and the recorded check."""
    from alzprog import registry

    keep = tmp_path_factory.mktemp("int8_out")
    rc = cli_main(["serving", "quantize", "--model", CLASSIFIER_MODEL_NAME, "--version", trained["pass"],
                   "--split", str(tiny_split), "--calibration-slices", "16", "--out", str(keep)])
    return {"rc": rc, "record": registry.int8_record(CLASSIFIER_MODEL_NAME, trained["pass"]), "out": keep}


def test_quantize_records_a_passing_check_beside_the_model(trained, quantized, tiny_split):
    from alzprog import registry
    from alzprog.hashing import sha256_file
    from alzprog.quantization import INT8_TOLERANCE

    record = quantized["record"]
    assert record is not None, "the check is recorded on the version"
    check = record["check"]
    assert quantized["rc"] == 0 and check["passed"], check["reasons"]
    assert registry.get_version_tags(CLASSIFIER_MODEL_NAME, trained["pass"])[registry.INT8_PASSED_TAG] == "true"
    assert check["tolerance"] == INT8_TOLERANCE
    assert record["calibration"]["slices"] == 16
    test = pd.read_csv(tiny_split / "test.csv")
    assert check["n_test_slices"] == len(test) and check["n_test_subjects"] == test["subject"].nunique()
    assert abs(check["macro_f1_int8"] - check["macro_f1_fp32"]) <= INT8_TOLERANCE["macro_f1_diff"]
    assert 0 < check["max_abs_prob"] <= INT8_TOLERANCE["max_abs_prob"], "int8 differs from fp32, within the bound"
    assert check["mean_abs_prob"] <= INT8_TOLERANCE["mean_abs_prob"]
    # The graph in the registry is the one checked, made from the registered fp32 graph.
    assert record["fp32_onnx_sha256"] == sha256_file(Path(trained["dir"]) / "model.onnx")
    local = registry.resolve_model(f"models:/{CLASSIFIER_MODEL_NAME}/{trained['pass']}").local_dir
    variant = registry.resolve_int8(CLASSIFIER_MODEL_NAME, trained["pass"], sha256_file(local / "model.onnx"))
    assert variant is not None and variant.passed
    assert sha256_file(variant.path) == record["int8_sha256"] == sha256_file(quantized["out"] / "model_int8.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(str(variant.path)).graph.node}
    assert record["quantization"]["format"] == "qoperator" and "QLinearConv" in ops, "int8 convolutions"


def test_check_refuses_changed_answers():
    """The figures and the refusal from the outputs alone: int8 logits that move one test subject
    to another stage fail macro-F1 and the probability bounds; small noise passes."""
    from alzprog.quantization import compare_outputs

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)  # 4 stages x 2 subjects x 3 slices
    subjects = np.array([f"s{i // 3}" for i in range(24)])
    logits = np.eye(4)[labels] * 4.0 + rng.normal(0, 0.1, (24, 4))
    ok = compare_outputs((logits, None), (logits + rng.normal(0, 0.01, logits.shape), None), labels, subjects, 1.0)
    assert ok.passed and ok.macro_f1_fp32 == 1.0 and ok.subject_agreement == 1.0
    moved = logits.copy()
    moved[subjects == "s0"] = np.eye(4)[1] * 4.0  # subject s0 (stage 0) now reads as stage 1
    bad = compare_outputs((logits, None), (moved, None), labels, subjects, 1.0)
    assert not bad.passed and bad.macro_f1_int8 < bad.macro_f1_fp32
    assert {r.split()[0] for r in bad.reasons} == {"macro_f1_diff", "max_abs_prob", "mean_abs_prob"}


def test_check_refuses_a_violated_tolerance(trained, tiny_split, tmp_path):
    from alzprog.quantization import INT8_TOLERANCE, quantize_classifier

    strict = {k: 0.0 for k in INT8_TOLERANCE}
    refused = quantize_classifier(trained["dir"], tiny_split, tmp_path / "strict", calibration_slices=16,
                                  tolerance=strict).check
    assert not refused.passed and any(r.startswith("max_abs_prob") for r in refused.reasons)
    assert json.loads((tmp_path / "strict" / "int8_check.json").read_text())["check"]["passed"] is False


def test_quantize_refuses_another_split(trained, tiny_split, tmp_path):
    from alzprog.quantization import QuantizationError, quantize_classifier

    other = tmp_path / "other"
    other.mkdir()
    for side in ("train", "val", "test"):
        (other / f"{side}.csv").write_text((tiny_split / f"{side}.csv").read_text())
    with (other / "val.csv").open("a") as f:
        f.write("\n")
    with pytest.raises(QuantizationError, match="not the model's own split"):
        quantize_classifier(trained["dir"], other, tmp_path / "out")


def _service(home: Path, monkeypatch, alias: str, precision: str):  # noqa: ANN202 - a TestClient
    from services.classifier.app import create_app
    from services.classifier.settings import Settings

    monkeypatch.setenv("ALZPROG_HOME", str(home))
    settings = Settings(alias=alias, precision=precision, retry_seconds=0.2, poll_seconds=30, max_concurrency=1,
                        max_queue=2, intra_op_threads=1)
    return TestClient(create_app(settings))


def _body() -> tuple[bytes, dict[str, str]]:
    from alzprog.preprocessing import canonicalize
    from services.common.wire import encode_canonical

    rng = np.random.default_rng(5)
    img = np.zeros((200, 180), np.uint8)
    img[30:170, 30:150] = rng.integers(60, 200, size=(140, 120), dtype=np.uint8)
    c = canonicalize(img)
    return encode_canonical(c.image, c.mask)


def test_precision_setting_selects_the_served_graph(trained, quantized, tiny_split, tmp_path, monkeypatch):
    from alzprog.quantization import INT8_TOLERANCE, quantize_and_record

    assert quantized["record"]["check"]["passed"]
    # v_fail: the same weights with a check that failed (a tolerance nothing meets), recorded.
    failed = quantize_and_record(f"models:/{CLASSIFIER_MODEL_NAME}/{trained['fail']}", split_dir=tiny_split,
                                 calibration_slices=16, tolerance={k: 0.0 for k in INT8_TOLERANCE})
    assert not failed.check.passed
    body, headers = _body()
    answers = {}
    for name, alias, precision, serving in (("auto", PASSING_ALIAS, "auto", "int8"), ("forced", PASSING_ALIAS, "int8", "int8"),
                                            ("fp32", PASSING_ALIAS, "fp32", "fp32"), ("auto-failed", FAILING_ALIAS, "auto", "fp32")):
        with _service(tmp_path / name, monkeypatch, alias, precision) as client:
            ready = wait_client_ready(client)
            assert ready["model"]["precision"] == serving, (name, ready)
            info = client.get("/v1/info").json()["precision"]
            assert info["setting"] == precision and info["serving"] == serving, (name, info)
            if alias == PASSING_ALIAS and precision != "fp32":
                assert info["int8_check"]["passed"] is True and info["int8_check"]["calibration_slices"] == 16
            if name == "auto-failed":
                assert "int8 check failed" in info["reason"] and info["int8_check"]["passed"] is False
            r = client.post("/v1/classify", content=body, headers=headers)
            assert r.status_code == 200, r.text
            answers[name] = np.array([r.json()["probabilities"][s] for s in STAGES])
    # int8 serves other numbers than fp32, within the admitted bound; the failed version serves fp32.
    assert 0 < np.abs(answers["auto"] - answers["fp32"]).max() <= INT8_TOLERANCE["max_abs_prob"]
    np.testing.assert_allclose(answers["auto-failed"], answers["fp32"], atol=1e-6)

    # Forced int8 without a passing check: the version is refused, /readyz says why.
    with _service(tmp_path / "forced-failed", monkeypatch, FAILING_ALIAS, "int8") as client:
        from alzprog.readiness import wait_ready as poll

        r = poll("/readyz", timeout=30, get=client.get, interval=0.1,
                 accept=lambda r: r.status_code == 503 and "int8 asked for" in r.text)
        assert r.json()["error"]["code"] == "model_not_loaded"
        assert client.post("/v1/classify", content=body, headers=headers).status_code == 503


def test_choose_precision_policy():
    from alzprog.inference.runtime import PrecisionUnavailable, choose_precision

    cpu, gpu = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_precision("auto", True, cpu).precision == "int8"
    assert choose_precision("auto", True, gpu).precision == "fp32"
    assert choose_precision("auto", False, cpu).precision == "fp32"
    assert choose_precision("auto", None, cpu).precision == "fp32"
    assert choose_precision("fp32", True, cpu).precision == "fp32"
    assert choose_precision("int8", True, gpu).precision == "int8"
    for missing in (False, None):
        with pytest.raises(PrecisionUnavailable, match="int8 asked for"):
            choose_precision("int8", missing, cpu)
    with pytest.raises(ValueError):
        choose_precision("bf16", True, cpu)
