"""Server tier: the real pipeline controller, model registry and datasets against the ClearML stand-in.

One flow, run once for the module, as a user would with a real server:
  1. `python -m data_prep ingest --clearml` registers a Common Voice fixture (espeak-ng speech, CoVoST references)
     as a ClearML Dataset; a second identical ingest reuses that version;
  2. `python -m registry register` puts the fixture Whisper and Marian into ClearML's model registry;
  3. `python -m clearml_pipeline run --dataset ID --st-model registry:whisper-large ... --run-steps-locally true`
     runs the PipelineController here, each step as its own task process (ClearML's local-steps mode).
The tests then read what the stand-in recorded: tasks, parameters, DAG, artifacts, models.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.pipeline import parse_shards, plan
from tests.clearml_standin import Standin, start_standin
from tests.cli import REPO, ok, python_m
from tests.cv_fixture import covost_path, make_common_voice_fixture

N_CLIPS = 3
SHARDS = "1:2:1"  # machine translation fanned out into two tasks: the multi-machine path
NODES = {node.name: node for node in plan(parse_shards(SHARDS))}
STEP_NAMES = tuple(NODES)  # ingest, speech_translation, machine_translation_shard0/1, speech_synthesis, evaluation
MT_SHARDS = ("machine_translation_shard0", "machine_translation_shard1")


def cli(standin: Standin, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return python_m(*args, env=standin.subprocess_env(), timeout=timeout)


@pytest.fixture(scope="module")
def flow(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("server")
    release = make_common_voice_fixture(root / "cv", n_good=N_CLIPS)
    with start_standin(root / "standin") as standin:
        ingest = (
            "data_prep", "ingest", "--source", "common_voice", "--path", str(release), "--split", "validated",
            "--covost", str(covost_path(release)), "--out", str(root / "datasets"), "--no-progress",
            "--clearml", "--dataset-name", "cv-es-fixture",
        )
        first = ok(cli(standin, *ingest))
        again = ok(cli(standin, *ingest))
        dataset_id = re.search(r"^clearml .* id=(\w+)", first, re.MULTILINE).group(1)  # type: ignore[union-attr]
        hf_cache = str(fixture_caches.hf_hub_cache)
        registered = {}
        for stage, source, name in (
            ("speech_translation", "openai/whisper-large", "whisper-large"),
            ("machine_translation", "Helsinki-NLP/opus-mt-en-zh", "opus-mt-en-zh"),
        ):
            out = ok(cli(standin, "registry", "register", "--stage", stage, "--source", source, "--cache", hf_cache))
            registered[name] = re.search(r"^registered: \S+ id=(\w+)", out, re.MULTILINE).group(1)  # type: ignore[union-attr]
        listing = ok(cli(standin, "registry", "list"))
        started = time.monotonic()
        pipeline_run = (
            "clearml_pipeline", "run", "--dataset", dataset_id, "--models", "fixtures",
            "--st-model", "registry:whisper-large", "--mt-model", "registry:opus-mt-en-zh",
            "--run-steps-locally", "true", "--poll-seconds", "0.5", "--eval-intelligibility", "false",
            "--gpu-queue", "gpu-a100", "--cpu-queue", "cpu-pool", "--shards", SHARDS,
        )
        run = cli(standin, *pipeline_run)
        errors_after_first_run = standin.errors
        again_run = cli(standin, *pipeline_run)  # unchanged code and inputs: every step is taken from the cache
        errors_after_rerun = standin.errors
        standin.add_queue("services")
        pipeline_id = re.search(r"^pipeline (\w+) finished", run.stdout, re.MULTILINE)
        reproduce = cli(standin, "clearml_pipeline", "reproduce", pipeline_id.group(1) if pipeline_id else "?",
                        "--output", str(root / "unused"))
        yield {
            "standin": standin,
            "pipeline_id": pipeline_id.group(1) if pipeline_id else None,
            "reproduce": reproduce,
            "errors_after_first_run": errors_after_first_run,
            "errors_after_rerun": errors_after_rerun,
            "again_run": again_run,
            "dataset_id": dataset_id,
            "ingest_first": first,
            "ingest_again": again,
            "registered": registered,
            "listing": listing,
            "run": run,
            "run_s": time.monotonic() - started,
        }


def pipeline_tasks(standin: Standin, index: int = 0) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    controllers = [t for t in standin.tasks() if t["type"] == "controller" and t["status"] == "completed"]
    assert len(controllers) == 2  # the run and its cached rerun (a reproduce clone waits in the queue)
    controller = controllers[index]
    # Step tasks are the controller's children; a reproduce clone is one too, but a controller itself.
    children = [t for t in standin.tasks() if t.get("parent") == controller["id"]]
    steps = {t["name"]: t for t in children if t["type"] != "controller"}
    return controller, steps


def param(task: dict[str, Any], key: str) -> str:
    section, name = key.split("/")
    return task["hyperparams"][section][name]["value"]


def artifact_json(standin: Standin, task: dict[str, Any], name: str) -> Any:
    path = standin.file_path(standin.artifacts(task["id"])[name]["uri"])
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(
        text
    )


def test_the_pipeline_ran_every_step_as_its_own_task(flow: dict[str, Any]) -> None:
    ok(flow["run"])
    standin = flow["standin"]
    assert flow["errors_after_first_run"] == [], flow["errors_after_first_run"]
    controller, steps = pipeline_tasks(standin)
    assert controller["status"] == "completed" and "pipeline" in controller["system_tags"]
    assert set(steps) == set(STEP_NAMES)
    assert len({t["id"] for t in steps.values()}) == len(STEP_NAMES)
    for name, task in steps.items():
        assert task["status"] == "completed", name
        assert param(task, "step/name") == NODES[name].step.name
        assert param(task, "step/shard") == NODES[name].shard_spec
        assert task["script"]["entry_point"].endswith("step_task.py")
    assert [steps[n]["type"] for n in STEP_NAMES] == ["data_processing", *["inference"] * 4, "qc"]
    assert [param(steps[n], "step/shard") for n in MT_SHARDS] == ["0/2", "1/2"]


def test_queues_and_parameters_come_from_the_pipeline(flow: dict[str, Any]) -> None:
    controller, steps = pipeline_tasks(flow["standin"])
    dag = json.loads(controller["configuration"]["Pipeline"]["value"])
    queues = {name: dag[name]["queue"] for name in STEP_NAMES}
    assert queues == {
        "ingest": "${pipeline.cpu_queue}",
        "speech_translation": "${pipeline.gpu_queue}",
        "machine_translation_shard0": "${pipeline.gpu_queue}",
        "machine_translation_shard1": "${pipeline.gpu_queue}",
        "speech_synthesis": "${pipeline.cpu_queue}",
        "evaluation": "${pipeline.gpu_queue}",
    }
    # Pipeline parameters (the UI's new-run dialog) are the controller's "Args"; its entry point keeps the command.
    pipeline_params = {k: v["value"] for k, v in controller["hyperparams"]["Args"].items()}
    assert controller["script"]["entry_point"].startswith("-m clearml_pipeline.__main__  run --dataset")
    assert pipeline_params["gpu_queue"] == "gpu-a100" and pipeline_params["cpu_queue"] == "cpu-pool"
    assert pipeline_params["dataset"] == flow["dataset_id"]
    assert pipeline_params["st_model"] == "registry:whisper-large"
    assert dag["machine_translation_shard1"]["parents"] == ["speech_translation"]
    assert dag["speech_synthesis"]["parents"] == list(MT_SHARDS)
    # Each step task got the pipeline's values, and its input is its parent tasks (all shards of the step before).
    assert param(steps["speech_translation"], "speech_translation/model") == "registry:whisper-large"
    for shard in MT_SHARDS:
        assert param(steps[shard], "machine_translation/model") == "registry:opus-mt-en-zh"
    for name in STEP_NAMES:
        assert param(steps[name], "step/dataset") == flow["dataset_id"]
        assert param(steps[name], "runner/models") == "fixtures"
        assert dag[name]["parents"] == list(NODES[name].parents)
        assert param(steps[name], "step/input") == ",".join(steps[p]["id"] for p in NODES[name].parents)


def test_artifacts_passed_between_steps_are_the_ones_read(flow: dict[str, Any]) -> None:
    standin = flow["standin"]
    _, steps = pipeline_tasks(standin)
    rows = {name: artifact_json(standin, steps[name], "results") for name in STEP_NAMES}
    ids = [r["id"] for r in rows["ingest"]]
    assert len(ids) == N_CLIPS  # the dataset's accepted clips, fetched through Dataset.get
    for name in STEP_NAMES[1:]:
        assert [r["id"] for r in rows[name]] == ids  # every item accounted for, in order, at every step
    # Machine translation translated exactly the English that speech translation's artifact holds, each shard its
    # own items (index % 2); speech synthesis read the shards' artifacts merged.
    st = {r["id"]: r for r in rows["speech_translation"]}
    mt = {}
    for k, shard in enumerate(MT_SHARDS):
        for i, row in enumerate(rows[shard]):
            assert row["en_text"] == st[row["id"]]["en_text"]
            assert bool(row["zh_text"]) == (i % 2 == k)  # the other shard's items pass through untranslated
            if i % 2 == k:
                mt[row["id"]] = row
    assert set(mt) == set(ids)
    for row in rows["speech_synthesis"]:
        assert row["zh_text"] == mt[row["id"]]["zh_text"] and row["zh_audio"] == f"audio/{row['id']}.wav"
    assert "audio" in standin.artifacts(steps["speech_synthesis"]["id"])
    media = standin.events(steps["speech_synthesis"]["id"], "training_debug_image")
    assert {e["variant"] for e in media} == set(ids)  # playable samples, one per clip (fewer than the limit)
    scalars = standin.scalars(steps["speech_synthesis"]["id"])
    assert {"speech_synthesis latency (s)", "latency (s)", "throughput", "real-time factor", "errors"} <= set(scalars)
    assert standin.events(steps["speech_synthesis"]["id"], "plot")  # the latency histogram and the text table


def test_models_came_through_the_registry(flow: dict[str, Any]) -> None:
    standin = flow["standin"]
    models = {m["id"]: m for m in standin.models()}
    for name, model_id in flow["registered"].items():
        assert models[model_id]["name"] == name and model_id in flow["listing"]
    whisper = models[flow["registered"]["whisper-large"]]
    assert {"speech_translation", "transformers", "es-en"} <= set(whisper["tags"])
    assert whisper["metadata"]["source"]["value"] == "openai/whisper-large"
    assert len(whisper["metadata"]["content_hash"]["value"]) == 64
    _, steps = pipeline_tasks(standin)
    for step, key, name in (
        ("speech_translation", "speech_translation.model", "whisper-large"),
        ("machine_translation_shard0", "machine_translation.model", "opus-mt-en-zh"),
        ("machine_translation_shard1", "machine_translation.model", "opus-mt-en-zh"),
    ):
        resolved = artifact_json(standin, steps[step], "run")["registry"][key]
        assert resolved["id"] == flow["registered"][name] and resolved["ref"] == f"registry:{name}"


def test_dataset_registered_once_and_scored_against_its_references(flow: dict[str, Any]) -> None:
    assert "registered new version" in flow["ingest_first"]
    assert "reused existing version" in flow["ingest_again"] and flow["dataset_id"] in flow["ingest_again"]
    dataset = flow["standin"].task(flow["dataset_id"])
    assert "dataset" in dataset["system_tags"] and dataset["status"] == "completed"
    _, steps = pipeline_tasks(flow["standin"])
    metrics = artifact_json(flow["standin"], steps["evaluation"], "metrics")
    # The references travelled inside the ClearML Dataset (manifest.jsonl, CoVoST join): every clip was scored.
    assert metrics["translation"]["scored_items"] == N_CLIPS
    assert metrics["translation"]["bleu_signature"].startswith("nrefs:1")
    scalars = flow["standin"].scalars(steps["evaluation"]["id"])
    assert scalars, "evaluation reported no scalars"


def test_a_rerun_with_unchanged_inputs_reuses_every_step(flow: dict[str, Any]) -> None:
    ok(flow["again_run"])
    _, first = pipeline_tasks(flow["standin"], 0)
    controller, _ = pipeline_tasks(flow["standin"], 1)
    dag = json.loads(controller["configuration"]["Pipeline"]["value"])
    assert {name: dag[name]["executed"] for name in STEP_NAMES} == {name: first[name]["id"] for name in STEP_NAMES}
    # The cached rerun asks for a few things the stand-in does not serve (it would delete the step tasks it
    # created and then found in the cache, and reads their logs); nothing else was refused.
    later = flow["errors_after_rerun"][len(flow["errors_after_first_run"]) :]
    assert {endpoint for endpoint, _ in later} <= {"events.get_task_events", "tasks.delete"}, later


def test_reproduce_clones_the_pipeline_with_its_parameters_and_enqueues_it(flow: dict[str, Any]) -> None:
    out = ok(flow["reproduce"])
    standin, original = flow["standin"], flow["pipeline_id"]
    clone_id = re.search(r"cloned as (\w+)", out).group(1)  # type: ignore[union-attr]
    clone = standin.task(clone_id)
    assert clone["hyperparams"]["Args"] == standin.task(original)["hyperparams"]["Args"]  # dataset, models, queues
    assert clone["script"]["entry_point"] == standin.task(original)["script"]["entry_point"]
    assert standin.queued("services") == [clone_id] and clone["status"] == "queued"


def test_an_unreachable_server_is_reported_in_seconds(tmp_path: Path) -> None:
    with start_standin(tmp_path / "gone") as gone:
        env = gone.subprocess_env()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "clearml_pipeline", "run", "--dataset", "abc"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "does not answer" in proc.stderr and gone.api_url in proc.stderr
    assert time.monotonic() - started < 60  # imports included; the probe itself takes under 5 s
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "does not answer" in proc.stderr


def test_no_server_configured_points_to_local_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env["CLEARML_CONFIG_FILE"] = str(tmp_path / "missing.conf")
    proc = subprocess.run(
        [sys.executable, "-m", "clearml_pipeline", "run", "--dataset", "abc"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "no ClearML server is configured" in proc.stderr and "--local" in proc.stderr
