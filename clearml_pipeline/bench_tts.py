"""bench-tts: the speech synthesis stage alone, on the same Chinese texts, at each TTS batch size.

python -m clearml_pipeline bench-tts --models fixtures-full --batch-sizes 1,8 --requests 16 --output OUT

One loaded stage (EspnetSynthesizer) synthesizes `--requests` texts (registry.fixtures.corpus.CHINESE, cycled),
longest first as the speech synthesis step takes a dataset's rows (`--order given`: as they come, the streaming
runtime's case), in calls of `--items-per-call` items: `--warmup-passes` untimed passes over the same texts at
each size (shapes seen, as a serving process has seen them), then `--repeats` timed passes at that size, one size
after the other.
OUT/bench_tts.json has, per batch size, the median pass's items_per_s, rtf (synthesis seconds
/ audio seconds) and audio_seconds, with every pass's rtf (rtf_passes), plus max_abs_diff: the
largest difference between the batched mels and ESPnet's own one-at-a-time Text2Speech mels with the prenet's
inference dropout off, both in the stage's dtype (and max_abs_diff_wave for the vocoder on the same mels;
under bfloat16 max_abs_diff_float32, the batched mels against ESPnet's float32 ones), and acoustic_rtf / vocoder_rtf:
each alone, one piece at a time, on the first `--items-per-call` texts. speedup_ceiling = the first batch size's
rtf / vocoder_rtf: the most that batching Tacotron2 can give while the vocoder goes piece by piece (the CPU
default), were batched decoding free.

Every timed pass repeats its warm-up's texts, so every shape has been seen, as in a process that serves the same
texts again. `--fresh-lengths` times each batch size on decode lengths no earlier pass used instead (fixtures:
frames per phone + 0.25 x (k + 1) for the k-th timed pass), as a serving process meets new utterances: oneDNN
then builds primitives for new input lengths, which the stage's `vocoder_bucket_frames` bounds. speedup is the
ratio of the rtfs (of items/s where the audio is the same).

Which caches a fixture model set uses, and the TTS fixtures built alone: clearml_pipeline.tts_models.
The fixtures' stop token never fires, so every piece decodes exactly `--frames-per-phone` x (phones + 1) frames
(maxlenratio): random weights then cost what real speech costs (CSMSC speech: about 10 frames of 12.5 ms
per phone).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from clearml_pipeline.tts_models import stage_options

FRAMES_PER_PHONE = 10.0
# The stage's fields that bench-tts offers as --tts-* flags, with their help here (None: the stage's value).
STAGE_FLAGS = {
    "device": "cpu, cuda or auto",
    "dtype": "auto, float32, bfloat16 or float16",
    "channels_last": "vocoder convolutions on channels-last views: auto, true, false",
    "fused_vocoder": "HiFiGAN's activations and additions fused: auto, true, false",
    "packed_lstm": "batched Tacotron2's LSTM weights packed for oneDNN: auto, true, false",
    "vocoder_bucket_frames": "vocoder input padded to a multiple; 1: exact",
    "vocoder_windows": "auto, true or false: long vocoder inputs in overlapping windows",
    "vocoder_window_frames": "the windows' length in frames",
}


def equivalence(stage: Any, texts: list[str]) -> dict[str, float | None]:
    """Largest |batched - ESPnet one-at-a-time| over every frame of the mels (prenet dropout off), both in the
    stage's dtype, the batched ones decoded as the stage decodes them (on packed LSTM cells or not):
    `max_abs_diff`; and over every sample of the waves vocoded from the same mels (`max_abs_diff_wave`).
    Under bfloat16 also `max_abs_diff_float32`: the batched mels against ESPnet's float32 ones, what the lower
    precision itself changes. A mel figure is None for an acoustic model the stage does not batch
    (FastSpeech2 goes through ESPnet piece by piece: there is nothing to compare)."""
    import torch

    from steps.device import pick_dtype
    from steps.speech_synthesis import denormalized
    from steps.tacotron_batch import batchable, prenet_dropout, tacotron2_inference, vocode

    t2s, opts = stage.tts, stage.options
    diffs: dict[str, float | None] = {"max_abs_diff": None, "max_abs_diff_wave": None, "max_abs_diff_float32": None}
    if t2s.vocoder is None:  # VITS: no features, no vocoder, nothing batched
        return diffs
    pieces = [p for text in texts if not isinstance(plan := stage.pieces(text), Exception) for p in plan[0]]
    ids = [torch.as_tensor(t2s.preprocess_fn("<dummy>", {"text": p})["text"]).long() for p in pieces]
    with torch.inference_mode():
        with stage.precision():
            if batchable(t2s.tts):
                with prenet_dropout(t2s.tts, 0.0):
                    batched = tacotron2_inference(
                        t2s.tts, ids, opts.threshold, opts.minlenratio, opts.maxlenratio, stage.decoder_cells()
                    )
                    single = [t2s(p)["feat_gen"] for p in pieces]
                diffs["max_abs_diff"] = max(_diff(b.feat_gen, s) for b, s in zip(batched, single, strict=True))
            else:
                single = [t2s(p)["feat_gen"] for p in pieces]
            feats = [denormalized(t2s.model, s) for s in single]
            waves = vocode(t2s.vocoder, feats)
            lone = [t2s.vocoder(f).view(-1) for f in feats]
            diffs["max_abs_diff_wave"] = max(_diff(w, one) for w, one in zip(waves, lone, strict=True))
        if diffs["max_abs_diff"] is not None and pick_dtype(opts.dtype, opts.device) != torch.float32:
            with prenet_dropout(t2s.tts, 0.0):
                reference = [t2s(p)["feat_gen"] for p in pieces]  # float32: no autocast
            diffs["max_abs_diff_float32"] = max(
                _diff(b.feat_gen.float(), r) for b, r in zip(batched, reference, strict=True)
            )
    return diffs


def components(stage: Any, texts: list[str]) -> dict[str, float | None]:
    """Real-time factors of the acoustic model and of the vocoder, each alone on the pieces of `texts`, one
    piece at a time (ESPnet's own path): where a pairing's time goes. The vocoder's is None for a model that
    makes the wave itself (VITS). Each is timed on its second pass: the batched passes before may have pushed
    these exact lengths' oneDNN primitives out of its cache (measured: the vocoder's rtf 0.044 after exact-length
    passes, 0.091 after bucketed ones, on the first pass)."""
    import torch

    t2s = stage.tts
    pieces = [p for text in texts if not isinstance(plan := stage.pieces(text), Exception) for p in plan[0]]
    vocoder, t2s.vocoder = t2s.vocoder, None  # Text2Speech then stops at the features (or VITS's wave)
    try:
        with torch.inference_mode(), stage.precision():
            outs = [t2s(p) for p in pieces]
            start = time.perf_counter()
            outs = [t2s(p) for p in pieces]
            acoustic = time.perf_counter() - start
            if vocoder is None:
                return {"acoustic_rtf": acoustic / (sum(len(o["wav"]) for o in outs) / stage.sample_rate)}
            feats = [o["feat_gen"] if o.get("feat_gen_denorm") is None else o["feat_gen_denorm"] for o in outs]
            for f in feats:
                vocoder(f)
            start = time.perf_counter()
            samples = sum(len(vocoder(f).view(-1)) for f in feats)
            vocoding = time.perf_counter() - start
    finally:
        t2s.vocoder = vocoder
    seconds = samples / stage.sample_rate
    return {"acoustic_rtf": acoustic / seconds, "vocoder_rtf": vocoding / seconds}


def _diff(a: Any, b: Any) -> float:
    return float("inf") if a.shape != b.shape else float((a - b).abs().max())


def measure(stage: Any, texts: list[str], items_per_call: int) -> dict[str, Any]:
    start = time.perf_counter()
    results = [r for at in range(0, len(texts), items_per_call) for r in stage.run(texts[at : at + items_per_call])]
    wall = time.perf_counter() - start
    audio = sum(r.output.seconds for r in results if r.ok)
    return {
        "items_per_s": len(texts) / wall,
        "rtf": wall / audio if audio else None,
        "audio_seconds": audio,
        "wall_s": wall,
        "errors": sum(not r.ok for r in results),
    }


def median_pass(timed: list[dict[str, Any]]) -> dict[str, Any]:
    """The pass with the median rtf (the lower of the two middle ones for an even count: a pass that ran), with
    every pass's rtf in the order they ran."""
    ranked = sorted(timed, key=lambda p: p["rtf"] if p["rtf"] is not None else float("inf"))
    return {**ranked[(len(ranked) - 1) // 2], "rtf_passes": [p["rtf"] for p in timed]}


def run_bench_tts(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from clearml_pipeline.memory import objects_frozen
    from registry.fixtures.corpus import CHINESE
    from steps.speech_synthesis import EspnetSynthesizer
    from steps.stages import longest_first
    from steps.tacotron_batch import batchable

    if args.fresh_lengths and args.models == "hub":
        raise ValueError("--fresh-lengths sets the fixtures' decode lengths; real models stop where they stop")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    options = stage_options(
        args.models,
        args.frames_per_phone,
        model=args.tts_model,
        vocoder=args.tts_vocoder,
        **{name: getattr(args, f"tts_{name}") for name in STAGE_FLAGS},
    )
    stage = EspnetSynthesizer(options)
    stage.ensure_ready()
    texts = [CHINESE[i % len(CHINESE)] for i in range(args.requests)]
    if args.order == "length":  # as the speech synthesis step takes a dataset's rows (steps.stages.longest_first)
        texts = longest_first(texts, len)
    stage.run(texts[:1])  # warm-up: first-call allocations and lazy imports stay out of the figures
    passes: dict[str, list[dict[str, Any]]] = {str(size): [] for size in args.batch_sizes}
    fresh = itertools.count()
    with objects_frozen():  # as every runtime's loop runs (clearml_pipeline.memory)
        # One size at a time, as a serving process runs one: ESPnet's own path (batch 1) vocodes exact lengths and
        # the batched one windows and buckets, and the two together outgrow oneDNN's primitive cache (measured,
        # full-size, bfloat16: with the sizes taking turns, batch 1's rtf went from 0.27-0.32 to 0.41-0.43, batch 8's
        # from 0.09-0.10 to 0.33-0.34; with ONEDNN_PRIMITIVE_CACHE_CAPACITY=8192 they stayed at 0.32 and 0.09-0.10).
        for size in args.batch_sizes:
            stage.options = replace(stage.options, batch_size=size)
            # Untimed passes over the same texts first: the first call at each new shape builds its oneDNN
            # primitives, so without them whichever batch size ran first paid for shapes the next one reused
            # (measured: FastSpeech2, never batched, ran 1.3-1.6x faster at the second batch size than the first).
            for _ in range(args.warmup_passes):
                measure(stage, texts, args.items_per_call)
            for repeat in range(args.repeats):
                if args.fresh_lengths:  # the timed pass decodes lengths that no pass before it has
                    decode_ratio(stage, fresh_ratio(args.frames_per_phone, next(fresh)))
                passes[str(size)].append(measure(stage, texts, args.items_per_call))
                print(f"bench-tts: batch {size}, pass {repeat + 1}: {passes[str(size)][-1]}")
            if args.fresh_lengths:  # the next size's warm-up and the checks below run at --frames-per-phone again
                decode_ratio(stage, options.maxlenratio)
    per_batch = {size: median_pass(timed) for size, timed in passes.items()}
    diffs = equivalence(stage, list(CHINESE[: args.check_items]))
    parts = components(stage, texts[: args.items_per_call])
    # rtf, not items/s: with --fresh-lengths each batch size decodes slightly different lengths (the same
    # ratio as items/s where the audio is the same).
    rtfs = [per_batch[str(size)]["rtf"] for size in args.batch_sizes]
    first_rtf, vocoder_rtf = per_batch[str(args.batch_sizes[0])]["rtf"], parts.get("vocoder_rtf")
    # Only a batched acoustic model has a ceiling to report, and only while batching leaves the vocoder's cost as it is.
    piecewise = batchable(stage.tts.tts) and not stage.batch_vocoder()
    infos = {m.role: m.model_id for m in stage.models()}
    return {
        "models": args.models,
        "model": infos.get("speech_synthesis"),
        "vocoder": infos.get("vocoder"),
        "device": stage.options.device,
        "dtype": stage.options.dtype,
        "channels_last_layers": stage.channels_last_layers,
        "fused_vocoder_blocks": stage.fused_blocks,
        "packed_lstm": batchable(stage.tts.tts) and stage.decoder_cells() is not None,
        "threads": torch.get_num_threads(),
        "requests": args.requests,
        "items_per_call": args.items_per_call,
        "order": args.order,
        "warmup_passes": args.warmup_passes,
        "fresh_lengths": args.fresh_lengths,
        "vocoder_bucket_frames": stage.options.vocoder_bucket_frames,
        "vocoder_window_frames": stage.options.vocoder_window_frames if stage.window_reach() else None,
        "frames_per_phone": args.frames_per_phone if args.models != "hub" else None,
        "batch_sizes": per_batch,
        "speedup": rtfs[0] / rtfs[-1] if rtfs[0] and rtfs[-1] else None,
        "repeats": args.repeats,
        "speedup_ceiling": first_rtf / vocoder_rtf if piecewise and first_rtf and vocoder_rtf else None,
        "acoustic_rtf": parts["acoustic_rtf"],
        "vocoder_rtf": vocoder_rtf,
        **diffs,
        "equivalence_items": args.check_items,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "hardware": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": {name: metadata.version(name) for name in ("torch", "espnet", "parallel_wavegan")},
    }


FRESH_STEP = 0.25  # frames per phone added to each timed pass under --fresh-lengths (the k-th: (k + 1) x this)


def fresh_ratio(frames_per_phone: float, index: int) -> float:
    """The decode ratio of the `index`-th timed pass (0, 1, ... in the order they run) under --fresh-lengths:
    int(len x ratio) then differs from the warm-up's and every other timed pass's length for any piece of 4 tokens
    or more."""
    return frames_per_phone + FRESH_STEP * (index + 1)


def decode_ratio(stage: Any, maxlenratio: float) -> None:
    """Set the decode length ratio of both paths: the batched one reads the options, ESPnet's own Text2Speech
    (batch size 1) the decode_conf it was built with."""
    stage.options = replace(stage.options, maxlenratio=maxlenratio)
    if "maxlenratio" in stage.tts.decode_conf:  # only autoregressive models have one
        stage.tts.decode_conf["maxlenratio"] = maxlenratio


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes are whole numbers >= 1, comma separated: {text!r}")
    return sizes


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from steps.options import flag_type
    from steps.speech_synthesis import SpeechSynthesisOptions

    parser.add_argument("--models", choices=("hub", "fixtures", "fixtures-full"), default="fixtures-full")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 8], help="comma separated, e.g. 1,8")
    parser.add_argument("--requests", type=int, default=16, help="Chinese texts synthesized per batch size")
    parser.add_argument("--items-per-call", type=int, default=8, help="items per stage call (the runner's batch)")
    parser.add_argument(
        "--order",
        choices=("length", "given"),
        default="length",
        help="the texts longest first, as the speech synthesis step runs a dataset (length), or cycled from the "
        "corpus as they come, as the streaming runtime meets them (given)",
    )
    parser.add_argument("--warmup-passes", type=int, default=1, help="untimed passes before each batch size is timed")
    parser.add_argument(
        "--repeats",
        type=_positive,
        default=3,
        help="timed passes per batch size; each size reports its median pass (the spread is in rtf_passes)",
    )
    parser.add_argument("--frames-per-phone", type=float, default=FRAMES_PER_PHONE, help="fixture decode length")
    parser.add_argument(
        "--fresh-lengths",
        action="store_true",
        help="fixtures: time each pass on decode lengths no earlier pass used (frames per phone + 0.25 x k), "
        "as a serving process meets new utterances; the warm-up still runs the texts at --frames-per-phone",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--check-items", type=int, default=4, help="texts in the max_abs_diff check")
    parser.add_argument("--tts-model", default=None, help="another acoustic model id (default: the stage's)")
    parser.add_argument("--tts-vocoder", default=None, help="another vocoder (default: the stage's)")
    # The stage's own fields under --tts-* flags, parsed and checked as `run`'s are (a typo is a usage error).
    for name, help_text in STAGE_FLAGS.items():
        parser.add_argument(
            f"--tts-{name.replace('_', '-')}",
            type=flag_type(SpeechSynthesisOptions, name),
            default=None,
            help=f"{help_text} (default: the stage's)",
        )
    parser.add_argument("--output", type=Path, required=True, help="folder for bench_tts.json")


def main(args: argparse.Namespace) -> int:
    report = run_bench_tts(args)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "bench_tts.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"bench-tts: {path}")
    return 0 if all(row["errors"] == 0 for row in report["batch_sizes"].values()) else 1


def format_table(report: dict[str, Any]) -> str:
    """The report as a short table and summary lines; a figure that could not be measured (every item of a pass
    failed, no vocoder to time) reads n/a."""
    lines = ["| batch | items/s | rtf | audio s |", "| --- | --- | --- | --- |"]
    for size, row in report["batch_sizes"].items():
        lines.append(f"| {size} | {row['items_per_s']:.3f} | {_num(row['rtf'], '.3f')} | {row['audio_seconds']:.1f} |")
    lines.append(
        f"alone, one piece at a time: acoustic model rtf {_num(report['acoustic_rtf'], '.3f')}, "
        f"vocoder rtf {_num(report['vocoder_rtf'], '.3f')}"
    )
    passes = "; ".join(
        f"batch {size} " + ", ".join(_num(rtf, ".3f") for rtf in row["rtf_passes"])
        for size, row in report["batch_sizes"].items()
    )
    speedup = "n/a" if report["speedup"] is None else f"{report['speedup']:.2f}x"
    lines.append(f"speedup {speedup}: the median passes of {report['repeats']} (rtf per pass: {passes})")
    lines.append(
        f"max_abs_diff {_num(report['max_abs_diff'], '.2e')} (mels), {_num(report['max_abs_diff_wave'], '.2e')} "
        f"(waves); {report['threads']} thread(s), {report['dtype']}"
    )
    if report.get("speedup_ceiling") is not None:
        lines.append(
            f"speedup ceiling {report['speedup_ceiling']:.2f}x: batch {next(iter(report['batch_sizes']))}'s rtf / "
            "the vocoder's, which goes piece by piece at every batch size"
        )
    if report.get("max_abs_diff_float32") is not None:
        lines.append(f"{report['dtype']} mels vs float32's: max_abs_diff {report['max_abs_diff_float32']:.2e}")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m clearml_pipeline.bench_tts", description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
