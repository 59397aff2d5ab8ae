"""Preemption: a run that receives SIGTERM or SIGUSR1 saves the step in progress, exits with
128 + the signal's number, and `ckpt_path=auto` in the same run folder resumes it exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from recon_ft.training.run import Interrupted, fit
from tests.test_train import RANDOM_INIT, SMALL, SYNTHETIC_SMALL, compose_train, trainable_state

ROOT = Path(__file__).resolve().parents[1]


class SignalAt(L.Callback):
    """Sends the signal `name` to its own process during optimizer step `step` (1-based), or during
    the validation after it (during=val), as a scheduler would."""

    def __init__(self, step: int, name: str = "SIGTERM", during: str = "train"):
        self.step, self.signum, self.during = step, getattr(signal, name), during

    def on_train_batch_start(self, trainer, *args):
        if self.during == "train" and trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, *args):
        if self.during == "val" and trainer.global_step == self.step and trainer.state.fn == "fit":
            os.kill(os.getpid(), self.signum)


def signal_at(step: int, sig: str = "SIGTERM", during: str = "train") -> list[str]:
    return ["+callbacks.signal._target_=tests.test_preemption.SignalAt", f"+callbacks.signal.step={step}",
            f"+callbacks.signal.name={sig}", f"+callbacks.signal.during={during}"]


def test_ckpt_path_auto_starts_fresh_without_a_checkpoint(tmp_path):
    trainer, _ = fit(compose_train(tmp_path / "run", "trainer.max_steps=2", "ckpt_path=auto"))
    assert trainer.global_step == 2 and (tmp_path / "run/checkpoints/last.ckpt").is_file()


@pytest.mark.parametrize("sig,during,at", [("SIGUSR1", "train", 3), ("SIGTERM", "val", 4)])
def test_signal_saves_the_step_and_auto_resumes_exactly(tmp_path, sig, during, at):
    """Signalled at step 3 (SIGUSR1, mid-training) or during the validation after step 4 (SIGTERM):
    last.ckpt holds that step, the run raises Interrupted(128 + signal), and rerun with ckpt_path=auto
    in the same folder it ends with the adapters of an uninterrupted 8-step run."""
    common = ["trainer.max_steps=8", "callbacks.model_checkpoint.every_n_train_steps=100"]
    _, straight = fit(compose_train(tmp_path / "straight", *common))
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        fit(compose_train(run_dir, *common, *signal_at(at, sig, during), "ckpt_path=auto"))
    assert info.value.code == 128 + getattr(signal, sig) and info.value.step == at
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == at
    trainer, resumed = fit(compose_train(run_dir, *common, "ckpt_path=auto"))
    assert trainer.global_step == 8
    want, got = trainable_state(straight), trainable_state(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    files = {"captioner": "adapter_model.safetensors", "generator": "pytorch_lora_weights.safetensors"}
    return {f"{model}/{k}": v for model, name in files.items()
            for k, v in load_file(run_dir / "adapters" / model / name).items()}


def test_train_py_killed_with_sigterm_exits_143_and_resumes_with_auto(tmp_path):
    """The command line: SIGTERM from outside a running `python train.py` (here at step 3 by the
    process itself, for a fixed step), then the same command with ckpt_path=auto."""
    args = [*RANDOM_INIT, *SMALL, *SYNTHETIC_SMALL, "trainer.max_steps=8",
            "callbacks.model_checkpoint.every_n_train_steps=100", "validate_base=false"]

    def train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", *args, *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)

    straight = train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    run_dir = tmp_path / "run"
    cut = train(run_dir, "ckpt_path=auto", *signal_at(3))
    assert cut.returncode == 143, cut.stderr[-2000:]
    assert f"interrupted by SIGTERM at step 3 of 8: checkpoint of step 3 in {run_dir}/checkpoints/last.ckpt" in cut.stderr
    assert f"ckpt_path=auto hydra.run.dir={run_dir}" in cut.stderr
    resumed = train(run_dir, "ckpt_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want, got = adapters(tmp_path / "straight"), adapters(run_dir)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
