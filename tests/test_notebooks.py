"""notebooks/compare_runs.ipynb executed with nbclient on two evaluated fixture runs, in the venv's kernel."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from clearml_pipeline.evaluation import EvaluationOptions, evaluate_run
from data_prep.manifest import ManifestRow, write_manifest
from tests.clearml_standin import Standin, start_standin
from tests.speech import SPANISH_SENTENCES, speak
from tests.test_evaluation import make_fixture_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_runs.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two evaluated fixture runs over the same two clips, with different batch sizes."""
    inputs = tmp_path_factory.mktemp("clips")
    for i, sentence in enumerate(SPANISH_SENTENCES[:2]):
        speak(sentence, inputs / f"clip{i}.wav")
    manifest = inputs / "manifest.jsonl"
    rows = [
        ManifestRow(f"clip{i}", f"clip{i}.wav", 3.0, SPANISH_SENTENCES[i], "test", f"clip{i}.mp3", f"ref {i}")
        for i in (0, 1)
    ]
    write_manifest(manifest, rows)
    folders = []
    for name, batch_size in (("batch1", 1), ("batch2", 2)):
        out = make_fixture_run(tmp_path_factory.mktemp("runs") / name, inputs, batch_size=batch_size)
        evaluate_run(out, manifest, EvaluationOptions(asr_batch_size=2, asr_max_new_tokens=8))
        folders.append(out)
    return folders


def track_on_standin(standin: Standin, run: Path) -> str:
    """Record `run`'s metrics as a ClearML task on the stand-in server (real SDK, own process); returns its id."""
    script = (
        "import json, sys; from pathlib import Path; from clearml_pipeline.evaluation import track_evaluation; "
        "out = Path(sys.argv[1]); track_evaluation(json.loads((out / 'metrics.json').read_text()), out, 'server')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run)],
        env=standin.subprocess_env(),
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert standin.errors == [], standin.errors
    (task,) = standin.tasks()
    return task["id"]


@pytest.fixture(scope="module")
def executed(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The notebook over the two local runs plus, through the ClearML SDK, a task holding batch2's metrics."""
    saved = tmp_path_factory.mktemp("comparison")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with start_standin(tmp_path_factory.mktemp("standin")) as standin, pytest.MonkeyPatch.context() as patch:
        task_id = track_on_standin(standin, runs[1])
        # The kernel inherits this environment: the runs, and the stand-in in place of any ClearML configuration.
        for key in list(os.environ):
            if key.startswith(("CLEARML_", "TRAINS_")):
                patch.delenv(key)
        for key, value in standin.env.items():
            patch.setenv(key, value)
        patch.setenv("S2ST_RUNS", os.pathsep.join(str(run) for run in runs))
        patch.setenv("S2ST_CLEARML_TASKS", task_id)
        patch.setenv("S2ST_COMPARE_OUT", str(saved))
        # "python3" is ipykernel's own spec; jupyter_client starts it with this interpreter (sys.executable).
        client = NotebookClient(
            notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(saved)}}
        )
        client.execute()  # raises CellExecutionError if any cell fails
        assert standin.errors == [], standin.errors
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    return {"notebook": notebook, "outputs": outputs, "saved": saved, "task_id": task_id}


def test_the_committed_notebook_has_no_outputs_and_a_parameters_cell() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", []) and "S2ST_RUNS" in code[0].source
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 5  # every plot is explained


def test_the_notebook_runs_in_the_venv_kernel(executed: dict[str, Any]) -> None:
    printed = "".join(o.get("text", "") for o in executed["outputs"] if o.output_type == "stream")
    assert f"python {sys.executable}," in printed
    assert not [o for o in executed["outputs"] if o.output_type == "error"]


def test_the_comparison_table_holds_every_runs_metrics(executed: dict[str, Any], runs: list[Path]) -> None:
    with (executed["saved"] / "comparison.csv").open(encoding="utf-8") as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    assert set(table) == {"batch1", "batch2", "evaluate batch2"}
    assert table["evaluate batch2"]["source"] == f"clearml:{executed['task_id']}"
    for run, name in ((runs[0], "batch1"), (runs[1], "batch2"), (runs[1], "evaluate batch2")):
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        row = table[name]
        assert float(row["bleu"]) == pytest.approx(metrics["translation"]["bleu"])
        assert float(row["cer"]) == pytest.approx(metrics["intelligibility"]["cer"])
        assert float(row["speech_synthesis p90"]) == pytest.approx(metrics["latency_s"]["speech_synthesis"]["p90"])
        assert float(row["items_per_s"]) == pytest.approx(summary["end_to_end"]["items_per_s"])
        assert row["models"] == "fixtures" and row["fixture_models"] == "True"
    html = [o["data"]["text/html"] for o in executed["outputs"] if "<table" in o.get("data", {}).get("text/html", "")]
    assert len(html) == 1 and all(name in html[0] for name in table)  # the table is displayed
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in executed["outputs"])
    assert "Fixture models (random weights) in: batch1, batch2, evaluate batch2" in markdown


def test_the_plots_and_clips_are_shown(executed: dict[str, Any]) -> None:
    images = [o for o in executed["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) == 3  # throughput, latency, quality
    for name in ("throughput", "latency", "quality"):
        assert (executed["saved"] / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    audio = [o for o in executed["outputs"] if "<audio" in o.get("data", {}).get("text/html", "")]
    assert len(audio) == 4  # CLIPS_PER_RUN = 2 clips of each run
    assert all("data:audio/x-wav;base64," in o["data"]["text/html"] for o in audio)
