"""What each pipeline step does, on local folders: read the previous step's output, write this step's.

A step's output folder holds `results.jsonl` (every input item, in order: the output contract), `run.json` (what
the run has accumulated: dataset, models, busy seconds, config) and `summary.json`; speech synthesis adds
`audio/`, evaluation adds `metrics.json`, `report.md` and `plots/`. step_task.py wraps these in ClearML tasks
and moves the folders between machines as artifacts.

A stage step resumes from `partial.jsonl` (its own folder's, or the checkpoint a retried task downloads) only
row by row, and only where the row's resume key matches: a hash of the stage's configuration (less the
machine's cache folders), of the row as this step was given it (less timings) and, for the stage that decodes
the input, of the input file's bytes. Same names with other audio, or another model, is a fresh start.

A stage whose StageSpec knows a row's `size` (machine translation, speech synthesis: the text's length) takes the
rows longest first, so that each batch holds items of like size; results.jsonl keeps the input order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clearml_pipeline.config import PipelineConfig
from clearml_pipeline.execution import INTERRUPTED, ResultsSink, read_rows_leniently, run_groups
from clearml_pipeline.inputs import discover_inputs
from clearml_pipeline.pipeline import PipelineStep, StepIO
from clearml_pipeline.reporting import report_audio_samples, report_stage, report_vad_plots
from clearml_pipeline.results import run_device, summarize
from data_prep.manifest import read_manifest
from resources.json_text import dumps
from steps.options import fields_with
from steps.results import ItemResult, load_rows, write_rows
from steps.stages import AUDIO_DIR, INPUT, StageSpec, StepContext, build_stage, longest_first

RESULTS, RUN, SUMMARY, PARTIAL = "results.jsonl", "run.json", "summary.json", "partial.jsonl"
MANIFEST = "manifest.jsonl"
RESUME_KEY = "resume_key"  # the extra field of each partial.jsonl line


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
    (dest / RUN).write_text(dumps(merge_runs(runs), indent=2), encoding="utf-8")
    audio = None
    shutil.rmtree(dest / AUDIO_DIR, ignore_errors=True)  # an earlier run's merge is not this one's
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
    rows = dataset_rows(root, env.config.run.runner.limit)
    if not rows:
        raise ValueError(f"the dataset {env.io.dataset!r} holds no audio items")
    write_rows(env.out / RESULTS, rows)
    env.logger.report_scalar("dataset", "items", len(rows), iteration=0)
    dataset = {"ref": env.io.dataset, "has_manifest": manifest.is_file(), "items": len(rows)}
    info = root / "dataset.json"  # data_prep's record: content hash, source, counts
    if info.is_file():
        dataset["info"] = {k: v for k, v in json.loads(info.read_text()).items() if k in ("content_hash", "source")}
    return {"dataset": dataset, "models": [], "busy_s": {}, "wall_s": {}, "stages": {}}


def dataset_rows(root: Path, limit: int, absolute: bool = False) -> list[ItemResult]:
    """The dataset's items as rows: a data_prep dataset's manifest, or every audio file of a folder.

    Between steps a `source` is relative to the dataset folder (each agent has its own copy of a ClearML
    Dataset, elsewhere); a manifest's stays so everywhere (data, checked against the folder where it is read).
    `absolute`: a folder's files with their path under `root` as given, what OUT/results.jsonl shows."""
    manifest = root / MANIFEST
    if manifest.is_file():  # data: every id made safe and unique; a bad `audio` path fails its row in stage 1
        rows = [ItemResult(r.id, r.audio) for r in read_manifest(manifest, check_audio=False, check_paths=False)]
    else:
        rows = [
            ItemResult(item.id, str(item.path) if absolute else item.path.relative_to(root).as_posix())
            for item in discover_inputs(root)
        ]
    return rows[:limit] if limit else rows


def run_stage(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Run one model stage over every row the previous stages left ok; resume from partial results if any."""
    from registry.refs import resolve_sections

    assert given is not None and env.step.stage is not None
    spec, runner = env.step.stage, env.config.run.runner
    rows = load_rows(given.results)
    run = json.loads(given.run.read_text(encoding="utf-8"))
    changes, resolved = resolve_sections({spec.name: env.config.section(spec.name)})
    run.setdefault("registry", {}).update(resolved)
    stage = build_stage(spec, env.config.updated(changes).section(spec.name))
    stage.ensure_ready()
    # A manifest's paths are untrusted (they must stay inside the dataset); a user's own folder is followed.
    from_user_folder = not run.get("dataset", {}).get("has_manifest", False)
    root = env.dataset_root() if spec.reads_dataset else None
    ctx = StepContext(env.out, runner.max_audio_seconds, input_root=root, follow_links=from_user_folder)
    shard, shards = shard_of(env.io.shard)
    mine = [row for i, row in enumerate(rows) if i % shards == shard]
    keys = resume_keys(env.config, spec, mine, ctx)  # from the rows as given, before the stage changes them
    done = _resumable(env, spec.name, keys)
    _fresh_audio(env, given, done)
    todo = [row for row in mine if row.id not in done]
    if spec.size is not None:  # a whole dataset at hand: batches of like size (results.jsonl keeps input order)
        todo = longest_first(todo, spec.size)
    label = f"{spec.name} [{env.io.shard}]" if shards > 1 else spec.name
    bar = tqdm(total=len(todo) + len(done), initial=len(done), desc=label)
    sink = ResultsSink(env.out / PARTIAL, append=True, checkpoint=env.checkpoint, every=env.io.checkpoint_every,
                       extra=lambda row: {RESUME_KEY: keys[row.id]})
    with sink, bar:
        interrupted = run_groups([(spec, stage)], todo, ctx, sink, runner.batch_size, bar.update)
    finished = {row.id: row for row in (*done.values(), *todo)}
    rows = [finished.get(row.id, row) for row in rows]  # other shards' rows pass through untouched
    write_rows(env.out / RESULTS, rows)
    if interrupted:  # every row is written (the unfinished ones marked); the task itself stops here
        raise KeyboardInterrupt
    (env.out / PARTIAL).unlink(missing_ok=True)
    run["busy_s"][spec.name] = stage.stats.busy_s
    if spec.reads_dataset:  # decoding the input audio happens in this step
        run["busy_s"][INPUT] = sum(r.latency_s.get(INPUT, 0.0) for r in todo)
    run["models"] = [m for m in run["models"] if m["role"] not in _roles(stage)] + [asdict(m) for m in stage.models()]
    run["stages"][spec.name] = report_stage(env.logger, spec.name, rows, stage.stats.busy_s)
    if "segments" in spec.writes:  # the stage that found the speech shows where it was
        run["vad_plots"] = report_vad_plots(env.logger, todo, ctx, env.io.audio_samples)
    if "zh_audio" in spec.writes:
        run["audio_samples"] = report_audio_samples(env.logger, rows, env.out, env.io.audio_samples)
    return run


def _roles(stage: Any) -> set[str]:
    return {m.role for m in stage.models()}


def resume_keys(config: PipelineConfig, spec: StageSpec, rows: list[ItemResult], ctx: StepContext) -> dict[str, str]:
    """Each row's resume key: what decides this stage's output for it (see the module docstring)."""
    options = config.section(spec.name)
    machine = {f.name for f in fields_with(options, "cache")}  # where this machine keeps models: not the input
    settings = {k: v for k, v in asdict(options).items() if k not in machine}
    if spec.reads_dataset:
        settings["max_audio_seconds"] = config.run.runner.max_audio_seconds
    stage_key = json.dumps({"stage": spec.name, "options": settings}, sort_keys=True, default=str)
    keys = {}
    for row in rows:
        given = {k: v for k, v in asdict(row).items() if k != "latency_s"}
        content = _file_hash(ctx, row) if spec.reads_dataset else ""
        text = "\n".join((stage_key, dumps(given, sort_keys=True), content))
        keys[row.id] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return keys


def _file_hash(ctx: StepContext, row: ItemResult) -> str:
    """The sha256 of the row's input file (a file that cannot be read has its own key: it fails again)."""
    digest = hashlib.sha256()
    try:
        with ctx.source(row).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except (OSError, ValueError) as exc:  # ValueError: a manifest path that leaves the dataset
        return f"unreadable: {type(exc).__name__}"
    return digest.hexdigest()


def _resumable(env: StepEnv, stage: str, keys: dict[str, str]) -> dict[str, ItemResult]:
    """Rows an earlier attempt finished whose resume key is this row's; a synthesized row counts only if its
    audio file is here too. Anything else is discarded, said so, and partial.jsonl rewritten with the rest."""
    source = env.resume_from or env.out / PARTIAL
    if not source.is_file():
        return {}
    lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
    stored = {}
    for line in lines:  # a torn last line (a crash while writing) is skipped
        try:
            data = json.loads(line)
            stored[data["id"]] = data.get(RESUME_KEY)
        except (ValueError, KeyError, TypeError):
            continue
    rows = read_rows_leniently(source)
    done = {}
    for item_id, row in rows.items():
        if row.stage == INTERRUPTED:  # written so that the attempt's rows were complete; not done
            continue
        if stored.get(item_id) is None or stored[item_id] != keys.get(item_id):
            continue
        if row.zh_audio and not ((audio := row.audio_inside(env.out)) and audio.is_file()):
            continue
        done[item_id] = row
    if stale := sum(row.stage != INTERRUPTED for row in rows.values()) - len(done):
        print(f"{stage}: discarding {stale} partial result(s) of an earlier attempt: not made from this run's "
              f"inputs and configuration (or their audio is missing); they are computed again")
    if done:
        print(f"{stage}: resuming, {len(done)} item(s) already done by an earlier attempt")
    with ResultsSink(env.out / PARTIAL, extra=lambda row: {RESUME_KEY: keys[row.id]}) as sink:
        if done:
            sink.append(list(done.values()))
    return done


def _fresh_audio(env: StepEnv, given: StepInput | None, done: dict[str, ItemResult]) -> None:
    """This step's audio/ holds this run's files only: the previous step's, or the resumed rows' own."""
    audio = env.out / AUDIO_DIR
    keep = {Path(row.zh_audio).name for row in done.values() if row.zh_audio}
    if audio.is_dir() and not audio.is_symlink():
        for wav in audio.glob("*.wav"):
            if wav.name not in keep:
                wav.unlink()
    if given is not None and given.audio is not None and given.audio != audio:
        shutil.copytree(given.audio, audio, dirs_exist_ok=True)


def evaluate(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Score the finished run (clearml_pipeline.evaluation) into this step's folder."""
    from clearml_pipeline.evaluation import evaluate_run, report_metrics

    assert given is not None
    shutil.copyfile(given.results, env.out / RESULTS)
    _fresh_audio(env, given, {})
    run = json.loads(given.run.read_text(encoding="utf-8"))
    write_summary(env, run, load_rows(env.out / RESULTS))
    from registry.refs import resolve_sections

    manifest = env.dataset_root() / MANIFEST
    changes, resolved = resolve_sections({"evaluation": env.config.evaluation})
    run.setdefault("registry", {}).update(resolved)
    metrics = evaluate_run(env.out, manifest if manifest.is_file() else None, env.config.updated(changes).evaluation)
    report_metrics(metrics, env.logger)
    run["metrics"] = metrics
    return run


def write_summary(env: StepEnv, run: dict[str, Any], rows: list[ItemResult]) -> dict[str, Any]:
    """summary.json for the run so far; wall time is the sum of the steps' own times (no queueing)."""
    from steps.base import ModelInfo

    models = [ModelInfo(**m) for m in run["models"]]
    wall = sum(run["wall_s"].values())
    summary = summarize(rows, models, run["busy_s"], wall, env.config.to_dict(), run_device(env.config.run))
    summary["dataset"], summary["registry"] = run.get("dataset"), run.get("registry", {})
    (env.out / SUMMARY).write_text(dumps(summary, indent=2), encoding="utf-8")
    return summary


def work(step: PipelineStep) -> Callable[[StepEnv, StepInput | None], dict[str, Any]]:
    """What a step does: every stage runs its stage; the first step ingests, the last evaluates."""
    if step.stage is not None:
        return run_stage
    return evaluate if step.parents else ingest


def execute(env: StepEnv, given: StepInput | None) -> dict[str, Any]:
    """Run the step, then write run.json and summary.json; returns the run record."""
    env.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = work(env.step)(env, given)
    run["wall_s"][env.step.name] = time.perf_counter() - started
    (env.out / RUN).write_text(dumps(run, indent=2), encoding="utf-8")
    if env.step.parents:  # the ingest step has no rows with results yet
        write_summary(env, run, load_rows(env.out / RESULTS))
    return run
