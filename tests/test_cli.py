"""The command line: a tiny training run, resume, evaluate, and one-line errors."""

import json
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

import eqx_lstm_ac as lac
from eqx_lstm_ac._cli import main


TINY = [
    "--env",
    "memory:delay=3",
    "--num-envs",
    "4",
    "--num-steps",
    "8",
    "--minibatches",
    "2",
    "--hidden",
    "8",
    "--features",
    "8",
    "--quiet",
    "--no-plot",
    # A constant learning rate: a linear schedule stretches with --total-steps, so a run
    # extended on resume would not match one trained with the longer budget from the start.
    "--lr-schedule",
    "constant",
]


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _params(path):
    model = lac.load(path)
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def test_train_resume_evaluate(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    code, out, _ = _run(capsys, "train", *TINY, "--total-steps", "128", "--out", str(straight))
    assert code == 0, out
    assert str(straight / "model.eqx") in out
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert [r["env_steps"] for r in rows] == [32, 64, 96, 128]
    assert all("mean_return" in r for r in rows)
    assert (straight / "metrics.csv").read_text().startswith("update,env_steps,mean_return")

    # Two updates, then resume to four: the same model as four in one go.
    code, _, _ = _run(capsys, "train", *TINY, "--total-steps", "64", "--out", str(split))
    assert code == 0
    code, out, err = _run(
        capsys, "train", "--resume", str(split), "--total-steps", "128", "--quiet"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    for a, b in zip(_params(straight / "model.eqx"), _params(split / "model.eqx"), strict=True):
        np.testing.assert_array_equal(a, b)

    code, out, _ = _run(capsys, "evaluate", str(split / "model.eqx"), "--episodes", "100")
    assert code == 0 and "mean return" in out and "memory-d3-c1" in out


def test_errors_are_one_line_and_lose_nothing(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--env", "nonsense", "--out", str(tmp_path / "a"))
    _one_line_error(code, err, "Unknown task")
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--total-steps", "-5"])
    _one_line_error(exc.value.code, capsys.readouterr().err, "negative")
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "missing.eqx"))
    _one_line_error(code, err, "does not exist")
    code, _, err = _run(capsys, "train", "--resume", str(tmp_path / "missing"))
    _one_line_error(code, err, "does not exist")

    run = tmp_path / "run"
    assert _run(capsys, "train", *TINY, "--total-steps", "32", "--out", str(run))[0] == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # A second run into the same directory, a resume with another task, an evaluation on
    # a task the model does not fit: each refused in one line, nothing changed.
    code, _, err = _run(capsys, "train", *TINY, "--out", str(run))
    _one_line_error(code, err, "already holds a run")
    code, _, err = _run(capsys, "train", "--resume", str(run), "--env", "gymnax:CartPole-v1")
    _one_line_error(code, err, "does not match the task")
    code, _, err = _run(capsys, "evaluate", str(run / "model.eqx"), "--env", "memory:cue_size=2")
    _one_line_error(code, err, "does not match the task")
    code, _, err = _run(capsys, "train", "--resume", str(run))
    _one_line_error(code, err, "already at update")
    code, _, err = _run(capsys, "train", "--resume", str(run), "--devices", "64")
    _one_line_error(code, err, "--devices must be between 1")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "eqx_lstm_ac", "train", "--env", "bogus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "Unknown task" in out.stderr


def _doc_commands():
    """The command lines of the worked examples on the command-line page."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    examples = text.split("## Worked examples", 1)[1].split("\n## ", 1)[0]
    blocks = examples.split("```bash\n")[1:]
    return [
        line.split()
        for block in blocks
        for line in block.split("```", 1)[0].splitlines()
        if line.startswith("eqx-lstm-ac ")
    ]


def test_every_worked_example_on_the_cli_page_runs(tmp_path, capsys, monkeypatch):
    import importlib.util

    from eqx_lstm_ac._cli import reference_markdown
    from eqx_lstm_ac._config import flag_of, settable_fields

    monkeypatch.chdir(tmp_path)
    commands = _doc_commands()
    assert len(commands) >= 7
    tiny = TINY[2:]  # everything but the task
    budget = {"train": ["--total-steps", "64"], "evaluate": ["--episodes", "2"]}
    for argv in commands:
        args = argv[1:]
        if any(a.startswith("gymnax:") for a in args) and not importlib.util.find_spec("gymnax"):
            continue
        if args[0] == "train":
            args = args + tiny + budget["train"]
            if "--resume" in args:
                args += ["--total-steps", "96"]
        else:
            args = args + budget["evaluate"]
        with jax.numpy_dtype_promotion("standard"):  # gymnax mixes dtypes freely
            code, out, err = _run(capsys, *args)
        assert code == 0, (argv, err)
    # the page's reference is written from the parser: every train option is in it
    ref = reference_markdown()
    for path, field in settable_fields():
        assert f"`--{flag_of(field)}" in ref, path
