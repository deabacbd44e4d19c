"""Ingestion: Common Voice releases, Hugging Face datasets and audio folders -> dataset folders the pipeline reads.

The contract (see data_prep.manifest and data_prep.dataset): <out>/<name>/<hash12>/ holding audio/<id>.wav
(16 kHz mono 16-bit PCM), manifest.jsonl, report.json, report.md and dataset.json.
"""
