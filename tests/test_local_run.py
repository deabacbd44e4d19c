"""End to end: `python -m clearml_pipeline run --local` on real Spanish speech plus bad inputs, fixture models.

This is the default runtime (each pipeline step an offline ClearML task in its own process); tests/test_pipeline.py
checks the ClearML side of the same kind of run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.speech import SPANISH_SENTENCES, speak, tone


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    speak(SPANISH_SENTENCES[0], folder / "a_hola.wav", rate=22050)
    speak(SPANISH_SENTENCES[1], folder / "b_gato.mp3", rate=48000, channels=2)
    speak(SPANISH_SENTENCES[2], folder / "nested" / "c_playa.flac", rate=44100)
    # 40 s of speech: longer than Whisper's window, under the run's --max-audio-seconds 60.
    long_clip = folder / "d_long.wav"
    speak(" ".join(SPANISH_SENTENCES * 4), long_clip, rate=16000)
    data, sr = sf.read(str(long_clip))
    sf.write(str(long_clip), np.tile(data, int(np.ceil(40 * sr / len(data))))[: 40 * sr], sr)
    tone(folder / "e_silence.wav", 3.0)
    (folder / "f_empty.wav").write_bytes(b"")
    (folder / "g_corrupt.mp3").write_bytes(os.urandom(4000))
    tone(folder / "h_too_long.ogg", 70.0, amplitude=0.2)
    (folder / "notes.txt").write_text("not audio: ignored")
    return folder


@pytest.fixture(scope="module")
def run(inputs: Path, fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "S2ST_FIXTURES_DIR": str(fixture_caches.root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clearml_pipeline",
            "run",
            "--local",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--models",
            "fixtures",
            "--max-audio-seconds",
            "60",
            "--batch-size",
            "4",
            "--st-max-new-tokens",
            "16",
            "--mt-max-new-tokens",
            "16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {
        "proc": proc,
        "out": out,
        "rows": {r["id"]: r for r in rows},
        "order": [r["id"] for r in rows],
        "summary": json.loads((out / "summary.json").read_text()),
    }


def test_every_input_is_a_row_in_input_order_and_the_exit_status_reports_failures(run: dict[str, Any]) -> None:
    assert run["proc"].returncode == 1, run["proc"].stderr[-2000:]
    assert run["order"] == [
        "a_hola",
        "b_gato",
        "d_long",
        "e_silence",
        "f_empty",
        "g_corrupt",
        "h_too_long",
        "nested__c_playa",
    ]


@pytest.mark.parametrize("item", ["a_hola", "b_gato", "nested__c_playa", "d_long"])
def test_speech_is_translated_and_synthesized(run: dict[str, Any], item: str) -> None:
    row = run["rows"][item]
    assert row["status"] == "ok" and row["error"] is None and not row["no_speech"]
    assert row["en_text"] and row["zh_text"]
    info = sf.info(str(run["out"] / row["zh_audio"]))
    assert (info.samplerate, info.subtype, info.channels) == (24000, "PCM_16", 1)
    assert info.duration == pytest.approx(row["zh_audio_seconds"], abs=0.01)
    stages = {"input", "speech_translation", "machine_translation", "speech_synthesis", "total"}
    assert set(row["latency_s"]) == stages
    assert row["latency_s"]["total"] == pytest.approx(sum(v for k, v in row["latency_s"].items() if k != "total"))
    assert row["source"].endswith(Path(row["source"]).name)


def test_long_audio_is_translated_whole(run: dict[str, Any]) -> None:
    assert run["rows"]["d_long"]["audio_seconds"] == pytest.approx(40.0, abs=0.05)


def test_silence_is_an_empty_translation_with_no_audio(run: dict[str, Any]) -> None:
    row = run["rows"]["e_silence"]
    assert row["status"] == "ok" and row["no_speech"] is True
    assert row["en_text"] == "" and row["zh_text"] == "" and row["zh_audio"] is None


@pytest.mark.parametrize(
    ("item", "message"),
    [("f_empty", "empty file"), ("g_corrupt", "not decodable"), ("h_too_long", "over the 60 s limit")],
)
def test_bad_inputs_are_error_rows(run: dict[str, Any], item: str, message: str) -> None:
    row = run["rows"][item]
    assert row["status"] == "error" and row["stage"] == "input" and message in row["error"]
    assert row["zh_audio"] is None


def test_summary_counts_models_throughput_and_versions(run: dict[str, Any]) -> None:
    summary = run["summary"]
    assert summary["counts"] == {
        "items": 8,
        "ok": 5,
        "error": 3,
        "no_speech": 1,
        "with_unsayable_text": summary["counts"]["with_unsayable_text"],
    }
    models = {m["role"]: m for m in summary["models"]}
    assert models["speech_translation"]["model_id"] == "openai/whisper-large"
    assert models["machine_translation"]["model_id"] == "Helsinki-NLP/opus-mt-en-zh"
    assert len(models["speech_translation"]["revision"]) == 40
    assert models["vocoder"]["model_id"] == "parallel_wavegan/csmsc_hifigan.v1"
    for name in ("speech_translation", "machine_translation", "speech_synthesis"):
        stage = summary["stages"][name]
        assert stage["items_per_s"] > 0 and stage["latency_s"]["p50"] <= stage["latency_s"]["p95"]
    assert summary["stages"]["speech_translation"]["items"] == 5
    assert summary["stages"]["speech_synthesis"]["items"] == 4
    assert summary["versions"]["transformers"] and summary["versions"]["espnet"]
    assert summary["config"]["runner"]["models"] == "fixtures"
    assert {p.name for p in (run["out"] / "audio").iterdir()} == {
        "a_hola.wav",
        "b_gato.wav",
        "d_long.wav",
        "nested__c_playa.wav",
    }


def test_progress_and_summary_are_printed(run: dict[str, Any]) -> None:
    assert "5/8 ok, 3 error, 1 no speech" in run["proc"].stdout
    for index, step in enumerate(("ingest", "speech_translation", "speech_synthesis", "evaluation")):
        assert f"] {step}" in run["proc"].stdout  # "[2/5] speech_translation": each step announced
        if index in (1, 2):
            assert f"{step}: 100%" in run["proc"].stderr  # each stage's tqdm bar reaches the end


def test_source_is_the_input_path_as_given(run: dict[str, Any], inputs: Path) -> None:
    """The same kind of path in every runtime: absolute, as the user gave it (tests/test_signals.py checks the
    in-process and streaming runtimes)."""
    sources = {r["id"]: r["source"] for r in run["rows"].values()}
    assert sources["a_hola"] == str(inputs / "a_hola.wav")
    assert sources["nested__c_playa"] == str(inputs / "nested" / "c_playa.flac")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, errors="backslashreplace", env=_env(), timeout=900
    )  # backslashreplace: a path that is not UTF-8


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "clearml_pipeline", "run", "--local", *args, "--models", "fixtures",
            "--st-max-new-tokens", "8", "--mt-max-new-tokens", "8", "--tts-maxlenratio", "4"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}


@pytest.mark.parametrize("victim", ["machine_translation", "evaluation"])
def test_a_later_step_that_dies_keeps_every_row_and_the_run_fails(
    fixture_caches: Any, tmp_path: Path, victim: str
) -> None:
    """A step process killed mid-run (SIGKILL: the out-of-memory killer) fails the rows it had not finished, with
    what earlier steps made kept, and every row is in OUT (README). The evaluation step dying fails no row, and
    the run still did not finish: exit 1 and summary.json's failed_step (it was exit 0, as if it had)."""
    import psutil

    folder, out = tmp_path / "clips", tmp_path / "out"
    speak(SPANISH_SENTENCES[0], folder / "a.wav")
    speak(SPANISH_SENTENCES[1], folder / "b.wav")
    proc = subprocess.Popen(_command("--input", str(folder), "--output", str(out)), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = False, time.monotonic() + 600
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if f"--step {victim} " in " ".join(child.cmdline()):
                    child.kill()
                    killed = True
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed and proc.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert f"step {victim} died (exit -9)" in stderr
    rows = {row["id"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    summary = json.loads((out / "summary.json").read_text())
    assert set(rows) == {"a", "b"} and summary["failed_step"] == f"step {victim} died (exit -9)"
    if victim == "evaluation":  # every row went through every stage: kept as it is, with its audio
        assert all(row["status"] == "ok" and (out / row["zh_audio"]).is_file() for row in rows.values())
    else:  # speech translation's English is kept; the rest failed, saying why
        for row in rows.values():
            assert row["status"] == "error" and row["stage"] == victim and row["en_text"]
            assert row["error"].startswith(f"not processed: step {victim} died (exit -9)") and not row["zh_audio"]


def test_a_rerun_into_the_same_out_inside_the_input_keeps_nothing_of_the_earlier_run(
    fixture_caches: Any, tmp_path: Path
) -> None:
    """OUT inside the input folder is never read as input, and a rerun (here in the other runtime) leaves no WAV
    of the earlier run's items in OUT/audio."""
    folder, out = tmp_path / "clips", tmp_path / "clips" / "out"
    speak(SPANISH_SENTENCES[0], folder / "a.wav")
    speak(SPANISH_SENTENCES[1], folder / "b.wav")
    first = _run("--runtime", "inprocess", "--input", str(folder), "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert {p.name for p in (out / "audio").iterdir()} == {"a.wav", "b.wav"}
    (folder / "b.wav").unlink()
    speak(SPANISH_SENTENCES[2], folder / "c.wav")
    second = _run("--input", str(folder), "--output", str(out))  # the steps runtime
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is inside the input folder; it is not read as input" in second.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "c"]  # not out/audio/a.wav as an input
    assert {p.name for p in (out / "audio").iterdir()} == {"a.wav", "c.wav"}  # no b.wav from the first run
    # The steps runtime's pipeline.json goes with the rest of its run: left beside an in-process run's summary,
    # `reproduce OUT` would have rerun the earlier run's config.
    assert (out / "pipeline.json").is_file()
    third = _run("--runtime", "inprocess", "--input", str(folder), "--output", str(out))
    assert third.returncode == 0, third.stderr[-3000:]
    assert not (out / "pipeline.json").exists()
    again = subprocess.run([sys.executable, "-m", "clearml_pipeline", "reproduce", str(out), "--output",
                            str(tmp_path / "again")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "has no pipeline.json" in again.stderr and not (tmp_path / "again").exists()


def test_an_output_that_is_a_file_or_cannot_be_written_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    clip = tone(tmp_path / "a.wav", 1.0)
    (tmp_path / "taken").write_text("a file")
    # As root every folder is writable; /proc refuses new folders to anyone.
    unwritable = Path("/proc/s2st-out") if os.geteuid() == 0 else tmp_path / "locked" / "out"
    if os.geteuid() != 0:
        (tmp_path / "locked").mkdir(mode=0o500)
    for out, message in ((tmp_path / "taken", "is a file, not a folder"), (unwritable, "cannot be written")):
        proc = _run("--input", str(clip), "--output", str(out))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_mistyped_option_input_or_model_stops_the_run_before_it_touches_an_earlier_runs_output(
    fixture_caches: Any, tmp_path: Path
) -> None:
    clip, out = tone(tmp_path / "a.wav", 1.0), tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"id": "earlier"}\n')
    proc = _run("--runtime", "streaming", "--tts-dtype", "float8", "--input", str(clip), "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--tts-dtype: takes one of auto, float32, float16, bfloat16; got 'float8'" in proc.stderr
    assert "Traceback" not in proc.stderr and (out / "results.jsonl").read_text() == '{"id": "earlier"}\n'
    for runtime in ("steps", "inprocess"):  # a mistyped input path, in the default runtime and another
        proc = _run("--runtime", runtime, "--input", str(tmp_path / "a.wva"), "--output", str(out))
        assert proc.returncode == 2 and f"error: input {tmp_path / 'a.wva'} does not exist" in proc.stderr
        assert (out / "results.jsonl").read_text() == '{"id": "earlier"}\n'
        proc = _run("--runtime", runtime, "--mt-model", str(tmp_path / "no-model"), "--input", str(clip),
                    "--output", str(out))
        assert proc.returncode == 2, proc.stderr[-2000:]
        missing = f"machine_translation.model (--mt-model): model folder '{tmp_path / 'no-model'}' does not exist"
        assert missing in proc.stderr and "Traceback" not in proc.stderr
        assert (out / "results.jsonl").read_text() == '{"id": "earlier"}\n'
        (tmp_path / "empty").mkdir(exist_ok=True)  # a folder with nothing to translate
        proc = _run("--runtime", runtime, "--input", str(tmp_path / "empty"), "--output", str(out))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"error: no audio files (wav, flac, mp3, ogg, opus) under {tmp_path / 'empty'}" in proc.stderr
        assert "Traceback" not in proc.stderr and (out / "results.jsonl").read_text() == '{"id": "earlier"}\n'
    # One input that is not an audio file the steps runtime's ingest step lists: said before OUT is emptied (a FIFO
    # was "does not exist", and a text file "the dataset OUT/input holds no audio items", after OUT was emptied).
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "notes.txt").write_text("not audio")
    for given, said in ((tmp_path / "pipe.wav", "pipe.wav is a FIFO (named pipe), not an audio file"),
                        (Path("/dev/zero"), "zero is a device file, not an audio file"),
                        (tmp_path / "notes.txt", f"input {tmp_path / 'notes.txt'} is not an audio file (wav, flac")):
        proc = _run("--input", str(given), "--output", str(out))
        assert proc.returncode == 2 and f"error: {said}" in proc.stderr, proc.stderr[-2000:]
        assert (out / "results.jsonl").read_text() == '{"id": "earlier"}\n' and not (out / "input").exists()


def test_a_file_name_that_is_not_utf8_is_translated_in_every_runtime(fixture_caches: Any, tmp_path: Path) -> None:
    """A Latin-1 name (lone surrogates once decoded) failed every runtime's first write of a row ("'utf-8' codec
    can't encode ... surrogates not allowed"): the whole run, for one file name. Its row now says where it came
    from (json.loads gives back the path, which opens the file), and OUT may have such a name too."""
    inputs = Path(os.fsdecode(os.fsencode(tmp_path) + b"/entrada-\xe9"))
    speak(SPANISH_SENTENCES[0], inputs / os.fsdecode(b"ni\xf1o.wav"))
    blip = os.fsencode(inputs / "blip.wav")  # nothing left of it at 16 kHz
    sf.write(blip, np.full(4, 0.5, dtype=np.float32), 192_000, format="WAV")
    for runtime in ("steps", "inprocess", "streaming"):
        out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/salida-\xe9-" + runtime.encode()))
        proc = _run("--runtime", runtime, "--input", str(inputs), "--output", str(out))
        assert proc.returncode == 1, proc.stderr[-2000:]  # the blip's error row
        text = (out / "results.jsonl").read_text(encoding="utf-8")  # strict: valid UTF-8
        rows = {row["id"]: row for row in map(json.loads, text.splitlines())}
        assert set(rows) == {"blip", "ni_o"}, runtime  # the byte that is not UTF-8 made safe
        assert rows["ni_o"]["status"] == "ok" and (out / rows["ni_o"]["zh_audio"]).is_file()
        assert os.fsencode(rows["ni_o"]["source"]) == os.fsencode(inputs) + b"/ni\xf1o.wav"
        assert rows["blip"]["status"] == "error" and "none at 16000 Hz" in rows["blip"]["error"]
        json.loads((out / "summary.json").read_text(encoding="utf-8"))
    # nothing beside the inputs and the three OUTs (ClearML's cache setting, escaped in clearml.conf, made "salida")
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"entrada-\xe9", *(b"salida-\xe9-" + r for r in
                                                            (b"inprocess", b"steps", b"streaming"))]


def test_an_out_clearml_would_read_as_another_folder_is_refused_before_anything_is_written(
    fixture_caches: Any, tmp_path: Path
) -> None:
    """ClearML's SDK makes a backslash a slash in its cache folder: under `b\\s` parts of a step's offline session
    went to `b/s/` beside OUT. The steps runtime (each step a ClearML task) says so instead, and writes nothing."""
    clip = tone(tmp_path / "a.wav", 1.0)
    proc = _run("--input", str(clip), "--output", str(tmp_path / "b\\s"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ClearML cannot keep its offline sessions under {tmp_path / 'b'}" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "b\\s"] and os.listdir(tmp_path / "b\\s") == []


def test_ids_do_not_shift_when_a_file_is_added(tmp_path: Path) -> None:
    """A repeated id gets a hash of its own path, not a number counted among its siblings."""
    from clearml_pipeline.inputs import discover_inputs

    for name in ("x.mp3", "x.wav", "y.wav"):
        (tmp_path / name).write_bytes(b"")
    before = {item.path.name: item.id for item in discover_inputs(tmp_path)}
    (tmp_path / "x.flac").write_bytes(b"")  # sorts first: it takes the plain id `x`
    after = {item.path.name: item.id for item in discover_inputs(tmp_path)}
    assert before["x.mp3"] == "x" and before["x.wav"].startswith("x-") and before["x.wav"] != "x-2"
    assert after["x.wav"] == before["x.wav"] and after["y.wav"] == "y"
    assert len(set(after.values())) == 4


@pytest.mark.parametrize(
    ("flag", "model"), [("--mt-model", "nobody/no-such-mt-model"), ("--eval-asr-model", "nobody/no-such-asr-model")]
)
def test_a_missing_later_model_stops_the_steps_runtime_before_any_step(
    fixture_caches: Any, tmp_path: Path, flag: str, model: str
) -> None:
    """The steps runtime starts each step in its own process; every step's models are located first, so a missing
    machine translation (or evaluation ASR) model is exit 2 before speech translation ever ran."""
    clip = tone(tmp_path / "a.wav", 1.0)
    out = tmp_path / "out"
    started = time.perf_counter()
    proc = _run("--input", str(clip), "--output", str(out), flag, model)  # fixture env: HF_HUB_OFFLINE=1
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and model in errors[0] and flag in errors[0] and "not in the local model cache" in errors[0]
    assert "Traceback" not in proc.stderr
    assert "[1/" not in proc.stdout  # no step was started, not even ingestion
    assert not (out / "steps").exists() and not (out / "results.jsonl").exists()
    assert elapsed < 120, f"took {elapsed:.0f} s"


def test_the_controller_with_local_steps_checks_every_model_before_building_the_pipeline(
    fixture_caches: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clearml_pipeline import controller
    from clearml_pipeline.config import PipelineConfig
    from resources.weights import ModelUnavailableError

    monkeypatch.setattr("resources.clearml_server.check_server", lambda *a, **k: None)
    built: list[Any] = []
    monkeypatch.setattr(controller, "build_pipeline", lambda *a: built.append(a) or pytest.fail("pipeline built"))
    config = PipelineConfig().updated(
        {"runner": {"models": "fixtures"}, "speech_synthesis": {"model": "nobody/no-such-tts-model"}}
    )
    options = controller.RemoteOptions(dataset="some-dataset-id", run_steps_locally=True)
    with pytest.raises(ModelUnavailableError, match=r"speech_synthesis\.model \(--tts-model\).*no-such-tts-model"):
        controller.launch(config, options)
    assert not built
