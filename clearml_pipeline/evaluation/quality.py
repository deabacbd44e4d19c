"""Scoring against a human Mandarin reference (FLEURS's `reference_zh`), and the flat `quality` block.

- zh_translation: the pipeline's Chinese text (zh_text) against reference_zh: character-level BLEU/chrF on the
  raw texts (as SeamlessM4T scores its text outputs: unnormalized references);
- asr_translation (ASR-BLEU): the evaluation's Whisper transcript of the synthesized speech (the `asr_zh` the
  intelligibility pass made: zh, transcribe, temperature 0, beam 1, no fallback) against reference_zh, both
  sides through metrics.normalize_asr_zh, character-level;
- quality: zh_bleu, zh_chrf, asr_bleu, asr_chrf, en_bleu, en_chrf, cer with their signatures, item counts, the
  dataset and split: what report.md's quality table, the `quality` scalars and reproduce show.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from clearml_pipeline.evaluation.metrics import ASR_NORMALIZATION, normalize_asr_zh, zh_scores
from data_prep.manifest import ManifestRow
from steps.results import ItemResult

# quality's metric keys, in report order: (key, block in metrics.json, value in the block, signature key)
QUALITY_KEYS: tuple[tuple[str, str, str, str | None], ...] = (
    ("zh_bleu", "zh_translation", "bleu", "bleu_signature"),
    ("zh_chrf", "zh_translation", "chrf", "chrf_signature"),
    ("asr_bleu", "asr_translation", "bleu", "bleu_signature"),
    ("asr_chrf", "asr_translation", "chrf", "chrf_signature"),
    ("en_bleu", "translation", "bleu", "bleu_signature"),
    ("en_chrf", "translation", "chrf", "chrf_signature"),
    ("cer", "intelligibility", "cer", None),
)


def section(items: list[dict[str, Any]], key: str, values: dict[str, Any], why_none: str) -> dict[str, Any]:
    """A metric block: its values, how many items it scored, the other items counted by reason."""
    not_scored = Counter(item[f"{key}_reason"] for item in items if item[f"{key}_reason"])
    scored = len(items) - sum(not_scored.values())
    reason = None if scored else why_none
    return {**values, "scored_items": scored, "not_scored": dict(not_scored), "reason": reason}


def _reference_reason(ref: ManifestRow | None, has_manifest: bool) -> str | None:
    if not has_manifest:
        return "no manifest"
    if ref is None:
        return "not in manifest"
    if not (ref.reference_zh or "").strip():
        return "no reference_zh in manifest"
    return None


def score_zh_translation(
    rows: list[ItemResult], refs: dict[str, ManifestRow], items: list[dict[str, Any]], has_manifest: bool
) -> dict[str, Any]:
    hyps, golds = [], []
    for row, item in zip(rows, items, strict=True):
        ref = refs.get(row.id)
        item["reference_zh"] = ref.reference_zh if ref else None
        if row.zh_text is None:  # failed before machine translation finished
            reason = f"failed at {row.stage}" if row.status == "error" else "no Chinese text"
        else:
            reason = _reference_reason(ref, has_manifest)
        if reason is None:
            # An input heard as silence has an empty zh_text: scored as such, the system said nothing.
            hyps.append(row.zh_text or "")
            golds.append(ref.reference_zh or "")  # type: ignore[union-attr]
        item["zh_translation_reason"] = reason
    why = "no manifest given (--manifest)" if not has_manifest else "no item has both Chinese text and a reference_zh"
    return section(items, "zh_translation", zh_scores(hyps, golds), why)


def score_asr_translation(
    rows: list[ItemResult],
    refs: dict[str, ManifestRow],
    items: list[dict[str, Any]],
    has_manifest: bool,
    asr: dict[str, Any] | None,
) -> dict[str, Any]:
    """ASR-BLEU from the intelligibility pass's transcripts (run it first): one Whisper pass serves both."""
    hyps, golds = [], []
    for row, item in zip(rows, items, strict=True):
        ref, heard = refs.get(row.id), ""
        item["asr_zh_normalized"] = None
        if row.status == "error":
            reason: str | None = f"failed at {row.stage}"
        elif row.no_speech:
            reason = None  # no speech in, no speech out: scored as an empty transcript
        elif item.get("asr_zh") is None:
            reason = item.get("intelligibility_reason") or "ASR failed"
        else:
            reason, heard = None, item["asr_zh"]
        reason = reason or _reference_reason(ref, has_manifest)
        if reason is None:
            item["asr_zh_normalized"] = normalize_asr_zh(heard)
            hyps.append(item["asr_zh_normalized"])
            golds.append(normalize_asr_zh(ref.reference_zh or ""))  # type: ignore[union-attr]
        item["asr_translation_reason"] = reason
    info: dict[str, Any] = {"norm": ASR_NORMALIZATION}
    if asr:
        info |= {"asr": asr["model_id"], "asr_beam": asr["num_beams"], "asr_temp": asr["temperature"]}
    why = "no manifest given (--manifest)" if not has_manifest else "no item has a transcript and a reference_zh"
    if all(item.get("intelligibility_reason") == "disabled" for item in items) and items:
        why = "disabled: ASR-BLEU transcribes in the intelligibility pass (--intelligibility false)"
    return section(items, "asr_translation", zh_scores(hyps, golds, info), why)


def dataset_label(manifest: Path | None) -> str | None:
    """`name@hash12` from the dataset folder's dataset.json; the folder's name for a bare manifest."""
    if manifest is None:
        return None
    info_file = manifest.parent / "dataset.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        return f"{info['name']}@{str(info['content_hash'])[:12]}"
    except (OSError, ValueError, KeyError, TypeError):
        return manifest.parent.name


def quality_summary(metrics: dict[str, Any], refs: dict[str, ManifestRow], manifest: Path | None) -> dict[str, Any]:
    """The flat block: every metric's value, signature and scored count, with the dataset and split."""
    splits = sorted({ref.split for ref in refs.values()})
    out: dict[str, Any] = {
        "dataset": dataset_label(manifest),
        "split": ",".join(splits) or None,
        "items": metrics["counts"]["items"],
        "signatures": {},
        "scored_items": {},
    }
    for key, block, value, signature in QUALITY_KEYS:
        out[key] = metrics[block][value]
        out["signatures"][key] = metrics[block][signature] if signature else None
        out["scored_items"][key] = metrics[block]["scored_items"]
    return out
