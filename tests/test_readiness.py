"""alzprog.readiness.wait_ready: the one readiness poll (real processes and sockets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from alzprog.readiness import wait_ready


def test_returns_the_first_accepted_answer(tmp_path: Path) -> None:
    (tmp_path / "readyz").write_text("ok")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc)
        assert r.status_code == 200 and r.text == "ok"
        with pytest.raises(TimeoutError, match="HTTP 404"):  # answers, but not as wanted: the last answer is named
            wait_ready(f"http://127.0.0.1:{port}/missing", timeout=0.5, proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_process_that_dies_fails_at_once_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('cannot load the model'); sys.exit(3)"],
                                stdout=fh, stderr=subprocess.STDOUT)
    proc.wait(timeout=30)
    with pytest.raises(RuntimeError, match="code 3") as err:
        wait_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout=600, proc=proc, log_path=log, name="classifier")
    assert "cannot load the model" in str(err.value) and "classifier" in str(err.value)


def test_nothing_listening_times_out_naming_the_connection_error() -> None:
    with pytest.raises(TimeoutError, match="ConnectError"):
        wait_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout=0.3, interval=0.05)
