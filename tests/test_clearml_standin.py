"""The real ClearML SDK against the test stand-in server (tests/clearml_standin).

Every SDK scenario runs in its own subprocess with the stand-in's environment, so the SDK's process-global state
(the current task, the session, the API version) is fresh each time, as it is for a real pipeline step. Each test
asserts on what the stand-in recorded, and that the stand-in rejected none of the SDK's calls.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.clearml_standin import API_VERSION, Standin, start_standin


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    with start_standin(tmp_path / "standin") as s:
        yield s


def run_sdk(standin: Standin, workdir: Path, code: str, timeout: float = 120, check_errors: bool = True) -> str:
    """Run a Python snippet with the SDK in a fresh process pointed at the stand-in; return its stdout."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / f"sdk_{int(time.time() * 1e6)}.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env=standin.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"SDK script failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    if check_errors:
        assert standin.errors == [], f"the stand-in rejected SDK calls: {standin.errors}"
    return proc.stdout


def marker(stdout: str, name: str) -> str:
    m = re.search(rf"^{name}=(.*)$", stdout, re.MULTILINE)
    assert m, f"{name}= not printed:\n{stdout[-3000:]}"
    return m.group(1).strip()


# ----------------------------------------------------------------------------------------------------------------
# 1. Task: parameters, scalars, plots, audio, artifacts; read back from another process
# ----------------------------------------------------------------------------------------------------------------


def test_task_reports_and_artifacts_round_trip(standin: Standin, tmp_path: Path) -> None:
    out = run_sdk(
        standin,
        tmp_path / "writer",
        """
        import math, struct, wave
        import numpy as np, pandas as pd
        from clearml import Task

        task = Task.init(project_name="standin/s2st", task_name="report 1:1:1")  # ":" is quoted in its URLs
        task.connect({"lr": 0.1, "epochs": 3, "lang": "es"})
        log = task.get_logger()
        for i in range(3):
            log.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
        log.report_histogram("lengths", "tokens", values=np.array([3, 1, 2]), iteration=0)
        log.report_plotly("curve", "p", figure={"data": [{"x": [1, 2], "y": [3, 4], "type": "scatter"}]}, iteration=0)
        with wave.open("tone.wav", "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
            w.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(i / 4))) for i in range(800)))
        log.report_media("audio", "tone", local_path="tone.wav", iteration=0)
        with open("notes.txt", "w") as f:
            f.write("hola mundo\\n")
        task.upload_artifact("cfg", {"a": 1, "b": [1, 2]})
        task.upload_artifact("table", pd.DataFrame({"x": [1, 2], "y": ["uno", "dos"]}))
        task.upload_artifact("notes", "notes.txt")
        print(f"TASK_ID={task.id}")
        task.close()
        """,
    )
    task_id = marker(out, "TASK_ID")
    task = standin.task(task_id)
    assert task["name"] == "report 1:1:1"
    assert standin.project_name(task["project"]) == "standin/s2st"
    assert task["status"] == "completed"
    general = task["hyperparams"]["General"]
    assert {k: v["value"] for k, v in general.items()} == {"lr": "0.1", "epochs": "3", "lang": "es"}

    assert standin.scalars(task_id) == {"loss": {"train": [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]}}
    plots = {e["metric"]: json.loads(e["plot_str"]) for e in standin.events(task_id, "plot")}
    assert plots["lengths"]["data"][0]["y"] == [3, 1, 2]
    assert plots["curve"]["data"][0]["y"] == [3, 4]
    (audio,) = standin.events(task_id, "training_debug_image")
    assert (audio["metric"], audio["variant"]) == ("audio", "tone")
    assert standin.file_path(audio["url"]).read_bytes() == (tmp_path / "writer" / "tone.wav").read_bytes()

    arts = standin.artifacts(task_id)
    assert set(arts) == {"cfg", "table", "notes"}
    assert arts["table"]["type"] == "pandas"
    notes = requests.get(arts["notes"]["uri"], timeout=10)
    assert notes.status_code == 200 and notes.content == b"hola mundo\n"
    for art in arts.values():
        assert standin.file_path(art["uri"]).is_file()

    out = run_sdk(
        standin,
        tmp_path / "reader",
        f"""
        import json
        from clearml import Task

        task = Task.get_task(task_id="{task_id}")
        table = task.artifacts["table"].get()
        with open(task.artifacts["notes"].get_local_copy()) as f:
            notes = f.read()
        print("READ=" + json.dumps({{
            "cfg": task.artifacts["cfg"].get(),
            "table": table.to_dict(orient="list"),
            "notes": notes,
            "params": task.get_parameters(),
            "last": task.get_last_scalar_metrics(),
        }}))
        """,
    )
    read = json.loads(marker(out, "READ"))
    assert read["cfg"] == {"a": 1, "b": [1, 2]}
    assert read["table"] == {"x": [1, 2], "y": ["uno", "dos"]}
    assert read["notes"] == "hola mundo\n"
    assert read["params"]["General/lang"] == "es"
    assert read["last"]["loss"]["train"]["last"] == pytest.approx(1.0 / 3)


# ----------------------------------------------------------------------------------------------------------------
# 2. Model registry: register (file and package), metadata, query by name/tags, download intact
# ----------------------------------------------------------------------------------------------------------------


def test_model_registry(standin: Standin, tmp_path: Path) -> None:
    work = tmp_path / "models"
    out = run_sdk(
        standin,
        work,
        """
        import os
        from clearml import OutputModel, Task

        task = Task.init(project_name="standin/models", task_name="register", output_uri=True)
        os.makedirs("pkg", exist_ok=True)
        with open("pkg/weights.bin", "wb") as f:
            f.write(os.urandom(4096))
        with open("pkg/config.json", "w") as f:
            f.write('{"d_model": 8}')
        with open("single.bin", "wb") as f:
            f.write(os.urandom(1000))
        asr = OutputModel(task=task, name="asr-tiny", tags=["asr", "tiny"], framework="PyTorch")
        asr.update_weights(weights_filename="single.bin", auto_delete_file=False)
        asr.set_metadata("sample_rate", "16000", v_type="int")
        mt = OutputModel(task=task, name="mt-tiny", tags=["mt", "tiny"], framework="PyTorch")
        mt.update_weights_package(weights_path="pkg", auto_delete_file=False)
        mt.set_metadata("lang_pair", "es-zh")
        print(f"TASK_ID={task.id}")
        print(f"ASR={asr.id}")
        print(f"MT={mt.id}")
        task.close()
        """,
    )
    task_id, asr_id, mt_id = marker(out, "TASK_ID"), marker(out, "ASR"), marker(out, "MT")
    models = {m["id"]: m for m in standin.models()}
    assert set(models) == {asr_id, mt_id}
    assert models[asr_id]["name"] == "asr-tiny" and models[asr_id]["tags"] == ["asr", "tiny"]
    assert models[asr_id]["framework"] == "PyTorch"
    assert models[asr_id]["task"] == task_id
    assert models[asr_id]["metadata"]["sample_rate"]["value"] == "16000"
    assert models[mt_id]["metadata"]["lang_pair"]["value"] == "es-zh"
    assert standin.file_path(models[asr_id]["uri"]).read_bytes() == (work / "single.bin").read_bytes()
    # The task lists both as output models (the SDK names these entries after the weights file, not the model).
    assert sorted(m["model"] for m in standin.task(task_id)["models"]["output"]) == sorted([asr_id, mt_id])

    out = run_sdk(
        standin,
        work,  # same folder: the reader compares against the originals
        f"""
        import filecmp, json, os
        from clearml import InputModel, Model

        def ids(models):
            return sorted(m.id for m in models)

        asr = Model.query_models(project_name="standin/models", model_name="asr-tiny", tags=["asr"])
        by_tag = Model.query_models(project_name="standin/models", tags=["mt"])
        both = Model.query_models(project_name="standin/models", tags=["tiny"])
        none = Model.query_models(project_name="standin/models", tags=["tts"])
        single = Model(model_id=asr[0].id).get_local_copy()
        pkg = InputModel(model_id="{mt_id}").get_local_copy()
        print("RESULT=" + json.dumps({{
            "asr": ids(asr), "by_tag": ids(by_tag), "both": ids(both), "none": ids(none),
            "single_same": open(single, "rb").read() == open("single.bin", "rb").read(),
            "pkg_files": sorted(os.listdir(pkg)),
            "pkg_same": filecmp.cmp(os.path.join(pkg, "weights.bin"), "pkg/weights.bin", shallow=False),
            "meta": Model(model_id=asr[0].id).get_metadata("sample_rate"),
        }}))
        """,
    )
    res = json.loads(marker(out, "RESULT"))
    assert res["asr"] == [asr_id]
    assert res["by_tag"] == [mt_id]
    assert res["both"] == sorted([asr_id, mt_id])
    assert res["none"] == []
    assert res["single_same"] and res["pkg_same"]
    assert res["pkg_files"] == ["config.json", "weights.bin"]
    assert res["meta"] == "16000"


# ----------------------------------------------------------------------------------------------------------------
# 3. Datasets: create, upload, finalize, versions, get by id and by name, local copies
# ----------------------------------------------------------------------------------------------------------------


def test_datasets_versions_and_local_copies(standin: Standin, tmp_path: Path) -> None:
    out = run_sdk(
        standin,
        tmp_path / "data",
        """
        import os
        from clearml import Dataset

        os.makedirs("v1", exist_ok=True)
        os.makedirs("v2", exist_ok=True)
        for name, text in (("v1/a.txt", "uno\\n"), ("v1/b.txt", "dos\\n"), ("v2/c.txt", "tres\\n")):
            with open(name, "w") as f:
                f.write(text)
        first = Dataset.create(dataset_project="standin/data", dataset_name="corpus")
        first.add_files("v1")
        first.upload()
        first.finalize()
        second = Dataset.create(dataset_project="standin/data", dataset_name="corpus", parent_datasets=[first.id])
        second.add_files("v2")
        second.upload()
        second.finalize()
        print(f"DS1={first.id}")
        print(f"DS2={second.id}")
        """,
    )
    ds1, ds2 = marker(out, "DS1"), marker(out, "DS2")
    for ds_id in (ds1, ds2):
        task = standin.task(ds_id)
        assert task["type"] == "data_processing"
        assert "dataset" in task["system_tags"]
        assert task["status"] == "completed"
        assert "state" in standin.artifacts(ds_id)  # the dataset's file list
    assert standin.task(ds2)["runtime"]["version"] == "1.0.1"
    assert standin.project_name(standin.task(ds2)["project"]) == "standin/data/.datasets/corpus"

    out = run_sdk(
        standin,
        tmp_path / "reader",
        f"""
        import json, os
        from clearml import Dataset

        def read(folder):
            return {{n: open(os.path.join(folder, n)).read() for n in sorted(os.listdir(folder))}}

        by_id = Dataset.get(dataset_id="{ds1}")
        latest = Dataset.get(dataset_project="standin/data", dataset_name="corpus")
        print("RESULT=" + json.dumps({{
            "by_id": read(by_id.get_local_copy()),
            "latest_id": latest.id,
            "latest": read(latest.get_local_copy()),
            "parents": latest.get_dependency_graph().get(latest.id),
        }}))
        """,
    )
    res = json.loads(marker(out, "RESULT"))
    assert res["by_id"] == {"a.txt": "uno\n", "b.txt": "dos\n"}
    assert res["latest_id"] == ds2
    assert res["latest"] == {"a.txt": "uno\n", "b.txt": "dos\n", "c.txt": "tres\n"}
    assert res["parents"] == [ds1]


# ----------------------------------------------------------------------------------------------------------------
# 4. Pipelines: steps executed locally as their own task processes
# ----------------------------------------------------------------------------------------------------------------

_STEP_FUNCTIONS = """
def make_items(prefix, n):
    return [f"{prefix}-{i}" for i in range(int(n))]


def join_items(items, sep):
    return {"joined": sep.join(items), "count": len(items)}
"""


def _assert_two_step_pipeline(standin: Standin, pipeline_id: str, step_names: tuple[str, str]) -> None:
    controller = standin.task(pipeline_id)
    assert controller["type"] == "controller" and "pipeline" in controller["system_tags"]
    assert controller["status"] == "completed"
    assert controller["hyperparams"]["Args"]["prefix"]["value"] == "hola"
    steps = {t["name"]: t for t in standin.tasks() if t.get("parent") == pipeline_id}
    assert set(steps) == set(step_names)
    first, second = (steps[n] for n in step_names)
    for step in (first, second):
        assert step["status"] == "completed"
        assert step["id"] != pipeline_id
    # The execution queue is recorded in the controller's DAG ("Pipeline" configuration), not on the step tasks:
    # run_pipeline_steps_locally never enqueues anything.
    dag = json.loads(controller["configuration"]["Pipeline"]["value"])
    assert (dag[step_names[0]]["queue"], dag[step_names[1]]["queue"]) == ("gpu", "cpu")
    assert dag[step_names[1]]["parents"] == [step_names[0]]
    assert standin.queues() == []
    # Step 1's inputs came from the pipeline parameters; step 2 got step 1's return value as an artifact reference.
    assert first["hyperparams"]["kwargs"]["prefix"]["value"] == "hola"
    assert second["hyperparams"]["kwargs_artifacts"]["items"]["value"] == f"{first['id']}.items"
    assert "items" in standin.artifacts(first["id"])
    result = standin.artifacts(second["id"])["summary"]
    assert result["type_data"]["preview"] == "{'joined': 'hola-0|hola-1|hola-2', 'count': 3}"


def test_pipeline_controller_start_locally(standin: Standin, tmp_path: Path) -> None:
    out = run_sdk(
        standin,
        tmp_path / "pipe",
        _STEP_FUNCTIONS
        + """
from clearml import PipelineController

# pool_frequency is in minutes; the default 0.2 polls every 12 s.
pipe = PipelineController(name="s2st", project="standin/pipe", version="1.0.0", pool_frequency=0.005,
                          add_pipeline_tags=False)
pipe.add_parameter("prefix", "hola")
pipe.add_parameter("n", 3)
pipe.add_function_step(name="step1", function=make_items, function_return=["items"], execution_queue="gpu",
                       function_kwargs={"prefix": "${pipeline.prefix}", "n": "${pipeline.n}"},
                       cache_executed_step=False)
pipe.add_function_step(name="step2", function=join_items, function_return=["summary"], execution_queue="cpu",
                       function_kwargs={"items": "${step1.items}", "sep": "|"}, parents=["step1"],
                       cache_executed_step=False)
pipe.start_locally(run_pipeline_steps_locally=True)
print(f"PIPELINE_ID={pipe.id}")
""",
        timeout=150,
    )
    _assert_two_step_pipeline(standin, marker(out, "PIPELINE_ID"), ("step1", "step2"))


def test_pipeline_decorator_run_locally(standin: Standin, tmp_path: Path) -> None:
    out = run_sdk(
        standin,
        tmp_path / "deco",
        """
from clearml import PipelineDecorator, Task

@PipelineDecorator.component(return_values=["items"], execution_queue="gpu", cache=False)
def make_items(prefix, n):
    return [f"{prefix}-{i}" for i in range(int(n))]

@PipelineDecorator.component(return_values=["summary"], execution_queue="cpu", cache=False)
def join_items(items, sep):
    return {"joined": sep.join(items), "count": len(items)}

@PipelineDecorator.pipeline(name="s2st-deco", project="standin/pipe", version="1.0.0", pool_frequency=0.005,
                            add_pipeline_tags=False)
def pipeline(prefix="hola", n=3):
    summary = join_items(make_items(prefix, n), "|")
    print(f"SUMMARY={summary['joined']}")
    print(f"PIPELINE_ID={Task.current_task().id}")

if __name__ == "__main__":
    PipelineDecorator.run_locally()
    pipeline()
""",
        timeout=150,
    )
    assert marker(out, "SUMMARY") == "hola-0|hola-1|hola-2"
    _assert_two_step_pipeline(standin, marker(out, "PIPELINE_ID"), ("make_items", "join_items"))


def test_enqueue_records_the_task_in_the_queue(standin: Standin, tmp_path: Path) -> None:
    gpu = standin.add_queue("gpu")  # execution queues are made by an administrator, never by the SDK
    out = run_sdk(
        standin,
        tmp_path / "enqueue",
        """
        from clearml import Task

        task = Task.create(project_name="standin/remote", task_name="asr", task_type="inference")
        Task.enqueue(task, queue_name="gpu")
        print(f"TASK_ID={task.id}")
        """,
        check_errors=False,
    )
    task_id = marker(out, "TASK_ID")
    assert standin.queued("gpu") == [task_id]
    assert standin.task(task_id)["status"] == "queued"
    assert standin.task(task_id)["execution"]["queue"] == gpu
    # The SDK first tries the queue name as an id; the server answers "invalid queue id" and it falls back to a search.
    assert standin.errors == [("queues.get_by_id", "Invalid queue id: queue=gpu")]


# ----------------------------------------------------------------------------------------------------------------
# The stand-in itself: it must refuse what the schema refuses, in the server's envelope
# ----------------------------------------------------------------------------------------------------------------


def _token(standin: Standin) -> str:
    res = requests.get(f"{standin.api_url}/auth.login", auth=("k", "s"), timeout=10)
    assert res.status_code == 200
    return res.json()["data"]["token"]


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "fragment"),
    [
        ("tasks.no_such_action", {}, 400, "Invalid endpoint"),
        ("tasks.create", {"name": "x", "type": "training", "bogus": 1}, 400, "bogus"),
        ("tasks.create", {"name": "x", "type": "not-a-type"}, 400, "not-a-type"),
        ("tasks.create", {"name": 5, "type": "training"}, 400, "name"),
        ("tasks.create", {"type": "training"}, 400, "name"),
        ("tasks.create", {"name": "x", "type": "training", "execution": {"queue_name": "gpu"}}, 400, "queue_name"),
        ("tasks.get_by_id", {"task": "missing"}, 400, "Invalid task id"),
        ("models.get_by_id", {"model": "missing"}, 400, "Invalid model id"),
    ],
)
def test_standin_rejects_what_the_schema_rejects(
    standin: Standin, endpoint: str, body: dict, code: int, fragment: str
) -> None:
    res = requests.post(
        f"{standin.api_url}/v{API_VERSION}/{endpoint}",
        json=body,
        headers={"Authorization": f"Bearer {_token(standin)}"},
        timeout=10,
    )
    assert res.status_code == code
    meta = res.json()["meta"]
    assert meta["result_code"] == code
    assert fragment in meta["result_msg"]
    assert meta["endpoint"]["name"] == endpoint
    assert standin.errors and standin.errors[-1][0] == endpoint


def test_standin_requires_a_token_and_surfaces_errors_through_the_sdk(standin: Standin, tmp_path: Path) -> None:
    res = requests.post(f"{standin.api_url}/v{API_VERSION}/tasks.get_all", json={}, timeout=10)
    assert res.status_code == 401
    out = run_sdk(
        standin,
        tmp_path / "bad",
        """
        from clearml.backend_api import Session
        from clearml.backend_api.services import tasks

        session = Session()
        print(f"VERSION={Session.api_version}")
        res = session.send(tasks.GetByIdRequest(task="missing"))
        print(f"CODE={res.meta.result_code}/{res.meta.result_subcode}")
        """,
        check_errors=False,
    )
    assert marker(out, "VERSION") == API_VERSION
    assert marker(out, "CODE") == "400/101"


# ----------------------------------------------------------------------------------------------------------------
# 5. Unreachable server: bounded retries make Task.init fail in seconds instead of hanging
# ----------------------------------------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_with_bounded_retries(tmp_path: Path) -> None:
    """With credentials set and nothing listening, the SDK's default api.http.retries (240 retries, urllib3 backoff
    doubling from 2 s to a 120 s cap) keeps Task.init retrying auth.login for hours. Two ways out, both measured here:
    bounded retries in clearml.conf (there is no environment variable for them) make Task.init raise at once, and a
    Session probe with its own http_retries_config fails at once even under the default retries."""
    with start_standin(tmp_path / "closed") as closed:
        dead_url = closed.api_url  # the port is closed once the stand-in stops
    config = tmp_path / "clearml.conf"
    retries = "http.retries { total: 0, connect: 0, read: 0, redirect: 0, status: 0 }"
    config_text = f"""
        api {{
            api_server: "{dead_url}"
            web_server: "{dead_url}"
            files_server: "{dead_url}"
            credentials {{ access_key: "k", secret_key: "s" }}
            RETRIES
        }}
        sdk.development {{ report_use_subprocess: false, vcs_repo_detect_async: false }}
        """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env["CLEARML_CONFIG_FILE"] = str(config)

    def run(code: str) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        return proc, time.monotonic() - start

    config.write_text(textwrap.dedent(config_text.replace("RETRIES", retries)))
    proc, elapsed = run("from clearml import Task\nTask.init(project_name='p', task_name='t')\n")
    assert proc.returncode != 0
    assert "LoginError" in proc.stderr and "Connection" in proc.stderr
    assert elapsed < 30, f"Task.init took {elapsed:.1f}s to fail"

    config.write_text(textwrap.dedent(config_text.replace("RETRIES", "")))  # the SDK's default retries
    probe = (
        "from clearml.backend_api import Session\n"
        "try:\n"
        "    Session(http_retries_config={'total': 0, 'connect': 0, 'read': 0})\n"
        "except Exception as ex:\n"
        "    print(type(ex).__name__)\n"
    )
    proc, elapsed = run(probe)
    assert proc.stdout.strip() == "LoginError", proc.stderr[-2000:]
    assert elapsed < 30, f"the Session probe took {elapsed:.1f}s to fail"


def test_the_server_check_says_what_happened(tmp_path: Path) -> None:
    """A port that refuses the connection and a server that takes it and never replies are different failures,
    and the message says which (issue 12: they were swapped); each is decided within the probe's timeout."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: a connection is refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nothing ever reads or replies
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env |= {"CLEARML_CONFIG_FILE": str(tmp_path / "none.conf"), "CLEARML_API_ACCESS_KEY": "k",
            "CLEARML_API_SECRET_KEY": "s"}
    probe = (
        "from resources.clearml_server import ServerUnavailableError, check_server\n"
        "try:\n    check_server(timeout_s=2)\nexcept ServerUnavailableError as exc:\n    print(exc)\n"
    )
    try:
        said = {}
        for name, port in (("refused", closed_port), ("silent", silent.getsockname()[1])):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1],
                                  env=env | {"CLEARML_API_HOST": f"http://127.0.0.1:{port}"},
                                  capture_output=True, text=True, timeout=60)
            said[name] = proc.stdout.strip()
            assert time.monotonic() - started < 30, said[name]
    finally:
        silent.close()
    assert "refused the connection" in said["refused"] and "no reply" not in said["refused"]
    assert f"127.0.0.1:{closed_port}" in said["refused"]
    assert "accepted the connection but sent no reply in 2 s" in said["silent"]
    assert "refused" not in said["silent"]
    assert all(text.startswith("the ClearML server http://127.0.0.1:") for text in said.values())
