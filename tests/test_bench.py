"""`python -m clearml_pipeline bench` end to end on the fixtures: bench.json, the table, the ClearML session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.speech import SPANISH_SENTENCES, speak


@pytest.fixture(scope="module")
def bench(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    clips = tmp_path_factory.mktemp("clips")
    for i, text in enumerate(SPANISH_SENTENCES):
        speak(text, clips / f"{i}.wav")
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clearml_pipeline",
            "bench",
            "--input",
            str(clips),
            "--output",
            str(out),
            "--models",
            "fixtures",
            "--requests",
            "6",
            "--standalone-items",
            "3",
            "--replicas",
            "auto",  # planned from the probe's measured costs, then fitted to a memory budget of nothing: 1:1:1
            "--replica-memory",
            "0",
            "--st-max-new-tokens",
            "8",
            "--mt-max-new-tokens",
            "8",
            "--tts-maxlenratio",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "report": json.loads((out / "bench.json").read_text())}


def test_bench_json_has_the_headline_figures(bench: dict[str, Any]) -> None:
    report = bench["report"]
    assert report["requests"] == report["ok"] == 6
    assert report["speedup"] == pytest.approx(report["end_to_end_items_per_s"] / report["baseline_items_per_s"])
    assert report["bottleneck_efficiency"] == pytest.approx(
        report["end_to_end_items_per_s"] / report["ceiling_items_per_s"]
    )
    assert report["replicas"] == {"speech_translation": 1, "machine_translation": 1, "speech_synthesis": 1}
    assert report["replicas_chosen_by"].startswith("auto: ")
    assert "; fewer to fit the memory (--replica-memory 0 GiB; GiB per replica: " in report["replicas_chosen_by"]
    assert set(report["threads"]) == set(report["replicas"]) and min(report["threads"].values()) >= 1
    for name, stage in report["stages"].items():
        assert stage["standalone_items_per_s"] > 0 and stage["cpu_s_per_item"] > 0
        assert stage["streaming_cpu_s_per_item"] > 0  # measured in the streaming run, beside the standalone figure
        assert stage["replica_memory_gib"] > 0.01  # the standalone worker's own memory: a loaded model and torch
        assert stage["capacity_items_per_s"] == pytest.approx(
            stage["standalone_items_per_s"] * report["replicas"][name]
        )
    assert report["ceiling_items_per_s"] <= min(s["capacity_items_per_s"] for s in report["stages"].values())
    assert report["cold_start_s"] > 0 and report["hardware"]["cores"] >= 1


def test_the_table_is_printed(bench: dict[str, Any]) -> None:
    assert "speedup" in bench["stdout"] and "bottleneck efficiency" in bench["stdout"]
    assert "speech_synthesis" in bench["stdout"]


def test_the_bench_is_an_offline_clearml_task_with_stable_scalars(bench: dict[str, Any]) -> None:
    session = Path(bench["report"]["clearml_session"])
    assert session.parent == bench["out"] / "clearml" and session.suffix == ".zip"
    with zipfile.ZipFile(session) as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".json", ".jsonl")))
    for scalar in ("speedup", "bottleneck_efficiency", "end_to_end_items_per_s", "standalone_items_per_s"):
        assert scalar in text
    assert "bench.json" in text or any(n.endswith("bench.json") for n in names)


def test_a_queued_bench_needs_server_tracking_and_says_so_before_any_work(tmp_path: Path) -> None:
    from tests.cli import python_m

    out = tmp_path / "out"
    proc = python_m("clearml_pipeline", "bench", "--input", str(tmp_path), "--output", str(out), "--queue", "gpu")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--queue needs --tracking server" in proc.stderr
    assert not out.exists()  # nothing was prepared for a bench that cannot be enqueued


def test_a_bench_that_cannot_start_leaves_an_earlier_benchs_output_as_it_was(
    fixture_caches: Any, tmp_path: Path
) -> None:
    """Its inputs are listed and every model located before OUT is emptied: no input or a missing model is one
    error line, and the earlier bench.json and rows stay (both used to be removed first)."""
    from tests.cli import python_m

    out, clip = tmp_path / "out", tmp_path / "clips" / "a.wav"
    out.mkdir()
    clip.parent.mkdir()
    speak(SPANISH_SENTENCES[0], clip)
    earlier = {name: f"earlier {name}\n" for name in ("bench.json", "results.jsonl")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    (tmp_path / "empty").mkdir()
    missing = tmp_path / "no-model"
    for args, message in (
        (["--input", str(tmp_path / "empty"), "--models", "fixtures"], "no audio files"),
        (["--input", str(clip.parent), "--models", "fixtures", "--mt-model", str(missing)],
         f"machine_translation.model (--mt-model): model folder '{missing}' does not exist"),
    ):
        proc = python_m("clearml_pipeline", "bench", *args, "--output", str(out), "--requests", "2")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert {name: (out / name).read_text() for name in earlier} == earlier


def test_the_offline_session_folder_is_one_clearml_reads_back_as_itself(tmp_path: Path) -> None:
    """The cache goes to ClearML as a plain path in CLEARML_CACHE_DIR (a name that is not UTF-8, a quote: fine);
    a path that it would read as another folder (a $VAR it expands, a backslash it makes a slash) is refused."""
    from clearml_pipeline.tracking import check_session_folder, offline_environment

    latin1 = Path(os.fsdecode(os.fsencode(tmp_path) + b"/o\xe9\"q"))
    env = offline_environment(latin1 / "clearml")
    assert env["CLEARML_CACHE_DIR"] == str(latin1 / "clearml" / "cache")
    assert "default_base_dir" not in (latin1 / "clearml" / "clearml.conf").read_text(encoding="utf-8")
    for name in ("d$HOME", "b\\s"):
        with pytest.raises(ValueError, match="ClearML cannot keep its offline sessions under"):
            check_session_folder(tmp_path / name / "clearml")
    for name in ("run#3", "what?", "100%41", "a;b c", "$NO_SUCH_VARIABLE_S2ST"):
        assert check_session_folder(tmp_path / name / "clearml") == tmp_path / name / "clearml"
