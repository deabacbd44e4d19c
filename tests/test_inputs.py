"""A user's own folder is followed (symlinks included); a manifest's paths are not trusted to leave their folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clearml_pipeline.bench import BenchOptions
from clearml_pipeline.inputs import discover_inputs
from clearml_pipeline.replicas import StreamingOptions
from resources.paths import UnsafePathError
from steps.results import ItemResult
from steps.stages import StepContext
from tests.speech import tone


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """clips/ with a real clip, a linked clip and a linked folder from elsewhere, a link cycle and odd entries."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "more").mkdir(parents=True)
    tone(elsewhere / "linked.wav", 0.5, amplitude=0.3)
    tone(elsewhere / "more" / "deep.wav", 0.5, amplitude=0.3)
    clips = tmp_path / "clips"
    clips.mkdir()
    tone(clips / "own.wav", 0.5, amplitude=0.3)
    (clips / "linked.wav").symlink_to(elsewhere / "linked.wav")
    (clips / "more").symlink_to(elsewhere / "more", target_is_directory=True)
    (clips / "loop").symlink_to(clips, target_is_directory=True)  # a cycle: visited once
    (clips / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (clips / "folder.wav").mkdir()
    os.mkfifo(clips / "pipe.wav")
    (clips / "notes.txt").write_text("not an input")
    return clips


def test_a_users_folder_follows_links_and_lists_every_audio_named_entry(user_folder: Path) -> None:
    items = {item.id: item.path for item in discover_inputs(user_folder)}
    assert set(items) == {"own", "linked", "more__deep", "dangling", "folder", "pipe"}
    assert items["linked"] == user_folder / "linked.wav"  # the path as the user sees it, links not resolved
    assert items["more__deep"].resolve() == (user_folder.parent / "elsewhere" / "more" / "deep.wav")


def test_the_steps_runtime_follows_a_users_links_and_refuses_a_manifests(user_folder: Path, tmp_path: Path) -> None:
    row = ItemResult("linked", "linked.wav")
    followed = StepContext(tmp_path / "out", 60.0, input_root=user_folder, follow_links=True)
    assert followed.source(row).resolve() == (user_folder.parent / "elsewhere" / "linked.wav")
    strict = StepContext(tmp_path / "out", 60.0, input_root=user_folder)  # a dataset manifest's paths
    with pytest.raises(UnsafePathError, match="resolves outside"):
        strict.source(row)
    with pytest.raises(UnsafePathError, match="climbs out"):
        followed.source(ItemResult("x", "../elsewhere/linked.wav"))  # never `..`, whoever wrote the row


def test_the_replica_planner_is_the_default_of_streaming_and_the_bench() -> None:
    assert StreamingOptions().replicas == "auto"
    assert "replicas" not in {f for f in BenchOptions.__dataclass_fields__}  # the bench takes StreamingOptions'
