"""Offline tier: Common Voice fixture -> `data_prep ingest` -> `run --local` -> sessions, resume, reproduce.

Every step of a local run is a real ClearML task recorded in offline mode; the tests read what its session zip
holds, import the zips into the stand-in server as a user would into theirs, resume a step from partial
results, and reproduce the run from its folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.pipeline import parse_shards, plan
from tests.clearml_standin import start_standin
from tests.cli import REPO, ok
from tests.cli import python_m as cli
from tests.cv_fixture import covost_path, make_common_voice_fixture

N_CLIPS = 3
SHARDS = "1:1:2"  # speech synthesis fanned out into two tasks
NODES = {node.name: node for node in plan(parse_shards(SHARDS))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    release = make_common_voice_fixture(root, n_good=N_CLIPS)
    out = ok(cli("data_prep", "ingest", "--source", "common_voice", "--path", str(release), "--split", "validated",
                 "--covost", str(covost_path(release)), "--out", str(root / "datasets"), "--no-progress"))
    return Path(re.search(r"^dataset\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def run(dataset: Path, fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    proc = cli("clearml_pipeline", "run", "--local", "--input", str(dataset), "--output", str(out),
               "--models", "fixtures", "--batch-size", "2", "--shards", SHARDS)
    ok(proc)
    return {"out": out, "proc": proc}


def session(out: Path, step: str) -> zipfile.ZipFile:
    zips = sorted((out / "clearml").glob(f"{step}.offline-*.zip"))
    assert len(zips) == 1, zips
    return zipfile.ZipFile(zips[0])


def test_every_step_left_an_offline_session_with_parameters_scalars_and_artifacts(run: dict[str, Any]) -> None:
    out = run["out"]
    assert len(list((out / "clearml").glob("*.zip"))) == len(NODES)
    tts_clips = 0
    for name, node in NODES.items():
        step = node.step.name
        with session(out, name) as z:
            task = json.loads(z.read("task.json"))
            events = [json.loads(line) for line in z.read("metrics.jsonl").decode().splitlines() if line.strip()]
            names = z.namelist()
        assert task["name"] == name
        params = task["hyperparams"]
        assert params["step"]["name"]["value"] == step and params["runner"]["models"]["value"] == "fixtures"
        assert params["step"]["shard"]["value"] == node.shard_spec
        artifacts = {a["key"] for a in task["execution"]["artifacts"]}
        assert {"results", "run"} <= artifacts
        for key in artifacts:
            assert any(f"/artifacts/{key}/" in n for n in names), f"{step}: artifact {key} not in the session"
        scalars = {(e["metric"], e["variant"]) for ev in events for e in (ev if isinstance(ev, list) else [ev])
                   if e.get("type") == "training_stats_scalar"}
        if step in ("speech_translation", "machine_translation", "speech_synthesis"):
            assert params[step]["model"]["value"]  # the stage's options, editable in the UI after import
            assert ("throughput", f"{step} items/s") in scalars and ("errors", step) in scalars
            assert (f"{step} latency (s)", "item") in scalars
        if step == "speech_synthesis":  # shard k synthesized items k, k + 2, ...
            assert "audio" in artifacts
            clips = sum(n.endswith(".wav") and "/metrics/output audio/" in n for n in names)
            assert clips == len(range(node.shard, N_CLIPS, node.shards))
            tts_clips += clips
        if step == "evaluation":
            assert "metrics" in artifacts and ("quality", "bleu") in scalars
    assert tts_clips == N_CLIPS


def test_outputs_are_published_and_scored_against_the_dataset_references(run: dict[str, Any], dataset: Path) -> None:
    out = run["out"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    manifest = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [m["id"] for m in manifest]  # the manifest's ids, in its order
    assert all((out / r["zh_audio"]).is_file() for r in rows if r["status"] == "ok")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["translation"]["scored_items"] == N_CLIPS  # references from the dataset's CoVoST join
    assert metrics["fixture_models"] is True and "noise" in (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["ref"] == str(dataset) and summary["dataset"]["info"]["content_hash"]
    assert f"ClearML offline sessions: {len(NODES)}" in run["proc"].stdout


def test_offline_sessions_import_into_a_server(run: dict[str, Any], tmp_path: Path) -> None:
    zips = sorted((run["out"] / "clearml").glob("*.zip"))
    code = "import sys\nfrom clearml import Task\nfor z in sys.argv[1:]:\n    Task.import_offline_session(z)\n"
    with start_standin(tmp_path / "standin") as standin:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, zips)], env=standin.subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert standin.errors == []
        tasks = {t["name"]: t for t in standin.tasks()}
        assert set(NODES) == set(tasks)
        tts = tasks["speech_synthesis_shard0"]
        assert tts["hyperparams"]["speech_synthesis"]["vocoder"]["value"] == "parallel_wavegan/csmsc_hifigan.v1"
        assert {"results", "run", "summary", "audio"} <= set(standin.artifacts(tts["id"]))
        assert len(standin.events(tts["id"], "training_debug_image")) == len(range(0, N_CLIPS, 2))
        assert "throughput" in standin.scalars(tasks["machine_translation"]["id"])


def test_a_step_resumes_from_partial_results(run: dict[str, Any], tmp_path: Path) -> None:
    out = run["out"]
    step_out = tmp_path / "steps" / "machine_translation"
    step_out.mkdir(parents=True)
    earlier = [json.loads(line) for line in (out / "steps" / "machine_translation" / "results.jsonl").open()]
    earlier[0]["zh_text"] = "早先完成的译文"  # what an earlier, interrupted attempt wrote for the first item
    earlier[0]["resume_key"] = mt_resume_key(out, step_out)  # made from this very input and configuration
    (step_out / "partial.jsonl").write_text(json.dumps(earlier[0], ensure_ascii=False) + "\n", encoding="utf-8")
    proc = ok(cli("clearml_pipeline.step_task", "--step", "machine_translation", "--offline",
                  "--dataset", json.loads((out / "summary.json").read_text())["dataset"]["ref"],
                  "--input", str(out / "steps" / "speech_translation"), "--output", str(step_out),
                  "--config", str(out / "pipeline.json")))
    assert "resuming, 1 item(s) already done" in proc + ""
    rows = [json.loads(line) for line in (step_out / "results.jsonl").open()]
    assert [r["id"] for r in rows] == [r["id"] for r in earlier]
    assert rows[0]["zh_text"] == "早先完成的译文"  # kept, not recomputed
    assert all(r["zh_text"] for r in rows[1:]) and not (step_out / "partial.jsonl").exists()
    assert list((tmp_path / "clearml").glob("machine_translation.offline-*.zip"))


def test_a_step_given_a_value_its_option_does_not_take_stops_in_one_line(run: dict[str, Any], tmp_path: Path) -> None:
    """What a task parameter mistyped in the web UI does to its step: one error line and exit 2, not a traceback
    (here through the pipeline.json that a step reads its config from, offline; the same check reads both)."""
    out = run["out"]
    config = json.loads((out / "pipeline.json").read_text())
    config["machine_translation"]["dtype"] = "float8"
    (tmp_path / "pipeline.json").write_text(json.dumps(config))
    proc = cli("clearml_pipeline.step_task", "--step", "machine_translation", "--offline",
               "--dataset", json.loads((out / "summary.json").read_text())["dataset"]["ref"],
               "--input", str(out / "steps" / "speech_translation"), "--output", str(tmp_path / "mt"),
               "--config", str(tmp_path / "pipeline.json"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: machine_translation: dtype takes one of auto, float32, float16, bfloat16; got 'float8'" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "mt" / "results.jsonl").exists()


def mt_resume_key(out: Path, step_out: Path, changes: dict[str, Any] | None = None) -> str:
    """The resume key machine translation gives the run's first item (with the config `changes`, another one)."""
    from clearml_pipeline.config import PipelineConfig
    from clearml_pipeline.step_work import resume_keys
    from steps.results import load_rows
    from steps.stages import StepContext, stage

    config = PipelineConfig.from_dict(json.loads((out / "pipeline.json").read_text())).updated(changes or {})
    given = load_rows(out / "steps" / "speech_translation" / "results.jsonl")[:1]
    return resume_keys(config, stage("machine_translation"), given, StepContext(step_out, 60.0))[given[0].id]


def test_a_partial_result_from_other_inputs_or_config_is_not_resumed(run: dict[str, Any], tmp_path: Path) -> None:
    """A partial row made with another configuration (here num_beams), or with no key at all, is discarded with a
    message and computed again (issue 12, item 2; tests/test_signals.py changes the input audio instead)."""
    out = run["out"]
    step_out = tmp_path / "steps" / "machine_translation"
    step_out.mkdir(parents=True)
    earlier = [json.loads(line) for line in (out / "steps" / "machine_translation" / "results.jsonl").open()]
    stale = [dict(earlier[0], zh_text="过时的译文", resume_key=mt_resume_key(out, step_out,
                                                                      {"machine_translation": {"num_beams": 7}})),
             dict(earlier[1], zh_text="过时的译文")]  # and one with no key (written before keys existed)
    (step_out / "partial.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stale))
    proc = ok(cli("clearml_pipeline.step_task", "--step", "machine_translation", "--offline",
                  "--dataset", json.loads((out / "summary.json").read_text())["dataset"]["ref"],
                  "--input", str(out / "steps" / "speech_translation"), "--output", str(step_out),
                  "--config", str(out / "pipeline.json")))
    assert "discarding 2 partial result(s)" in proc and "resuming" not in proc
    rows = [json.loads(line) for line in (step_out / "results.jsonl").open()]
    assert [r["id"] for r in rows] == [r["id"] for r in earlier]
    assert all(r["zh_text"] and r["zh_text"] != "过时的译文" for r in rows)  # computed again


def test_a_retried_task_resumes_from_its_own_checkpoint(run: dict[str, Any], tmp_path: Path) -> None:
    """On a server, a failed step is relaunched in place (same task, maybe another machine): it resumes from the
    `partial` artifact it checkpointed, not from local files."""
    out = run["out"]
    step = ["clearml_pipeline/step_task.py", "--step", "machine_translation", "--input",
            str(out / "steps" / "speech_translation"), "--config", str(out / "pipeline.json"),
            "--dataset", json.loads((out / "summary.json").read_text())["dataset"]["ref"]]
    with start_standin(tmp_path / "standin") as standin:
        env = standin.subprocess_env()
        first = subprocess.run([sys.executable, *step, "--output", str(tmp_path / "first"), "--checkpoint-every", "1"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        task = next(t for t in standin.tasks() if t["name"] == "machine_translation")
        checkpoint = standin.file_path(standin.artifacts(task["id"])["partial"]["uri"])
        rows = [json.loads(line) for line in checkpoint.read_text(encoding="utf-8").splitlines()]
        ids = [json.loads(line)["id"] for line in (out / "results.jsonl").open()]
        assert sorted(r["id"] for r in rows) == sorted(ids)  # every row, in the order the step took them
        sizes = [len(r["en_text"] or "") for r in rows]
        assert sizes == sorted(sizes, reverse=True)  # longest first (steps.stages.MACHINE_TRANSLATION.size)
        first = next(r for r in rows if r["id"] == ids[0])
        first["zh_text"] = "检查点里的译文"  # so that a recomputed row would show
        checkpoint.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        # The relaunch: the same task id, run as ClearML runs a task (its parameters come from the server).
        retry_env = env | {"CLEARML_TASK_ID": task["id"], "CLEARML_SIMULATE_REMOTE_TASK": "1"}
        retry = subprocess.run([sys.executable, "clearml_pipeline/step_task.py"], cwd=REPO, env=retry_env,
                               capture_output=True, text=True, timeout=300)
        assert retry.returncode == 0, retry.stderr[-3000:]
        assert f"resuming, {len(rows)} item(s) already done" in retry.stdout
        results = standin.file_path(standin.artifacts(task["id"])["results"]["uri"]).read_text(encoding="utf-8")
        assert json.loads(results.splitlines()[0])["zh_text"] == "检查点里的译文"
        assert standin.errors == []


def test_reproduce_reruns_with_the_same_data_and_pinned_models(run: dict[str, Any], tmp_path: Path) -> None:
    out, again = run["out"], tmp_path / "again"
    proc = cli("clearml_pipeline", "reproduce", str(out), "--output", str(again))
    stdout = ok(proc)
    assert re.search(r"^BLEU\s+\S+\s+\S+$", stdout, re.MULTILINE) and "before" in stdout and "now" in stdout
    recorded = {m["role"]: m["revision"] for m in json.loads((out / "summary.json").read_text())["models"]}
    config = json.loads((again / "pipeline.json").read_text())
    assert config["speech_translation"]["revision"] == recorded["speech_translation"]
    assert config["machine_translation"]["revision"] == recorded["machine_translation"]
    assert config["shards"] == parse_shards(SHARDS) and (again / "steps" / "speech_synthesis_shard1").is_dir()
    old = [json.loads(line)["id"] for line in (out / "results.jsonl").open()]
    assert [json.loads(line)["id"] for line in (again / "results.jsonl").open()] == old
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["translation"]["scored_items"] == N_CLIPS


def test_reproduce_refuses_a_changed_dataset(run: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run["out"], copy, ignore=shutil.ignore_patterns("clearml", "steps", "audio"))
    summary = json.loads((copy / "summary.json").read_text())
    summary["dataset"]["info"]["content_hash"] = "0" * 64
    (copy / "summary.json").write_text(json.dumps(summary))
    proc = cli("clearml_pipeline", "reproduce", str(copy), "--output", str(tmp_path / "new"))
    assert proc.returncode == 2 and "has changed since the run" in proc.stderr


def test_reproduce_refuses_an_output_that_clearml_would_misread_before_writing(
    run: dict[str, Any], tmp_path: Path
) -> None:
    """A backslash in OUT: ClearML's SDK would put parts of the offline sessions in a folder beside it
    (clearml_pipeline.tracking.check_session_folder), so nothing is created or emptied."""
    proc = cli("clearml_pipeline", "reproduce", str(run["out"]), "--output", str(tmp_path / "b\\s"))
    assert proc.returncode == 2 and "cannot keep its offline sessions" in proc.stderr
    assert os.listdir(tmp_path) == []
