"""What each pipeline step does, on local folders: read the previous step's output, write this step's.

A step's output folder holds `results.jsonl` (every input item, in order: the output contract), `run.json` (what
the run has accumulated: dataset, models, busy seconds, config) and `summary.json`; speech synthesis adds
`audio/`, evaluation adds `metrics.json`, `report.md` and `plots/`. step_task.py wraps these in ClearML tasks
and moves the folders between machines as artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clearml_pipeline.pipeline import PipelineConfig, PipelineStep, StepIO
from clearml_pipeline.reporting import report_audio_samples, report_stage
from clearml_pipeline.results import ItemResult, read_results, summarize
from clearml_pipeline.runner import batched, discover_inputs
from clearml_pipeline.stages import AUDIO_DIR, StepContext, build_stage, finish

RESULTS, RUN, SUMMARY, PARTIAL = "results.jsonl", "run.json", "summary.json", "partial.jsonl"
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class StepInput:
    """The previous step's output on local disk (downloaded from its task's artifacts when remote)."""

    results: Path
    run: Path
    audio: Path | None = None


@dataclass
class StepEnv:
    step: PipelineStep
    io: StepIO
    config: PipelineConfig
    out: Path
    logger: Any  # a clearml Logger
    dataset_root: Callable[[], Path]  # the dataset as a local folder (fetched on first use)
    checkpoint: Callable[[Path], None] = lambda path: None  # publish partial results (a remote retry resumes)
    resume_from: Path | None = None  # partial results of an earlier attempt of this task


def write_rows(path: Path, rows: list[ItemResult]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(row.to_json() + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def load_rows(path: Path) -> list[ItemResult]:
    return [ItemResult(**row) for row in read_results(path)]


def merge_inputs(inputs: list[StepInput], dest: Path) -> StepInput:
    """The shards of one step, as one input. Each shard wrote every row but processed only its own (index % N
    == shard), so row i is taken from shard i % N; their audio folders hold disjoint files."""
    if len(inputs) == 1:
        return inputs[0]
    dest.mkdir(parents=True, exist_ok=True)
    shards = [load_rows(given.results) for given in inputs]
    ids = [row.id for row in shards[0]]
    if any([row.id for row in rows] != ids for rows in shards):
        raise ValueError("the shards of the previous step list different items: were they run on the same dataset?")
    write_rows(dest / RESULTS, [shards[i % len(shards)][i] for i in range(len(ids))])
    runs = [json.loads(given.run.read_text(encoding="utf-8")) for given in inputs]
    (dest / RUN).write_text(json.dumps(merge_runs(runs), indent=2, ensure_ascii=False), encoding="utf-8")
    audio = None
    for given in inputs:
        if given.audio is not None:
            audio = dest / AUDIO_DIR
            shutil.copytree(given.audio, audio, dirs_exist_ok=True)
    return StepInput(dest / RESULTS, dest / RUN, audio)


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run record from the shards': what they inherited is identical; what the sharded step added differs:
    busy seconds add up (the work done), wall seconds take the slowest shard (they ran side by side)."""
    run = json.loads(json.dumps(runs[0]))
    for key, combine in (("busy_s", sum), ("wall_s", max)):
        for name in run[key]:
            values = [r[key].get(name, 0.0) for r in runs]
            run[key][name] = combine(values) if len(set(values)) > 1 else values[0]
    for name in run["stages"]:
        figures = [r["stages"].get(name) for r in runs]
        if any(f != figures[0] for f in figures):
            run["stages"][name] = {"shards": figures}
    for r in runs[1:]:
        run.setdefault("registry", {}).update(r.get("registry", {}))
    return run


def shard_of(spec: str) -> tuple[int, int]:
    """"k/N" -> (k, N); "" -> (0, 1)."""
    if not spec:
        return 0, 1
    k, n = (int(part) for part in spec.split("/"))
    if not 0 <= k < n:
        raise ValueError(f"bad shard {spec!r}: want k/N with 0 <= k < N")
    return k, n


def ingest(env: StepEnv, _: StepInput | None) -> dict[str, Any]:
    """Resolve the dataset and list its items: a data_prep dataset (manifest.jsonl) or a folder of audio."""
    root = env.dataset_root()
    manifest = root / MANIFEST
    if manifest.is_file():
        rows = [ItemResult(r["id"], r["audio"]) for r in read_results(manifest)]
    else:
        rows = [ItemResult(item.id, item.path.relative_to(root).as_posix()) for item in discover_inputs(root)]
    if env.config.run.runner.limit:
        rows = rows[: env.config.run.runner.limit]
    if not rows:
        raise ValueError(f"the dataset {env.io.dataset!r} holds no audio items")
    write_rows(env.out / RESULTS, rows)
    env.logger.report_scalar("dataset", "items", len(rows), iteration=0)
    dataset = {"ref": env.io.dataset, "has_manifest": manifest.is_file(), "items": len(rows)}
    info = root / "dataset.json"  # data_prep's record: content hash, source, counts
    if info.is_file():
        dataset["info"] = {k: v for k, v in json.loads(info.read_text()).items() if k in ("content_hash", "source")}
    return {"dataset": dataset, "models": [], "busy_s": {}, "wall_s": {}, "stages": {}}


def run_stage(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Run one model stage over every row the previous stages left ok; resume from partial results if any."""
    from registry.refs import resolve_sections

    assert given is not None and env.step.stage is not None
    spec, runner = env.step.stage, env.config.run.runner
    rows = load_rows(given.results)
    run = json.loads(given.run.read_text(encoding="utf-8"))
    options = env.config.section(spec.name)
    run.setdefault("registry", {}).update(resolve_sections({spec.name: options}))
    stage = build_stage(spec, options)
    stage.ensure_ready()
    root = env.dataset_root() if spec.name == "speech_translation" else None
    ctx = StepContext(env.out, runner.max_audio_seconds, input_root=root)
    if given.audio is not None and given.audio != env.out / AUDIO_DIR:
        shutil.copytree(given.audio, env.out / AUDIO_DIR, dirs_exist_ok=True)
    done = _resumable(env, spec.name)
    shard, shards = shard_of(env.io.shard)
    todo = [row for i, row in enumerate(rows) if i % shards == shard and row.id not in done]
    partial = env.out / PARTIAL
    label = f"{spec.name} [{env.io.shard}]" if shards > 1 else spec.name
    bar = tqdm(total=len(todo) + len(done), initial=len(done), desc=label)
    with partial.open("a", encoding="utf-8") as sink, bar:
        for n, group in enumerate(batched(todo, runner.batch_size), start=1):
            spec.step(stage, list(group), ctx)
            sink.writelines(finish(row).to_json() + "\n" for row in group)
            sink.flush()
            bar.update(len(group))
            if n % max(env.io.checkpoint_every, 1) == 0:
                env.checkpoint(partial)
    finished = {row.id: row for row in (*done.values(), *todo)}
    rows = [finished.get(row.id, row) for row in rows]  # other shards' rows pass through untouched
    write_rows(env.out / RESULTS, rows)
    partial.unlink()
    run["busy_s"][spec.name] = stage.stats.busy_s
    if spec.name == "speech_translation":  # decoding the input audio happens in this step
        run["busy_s"]["input"] = sum(r.latency_s.get("input", 0.0) for r in todo)
    run["models"] = [m for m in run["models"] if m["role"] not in _roles(stage)] + [asdict(m) for m in stage.models()]
    run["stages"][spec.name] = report_stage(env.logger, spec.name, rows, stage.stats.busy_s)
    if spec.name == "speech_synthesis":
        run["audio_samples"] = report_audio_samples(env.logger, rows, env.out, env.io.audio_samples)
    return run


def _roles(stage: Any) -> set[str]:
    return {m.role for m in stage.models()}


def _resumable(env: StepEnv, stage: str) -> dict[str, ItemResult]:
    """Rows an earlier attempt finished; a synthesized row counts only if its audio file is here too."""
    source = env.resume_from or env.out / PARTIAL
    if not source.is_file():
        return {}
    done = {}
    for row in load_rows(source):
        if row.zh_audio and not (env.out / row.zh_audio).is_file():
            continue
        done[row.id] = row
    if done:
        print(f"{stage}: resuming, {len(done)} item(s) already done by an earlier attempt")
    if source != env.out / PARTIAL:
        shutil.copyfile(source, env.out / PARTIAL)
    return done


def evaluate(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Score the finished run (clearml_pipeline.evaluation) into this step's folder."""
    from clearml_pipeline.evaluation import evaluate_run, report_metrics

    assert given is not None
    shutil.copyfile(given.results, env.out / RESULTS)
    if given.audio is not None and given.audio != env.out / AUDIO_DIR:
        shutil.copytree(given.audio, env.out / AUDIO_DIR, dirs_exist_ok=True)
    run = json.loads(given.run.read_text(encoding="utf-8"))
    write_summary(env, run, load_rows(env.out / RESULTS))
    manifest = env.dataset_root() / MANIFEST
    options = env.config.evaluation
    run.setdefault("registry", {}).update(resolve_evaluation_model(options))
    metrics = evaluate_run(env.out, manifest if manifest.is_file() else None, options)
    report_metrics(metrics, env.logger)
    run["metrics"] = metrics
    return run


def resolve_evaluation_model(options: Any) -> dict[str, Any]:
    from registry.refs import resolve_sections

    return resolve_sections({"evaluation": options})


def write_summary(env: StepEnv, run: dict[str, Any], rows: list[ItemResult]) -> dict[str, Any]:
    """summary.json for the run so far; wall time is the sum of the steps' own times (no queueing)."""
    from steps.base import ModelInfo
    from steps.device import pick_device

    models = [ModelInfo(**m) for m in run["models"]]
    wall = sum(run["wall_s"].values())
    device = pick_device(env.config.run.speech_translation.device)
    summary = summarize(rows, models, run["busy_s"], wall, env.config.to_dict(), device)
    summary["dataset"], summary["registry"] = run.get("dataset"), run.get("registry", {})
    (env.out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary


WORK: dict[str, Callable[[StepEnv, StepInput | None], dict[str, Any]]] = {
    "ingest": ingest,
    "speech_translation": run_stage,
    "machine_translation": run_stage,
    "speech_synthesis": run_stage,
    "evaluation": evaluate,
}


def execute(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Run the step, then write run.json and summary.json; returns the run record."""
    env.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = WORK[env.step.name](env, given)
    run["wall_s"][env.step.name] = time.perf_counter() - started
    (env.out / RUN).write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")
    if env.step.name != "ingest":
        write_summary(env, run, load_rows(env.out / RESULTS))
    return run
