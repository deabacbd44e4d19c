"""The bottom layer: what every other package reads from the outside world, and nothing about stages.

- weights: model ids -> local files (Hugging Face snapshots, parallel_wavegan vocoders), with fast, clear failures;
- audio: decoding, resampling and writing audio files, and the energy measures the stages gate on;
- paths: joining untrusted relative paths (manifests, ids) under a folder without escaping it;
- clearml_server: is a ClearML server configured and answering, decided in seconds;
- compat: shims for third-party packages that no longer import as they are.

Layers, each importing only from those below it: resources -> steps -> data_prep, registry -> clearml_pipeline
(tests/test_layers.py checks every import).
"""
