"""A small stand-in for the ClearML API server and files server, for tests only.

Every API call is checked against, and answered with, the ClearML SDK's own API schema classes
(``clearml.backend_api.services.v2_23``): the body must construct the endpoint's Request class (unknown top-level
fields and wrong Python types raise there) and must pass the class's JSON schema with every declared object made
closed (``additionalProperties: false``), so a field the schema does not know is rejected at any depth. Responses are
built with the endpoint's Response class and validated against its schema before they are sent. An endpoint the
stand-in does not implement answers like a real server does for an unknown endpoint (HTTP 400, subcode 0).

State is in memory; uploaded files are stored under a directory. See README.md for what is not covered.
"""

from __future__ import annotations

import copy
import datetime
import email.parser
import email.policy
import importlib
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema
import jwt
from clearml.backend_api.session.datamodel import _CustomValidator
from clearml.backend_api.session.request import BatchRequest, CompoundRequest, Request
from clearml.backend_api.session.response import Response

from .agent_api import WorkerEndpoints, agent_compat

# The newest schema package the SDK ships. The stand-in reports this as the server's API version, so the SDK picks
# exactly these classes for its requests (ApiServiceProxy takes the newest package <= the server's version) and
# every request it sends can be checked against the schema it was built from.
API_VERSION = "2.23"
SERVER_VERSION = "1.17.0"
_SERVICES_PACKAGE = "clearml.backend_api.services.v" + API_VERSION.replace(".", "_")
# URL version -> the schema package its requests were built from. clearml-agent ships its own, older schema classes
# (v2_5) and puts their version in the URL; tests/clearml_standin/agent_api.py registers them here when asked.
SCHEMA_PACKAGES: dict[str, str] = {API_VERSION: _SERVICES_PACKAGE}
VERSION_ALIASES: dict[str, str] = {}  # URL version no client ships -> the registered one that checks it


class ApiError(Exception):
    """An error the server reports in its envelope (HTTP code, result_subcode, message)."""

    def __init__(self, code: int, subcode: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.subcode, self.msg = code, subcode, msg


def _not_found(kind: str, ident: Any) -> ApiError:
    # The real server answers 400 with subcode 101 ("invalid task id") / 201 (model) for unknown ids.
    subcode = {"task": 101, "model": 201, "project": 401, "queue": 701}.get(kind, 0)
    return ApiError(400, subcode, f"Invalid {kind} id: {kind}={ident}")


# --------------------------------------------------------------------------------------------------------------
# Schema helpers
# --------------------------------------------------------------------------------------------------------------


def _closed_schema(schema: Any) -> Any:
    """Deep copy of a JSON schema in which every object with declared properties rejects undeclared ones.

    The SDK's schemas leave additionalProperties unset (which JSON schema reads as "anything goes"), and the
    Request classes drop unknown nested keys silently (DataModel.from_dict is lenient). Closing the objects is what
    makes a misspelled or invented field fail here rather than pass silently.
    """
    if isinstance(schema, list):
        return [_closed_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed_schema(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not ({"allOf", "anyOf", "oneOf"} & out.keys()):
        out["additionalProperties"] = False
    return out


_VALIDATORS: dict[tuple[type, str], Any] = {}


def _validator(cls: type, part: str = "all") -> Any:
    """A cached validator (the SDK's own jsonschema validator class) for a Request's closed schema, or for one part
    of a compound request's schema. Building validators once matters: jsonschema.validate() re-checks the
    meta-schema on every call, which made each request take tens of milliseconds."""
    key = (cls, part)
    if key not in _VALIDATORS:
        schema = _closed_schema(cls._schema)
        if part == "item":
            schema = {k: v for k, v in schema.items() if k != "properties"}
        elif part == "own":
            schema = {"type": "object", "properties": schema.get("properties", {})}
        _CustomValidator.check_schema(schema)
        _VALIDATORS[key] = _CustomValidator(schema)
    return _VALIDATORS[key]


def _validate_schema(instance: Any, cls: type) -> None:
    if _is_a(cls, CompoundRequest) and isinstance(instance, dict):
        # A compound request (events.add) is its item's fields (one of the "anyOf" event schemas) plus the request's
        # own "properties" (allow_locked, model_event) side by side; check each part against its own closed schema.
        own = cls._schema.get("properties", {})
        _validator(cls, "item").validate({k: v for k, v in instance.items() if k not in own})
        _validator(cls, "own").validate({k: v for k, v in instance.items() if k in own})
        return
    _validator(cls).validate(instance)


def _drop_method(body: Any) -> Any:
    """Request.to_dict() includes the base class's ``method`` property (the HTTP verb) in every body the SDK sends,
    batch items included; the real server ignores it. It is the one non-schema key the stand-in tolerates."""
    if isinstance(body, dict) and body.get("method") in ("get", "post", "put", "GET", "POST", "PUT"):
        del body["method"]
    return body


def _coerce_query(value: str, prop: dict | None) -> Any:
    """Query-string values are strings; give them the type the schema declares (as the server does)."""
    types = (prop or {}).get("type", "string")
    types = types if isinstance(types, list) else [types]
    if "integer" in types and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _get_path(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _project_fields(d: dict, only_fields: list[str] | None) -> dict:
    """Keep only the requested (possibly dotted) fields, plus id, with MongoDB projection semantics: an existing
    parent sub-document is kept (possibly empty) even when the requested child key is missing."""
    if not only_fields:
        return d
    out: dict = {"id": d.get("id")}
    for path in only_fields:
        src, dst = d, out
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(src, dict) or part not in src:
                break
            if i == len(parts) - 1 or not isinstance(src[part], dict):
                dst[part] = copy.deepcopy(src[part])
                break
            src = src[part]
            dst = dst.setdefault(part, {})
    return out


def _tags_match(have: list[str] | None, wanted: list[str | None]) -> bool:
    """The server's list-field filter (tags, system_tags), after NewListFieldBucketHelper in clearml-server's
    database/model/base.py: "__$all"/"__$and" and "__$any"/"__$or" switch the context for the values that follow
    (the first operator seen also combines the resulting conditions), "__$not" excludes the next value, a leading
    "-" excludes (legacy, only before any operator), and None matches an empty list."""
    have_set = set(have or [])
    actions: dict[str, list[str]] = {"in": [], "all": [], "nin": []}
    context, global_op, negate, legacy, allow_empty = "or", None, False, True, False
    for value in wanted:
        if value is None:
            allow_empty = True
            continue
        if value in ("__$all", "__$and", "__$any", "__$or"):
            context = "and" if value in ("__$all", "__$and") else "or"
            global_op = global_op or context
            legacy = False
            continue
        if value == "__$not":
            negate = True
            continue
        include = not negate
        negate = False
        if legacy and value.startswith("-"):
            value, include = value[1:], False
        actions["nin" if not include else ("all" if context == "and" else "in")].append(value)
    checks = []
    if actions["in"]:
        checks.append(bool(have_set & set(actions["in"])))
    if actions["all"]:
        checks.append(set(actions["all"]) <= have_set)
    if actions["nin"]:
        checks.append(not have_set & set(actions["nin"]))
    ok = (any(checks) if global_op == "or" else all(checks)) if checks else True
    return ok or (allow_empty and not have_set)


def _apply_task_defaults(task: dict) -> None:
    """Fill in what the server's task document always has (the mongoengine defaults of clearml-server's
    database/model/task/task.py), also after an edit replaces a sub-document. The SDK relies on them: it iterates
    execution.artifacts, reads script.diff and runtime.version, and sets output.destination without None checks."""
    for key, default in _TASK_DEFAULTS.items():
        if isinstance(default, dict):
            sub = task.get(key)
            if not isinstance(sub, dict):
                sub = task[key] = {}
            for k, v in default.items():
                sub.setdefault(k, copy.deepcopy(v))
        else:
            task.setdefault(key, copy.deepcopy(default))


_TASK_DEFAULTS: dict[str, Any] = {
    "status": "created",
    "tags": [],
    "system_tags": [],
    "output": {},
    "execution": {"test_split": 0, "parameters": {}, "model_desc": {}, "artifacts": []},
    "script": {"binary": "python", "repository": "", "entry_point": ""},
    "models": {"input": [], "output": []},
    "hyperparams": {},
    "configuration": {},
    "runtime": {},
    "last_iteration": 0,
    "last_metrics": {},
}


def _now() -> str:
    # Microseconds matter: "latest version" lookups order by last_update.
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _new_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------------------------------
# State and endpoint implementations
# --------------------------------------------------------------------------------------------------------------


class StandinState(WorkerEndpoints):
    """In-memory server state and the endpoints that act on it.

    Endpoint methods are named ``<service>__<action>``; each receives the validated Request object and the raw
    (already schema-checked) body, and returns the keyword arguments of the endpoint's Response class.
    """

    # Task fields the schema defines as top-level keys of a task document; used by tasks.get_all filters.
    _TASK_LIST_FILTERS = ("id", "status", "type", "project", "parent", "user")

    def __init__(self, files_root: Path) -> None:
        self.lock = threading.RLock()
        self.files_root = files_root
        self.projects: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.queues: dict[str, dict] = {}
        self.workers: dict[str, dict] = {}  # registered agents (agent_api.py)
        self.dispatches: list[dict] = []  # {task, queue, worker, at} for every task an agent popped from a queue
        self.events: dict[str, list[dict]] = {}  # task id -> events, in arrival order
        self.calls: list[tuple[str, Any]] = []  # (endpoint, body) for every API call, including rejected ones
        self.errors: list[tuple[str, str]] = []  # (endpoint, message) for every rejected call
        self.uploads: list[str] = []  # files server paths, in upload order
        self.timeline: list[tuple[float, str, str]] = []  # (time.time(), endpoint, task id or ""), for timing analysis
        self.hooks: dict[str, list[Callable[[Any], None]]] = {}  # endpoint -> callbacks(body) (Standin.on_call)

    # ---------------- auth / server ----------------

    def auth__login(self, req: Any, body: dict) -> dict:
        # The SDK reads api_version / server_version / feature_set from the token's claims (unverified), so the
        # token is what negotiates the API version. No secret is checked: any key/secret pair is accepted.
        claims = {
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "feature_set": "basic",
            "exp": int(time.time()) + int(body.get("expiration_sec") or 30 * 24 * 3600),
            "identity": {"company": "standin", "user": "standin-user", "role": "user"},
            "env": "test",
        }
        return {"token": jwt.encode(claims, "standin-token-signing-key-not-a-secret-0123456789", algorithm="HS256")}

    # ---------------- projects ----------------

    def _project_by_name(self, name: str) -> dict | None:
        return next((p for p in self.projects.values() if p["name"] == name), None)

    def _ensure_project(self, name: str, system_tags: list[str] | None = None, **extra: Any) -> dict:
        # The real server creates the missing parents of "a/b/c" as projects of their own.
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if not self._project_by_name(parent):
                self._create_project(parent, [])
        return self._project_by_name(name) or self._create_project(name, system_tags or [], **extra)

    def _create_project(self, name: str, system_tags: list[str], **extra: Any) -> dict:
        pid = _new_id()
        self.projects[pid] = {
            "id": pid,
            "name": name,
            "basename": name.rsplit("/", 1)[-1],
            "system_tags": list(system_tags),
            "tags": list(extra.pop("tags", None) or []),
            "description": extra.pop("description", None) or "",
            "created": _now(),
            "last_update": _now(),
            "user": "standin-user",
            "company": "standin",
            **{k: v for k, v in extra.items() if v is not None},
        }
        return self.projects[pid]

    def projects__create(self, req: Any, body: dict) -> dict:
        if self._project_by_name(body["name"]):
            raise ApiError(400, 403, f"Project with the same name already exists: name={body['name']}")
        extra = {k: body[k] for k in ("description", "tags", "default_output_destination") if k in body}
        return {"id": self._ensure_project(body["name"], body.get("system_tags"), **extra)["id"]}

    def _match(self, doc: dict, body: dict, list_fields: Iterable[str]) -> bool:
        for key in list_fields:
            if key in body and body[key] is not None:
                wanted = body[key] if isinstance(body[key], list) else [body[key]]
                if doc.get(key) not in wanted:
                    return False
        if body.get("name") is not None and not re.search(body["name"], doc.get("name") or ""):
            return False
        # Archived documents are not special-cased: the SDK excludes them itself with a system_tags filter.
        return all(not body.get(key) or _tags_match(doc.get(key), body[key]) for key in ("tags", "system_tags"))

    @staticmethod
    def _order(docs: list[dict], order_by: list[str] | None) -> list[dict]:
        for key in reversed(order_by or []):
            reverse = key.startswith("-")
            field = key.lstrip("-+")
            docs.sort(key=lambda d, f=field: (_get_path(d, f) is not None, str(_get_path(d, f) or "")), reverse=reverse)
        return docs

    @staticmethod
    def _page(docs: list[dict], body: dict) -> list[dict]:
        size = body.get("page_size")
        if size is None:
            return docs
        page = body.get("page") or 0
        return docs[page * size : (page + 1) * size]

    def projects__get_all(self, req: Any, body: dict) -> dict:
        docs = [p for p in self.projects.values() if self._match(p, body, ("id",))]
        if body.get("basename"):
            docs = [p for p in docs if re.search(body["basename"], p["basename"])]
        # As the server's _hidden_query: hidden projects (datasets, pipelines) are found when asked for by id.
        if not body.get("search_hidden") and not body.get("id"):
            docs = [p for p in docs if "hidden" not in p.get("system_tags", [])]
        docs = self._page(self._order(docs, body.get("order_by")), body)
        return {"projects": [_project_fields(p, body.get("only_fields")) for p in docs]}

    def projects__get_by_id(self, req: Any, body: dict) -> dict:
        p = self.projects.get(body["project"])
        if p is None:
            raise _not_found("project", body["project"])
        return {"project": p}

    def projects__update(self, req: Any, body: dict) -> dict:
        p = self.projects.get(body["project"])
        if p is None:
            raise _not_found("project", body["project"])
        fields = {k: v for k, v in body.items() if k != "project"}
        p.update(fields)
        p["last_update"] = _now()
        return {"updated": 1, "fields": fields}

    # ---------------- tasks ----------------
    # A task document is kept in the shape of the schema's Task (the server's stored form); hyperparams are
    # {section: {name: ParamsItem}}, configuration {name: ConfigurationItem}, execution.artifacts a list.

    def _task(self, task_id: str) -> dict:
        t = self.tasks.get(task_id)
        if t is None:
            raise _not_found("task", task_id)
        return t

    def tasks__create(self, req: Any, body: dict) -> dict:
        tid = _new_id()
        task = copy.deepcopy(body)
        task.update(
            id=tid,
            status="created",
            created=_now(),
            last_update=_now(),
            last_change=_now(),
            user="standin-user",
            company="standin",
        )
        _apply_task_defaults(task)
        if "output_dest" in body:
            task["output"]["destination"] = task.pop("output_dest")
        self.tasks[tid] = task
        self.events.setdefault(tid, [])
        return {"id": tid}

    def tasks__clone(self, req: Any, body: dict) -> dict:
        """As the server's clone_task: a new `created` task with the source's script, parameters, configuration and
        execution (input artifacts only, no queue), with the given name/comment/tags/parent/project overrides."""
        source = self._task(body["task"])
        tid = _new_id()
        execution = copy.deepcopy(source.get("execution") or {})
        execution["artifacts"] = [a for a in execution.get("artifacts") or [] if a.get("mode") == "input"]
        execution.pop("queue", None)
        execution.update(body.get("execution_overrides") or {})
        task = {
            "id": tid,
            "name": body.get("new_task_name") or source["name"],
            "comment": body.get("new_task_comment", source.get("comment", "")),
            "parent": body.get("new_task_parent") or source.get("parent"),
            "project": body.get("new_task_project") or source.get("project"),
            "tags": body.get("new_task_tags") if body.get("new_task_tags") is not None else list(source["tags"]),
            "system_tags": [t for t in source.get("system_tags", []) if t not in ("development", "archived")],
            "type": source["type"],
            "script": copy.deepcopy(source.get("script")),
            "hyperparams": copy.deepcopy(body.get("new_task_hyperparams") or source.get("hyperparams") or {}),
            "configuration": copy.deepcopy(body.get("new_task_configuration") or source.get("configuration") or {}),
            "execution": execution,
            "output": {"destination": (source.get("output") or {}).get("destination")},
            "status": "created",
            "created": _now(),
            "last_update": _now(),
            "last_change": _now(),
            "user": "standin-user",
            "company": "standin",
        }
        _apply_task_defaults(task)
        self.tasks[tid] = task
        self.events.setdefault(tid, [])
        return {"id": tid, "new_project": None}

    def tasks__get_all(self, req: Any, body: dict) -> dict:
        docs = []
        for t in self.tasks.values():
            if not self._match(t, body, self._TASK_LIST_FILTERS):
                continue
            if not body.get("search_hidden") and "hidden" in (t.get("system_tags") or []):
                continue
            if body.get("_all_") and not self._pattern_match(t, body["_all_"], all):
                continue
            if body.get("_any_") and not self._pattern_match(t, body["_any_"], any):
                continue
            docs.append(t)
        docs = self._page(self._order(docs, body.get("order_by")), body)
        return {"tasks": [_project_fields(t, body.get("only_fields")) for t in docs]}

    @staticmethod
    def _pattern_match(doc: dict, spec: dict, combine: Callable[[Iterable[bool]], bool]) -> bool:
        pattern = spec.get("pattern") or ""
        return combine(re.search(pattern, str(_get_path(doc, f) or "")) is not None for f in spec.get("fields", []))

    def tasks__get_by_id(self, req: Any, body: dict) -> dict:
        return {"task": self._task(body["task"])}

    def _edit_task(self, task_id: str, fields: dict) -> dict:
        task = self._task(task_id)
        for key, value in fields.items():
            if key == "output_dest":
                # The request field is stored where the task document keeps it (output.destination).
                task.setdefault("output", {})["destination"] = value
            else:
                # Top-level fields are replaced whole (execution, script, ...), as the server's edit does; the
                # SDK always sends the complete sub-document it wants.
                task[key] = copy.deepcopy(value)
        _apply_task_defaults(task)
        task["last_update"] = task["last_change"] = _now()
        return task

    def tasks__edit(self, req: Any, body: dict) -> dict:
        task = self._task(body["task"])
        if task["status"] not in ("created",) and not body.get("force"):
            # As the server's tasks.edit: a task that left "created" is only editable with force (the SDK sets it).
            raise ApiError(400, 110, f"Invalid task status (expected=created, status={task['status']})")
        fields = {k: v for k, v in body.items() if k not in ("task", "force")}
        self._edit_task(body["task"], fields)
        return {"updated": 1, "fields": fields}

    def _set_status(self, body: dict, status: str, **fields: Any) -> dict:
        task = self._task(body["task"])
        task["status"] = status
        if body.get("status_reason"):
            task["status_reason"] = body["status_reason"]
        if body.get("status_message"):
            task["status_message"] = body["status_message"]
        task["status_changed"] = task["last_update"] = _now()
        task.update(fields)
        return {"updated": 1, "fields": {"status": status}}

    def tasks__started(self, req: Any, body: dict) -> dict:
        out = self._set_status(body, "in_progress", started=_now())
        out["started"] = 1
        return out

    def tasks__stopped(self, req: Any, body: dict) -> dict:
        return self._set_status(body, "stopped")

    def tasks__failed(self, req: Any, body: dict) -> dict:
        return self._set_status(body, "failed")

    def tasks__completed(self, req: Any, body: dict) -> dict:
        out = self._set_status(body, "completed", completed=_now())
        if body.get("publish"):
            self._task(body["task"])["status"] = "published"
        return out

    def tasks__ping(self, req: Any, body: dict) -> dict:
        self._task(body["task"])["last_update"] = _now()
        return {}

    def tasks__set_requirements(self, req: Any, body: dict) -> dict:
        task = self._task(body["task"])
        task.setdefault("script", {})["requirements"] = body["requirements"]
        return {"updated": 1, "fields": {}}

    def tasks__enqueue(self, req: Any, body: dict) -> dict:
        task = self._task(body["task"])
        queue = self._queue(body.get("queue"), body.get("queue_name"))
        queue["entries"].append({"task": task["id"], "added": _now()})
        task.setdefault("execution", {})["queue"] = queue["id"]
        task["status"] = "queued"
        return {"queued": 1, "updated": 1, "fields": {"status": "queued"}}

    def tasks__edit_hyper_params(self, req: Any, body: dict) -> dict:
        task = self._task(body["task"])
        hyper = task.setdefault("hyperparams", {})
        replace = body.get("replace_hyperparams") or "none"
        if replace == "all":
            hyper.clear()
        sections = {p.get("section", "") for p in body["hyperparams"]}
        if replace == "section":
            for s in sections:
                hyper.pop(s, None)
        for p in body["hyperparams"]:
            hyper.setdefault(p.get("section", ""), {})[p["name"]] = copy.deepcopy(p)
        return {"updated": 1}

    def tasks__add_or_update_artifacts(self, req: Any, body: dict) -> dict:
        execution = self._task(body["task"]).setdefault("execution", {})
        artifacts = execution.setdefault("artifacts", [])
        for art in body["artifacts"]:
            key = (art["key"], art.get("mode", "output"))
            artifacts[:] = [a for a in artifacts if (a["key"], a.get("mode", "output")) != key]
            artifacts.append(copy.deepcopy(art))
        return {"updated": 1}

    def tasks__add_or_update_model(self, req: Any, body: dict) -> dict:
        models = self._task(body["task"]).setdefault("models", {})
        entries = models.setdefault(body["type"], [])
        entries[:] = [m for m in entries if m["name"] != body["name"]]
        entries.append({"name": body["name"], "model": body["model"]})
        return {"updated": 1}

    # ---------------- models ----------------

    def _model(self, model_id: str) -> dict:
        m = self.models.get(model_id)
        if m is None:
            raise _not_found("model", model_id)
        return m

    def models__create(self, req: Any, body: dict) -> dict:
        mid = _new_id()
        model = copy.deepcopy(body)
        model.update(id=mid, created=_now(), last_update=_now(), user="standin-user", company="standin")
        model.setdefault("ready", False)  # the schema default; publishing sets it
        model.setdefault("tags", [])
        model.setdefault("system_tags", [])
        self.models[mid] = model
        return {"id": mid, "created": True}

    def models__get_all(self, req: Any, body: dict) -> dict:
        docs = [m for m in self.models.values() if self._match(m, body, ("id", "project", "task", "framework"))]
        if body.get("ready") is not None:
            docs = [m for m in docs if bool(m.get("ready")) == body["ready"]]
        if body.get("uri"):
            docs = [m for m in docs if m.get("uri") in body["uri"]]
        if body.get("_all_"):
            docs = [m for m in docs if self._pattern_match(m, body["_all_"], all)]
        if body.get("_any_"):
            docs = [m for m in docs if self._pattern_match(m, body["_any_"], any)]
        docs = self._page(self._order(docs, body.get("order_by")), body)
        return {"models": [_project_fields(m, body.get("only_fields")) for m in docs]}

    def models__get_by_id(self, req: Any, body: dict) -> dict:
        return {"model": self._model(body["model"])}

    def _edit_model(self, model_id: str, fields: dict) -> dict:
        model = self._model(model_id)
        model.update(copy.deepcopy(fields))
        model["last_update"] = _now()
        return model

    def models__edit(self, req: Any, body: dict) -> dict:
        fields = {k: v for k, v in body.items() if k != "model"}
        self._edit_model(body["model"], fields)
        return {"updated": 1, "fields": fields}

    def models__add_or_update_metadata(self, req: Any, body: dict) -> dict:
        metadata = self._model(body["model"]).setdefault("metadata", {})
        if body.get("replace_metadata"):
            metadata.clear()
        for item in body["metadata"]:
            metadata[item["key"]] = copy.deepcopy(item)
        return {"updated": 1}

    # ---------------- queues ----------------

    def _queue(self, queue_id: str | None, name: str | None = None) -> dict:
        if queue_id and queue_id in self.queues:
            return self.queues[queue_id]
        if name:
            q = next((q for q in self.queues.values() if q["name"] == name), None)
            if q:
                return q
        raise _not_found("queue", queue_id or name)

    def queues__create(self, req: Any, body: dict) -> dict:
        if any(q["name"] == body["name"] for q in self.queues.values()):
            raise ApiError(400, 702, f"Queue with this name already exists: name={body['name']}")
        qid = _new_id()
        self.queues[qid] = {
            "id": qid,
            "name": body["name"],
            "tags": list(body.get("tags") or []),
            "system_tags": list(body.get("system_tags") or []),
            "created": _now(),
            "entries": [],
            "user": "standin-user",
            "company": "standin",
        }
        return {"id": qid}

    def queues__get_all(self, req: Any, body: dict) -> dict:
        docs = [q for q in self.queues.values() if self._match(q, body, ("id",))]
        docs = self._page(self._order(docs, body.get("order_by")), body)
        return {"queues": [_project_fields(q, body.get("only_fields")) for q in docs]}

    def queues__get_by_id(self, req: Any, body: dict) -> dict:
        return {"queue": self._queue(body["queue"])}

    # ---------------- events ----------------

    def events__add_batch(self, req: Any, body: list[dict]) -> dict:
        for ev in body:
            self._task(ev["task"])  # unknown task -> error, as on the server
            self.events.setdefault(ev["task"], []).append(copy.deepcopy(ev))
            if ev.get("type") == "training_stats_scalar":
                self._update_last_metrics(ev)
        return {"added": len(body), "errors": 0, "errors_info": {}}

    def _update_last_metrics(self, ev: dict) -> None:
        task = self.tasks[ev["task"]]
        it = ev.get("iter") or 0
        task["last_iteration"] = max(task.get("last_iteration") or 0, it)
        # The server keys last_metrics by md5 hashes of metric/variant names; plain names are enough for the SDK's
        # reading of them (it uses the metric/variant fields inside each entry).
        variants = task.setdefault("last_metrics", {}).setdefault(ev["metric"], {})
        entry = variants.setdefault(ev["variant"], {"metric": ev["metric"], "variant": ev["variant"]})
        value = ev["value"]
        entry.update(value=value, iter=it, timestamp=int(ev.get("timestamp") or time.time() * 1000))
        entry["min_value"] = min(entry.get("min_value", value), value)
        entry["max_value"] = max(entry.get("max_value", value), value)


# --------------------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------------------


def _service_module(service: str, version: str = API_VERSION) -> ModuleType | None:
    try:
        return importlib.import_module(f"{SCHEMA_PACKAGES[version]}.{service}")
    except ImportError:
        return None


def schema_version(requested: str) -> str | None:
    """The registered schema version that checks a URL version: itself, or its alias; None: refused."""
    version = VERSION_ALIASES.get(requested, requested)
    return version if version in SCHEMA_PACKAGES else None


def _is_a(cls: type, base: type) -> bool:
    """issubclass by class name: the agent's schema classes derive from its own copy of the SDK's base classes."""
    return any(b.__name__ == base.__name__ for b in cls.__mro__)


def endpoint_classes(endpoint: str, version: str = API_VERSION) -> tuple[type, type] | None:
    """The client's (Request, Response) classes for "service.action" in the URL's API version."""
    service, _, action = endpoint.partition(".")
    module = _service_module(service, version)
    if module is None:
        return None
    for req_cls, resp_cls in getattr(module, "response_mapping", {}).items():
        if req_cls._action == action:
            return req_cls, resp_cls
    return None


def validate_request(req_cls: type, body: Any) -> Any:
    """Check a request body exactly as strictly as the SDK's schema classes allow; return the request object."""
    if _is_a(req_cls, BatchRequest):
        if not isinstance(body, list) or not body:
            raise ApiError(400, 12, "Batch request requires a non-empty json-lines body")
        item_cls = req_cls._batched_request_cls
        for i, item in enumerate(body):
            if item_cls._service == "events" and item.get("type") == "log" and isinstance(item.get("level"), str):
                # ConsoleEvent sends logging.getLevelName(level) ("INFO"), outside the schema's lower-case enum; the
                # server stores log events without validating them, so only the case is forgiven here.
                item = {**item, "level": item["level"].lower()}
            try:
                _validate_schema(item, item_cls)
            except jsonschema.ValidationError as ex:
                raise ApiError(400, 12, f"Validation error in batch item #{i}: {ex.message}") from None
        return req_cls(requests=body)
    if not isinstance(body, dict):
        raise ApiError(400, 12, "Request body must be a JSON object")
    if _is_a(req_cls, CompoundRequest):
        # A compound request's body is its item's fields; the schema check below is the validation.
        obj = None
    else:
        try:
            # The constructor rejects unknown top-level fields ("Unsupported keyword arguments") and the property
            # setters reject wrong Python types; keys are normalised the way DataModel.from_dict does.
            obj = req_cls(**{Request.normalize_key(k): v for k, v in body.items()})
        except (TypeError, ValueError, AssertionError) as ex:
            raise ApiError(400, 12, f"Validation error: {ex}") from None
    try:
        _validate_schema(body, req_cls)
    except jsonschema.ValidationError as ex:
        where = "/".join(str(p) for p in ex.absolute_path)
        raise ApiError(400, 12, f"Validation error at '{where}': {ex.message}") from None
    return obj


def build_response(resp_cls: type, data: dict) -> dict:
    """Shape the handler's result through the SDK's Response class, and check it against the response schema."""
    resp = resp_cls(**{Request.normalize_key(k): v for k, v in data.items()})
    assert _is_a(type(resp), Response)
    # The Response classes parse date-time strings into datetime objects; serialise them back as the server does
    # (ISO 8601) and check the JSON that goes on the wire, not the Python object.
    out = json.loads(json.dumps(resp.to_dict(), default=_json_default))
    key = (resp_cls, "response")
    if key not in _VALIDATORS:
        schema = resp_cls._schema
        if resp_cls.__module__.startswith("clearml_agent."):
            # The server returns stored values as they are, whatever version was asked for: the agent's 2.5 enums
            # predate values like task type `controller`, and its models take unknown enum values (checked).
            schema = _without_enums(schema)
        _VALIDATORS[key] = _CustomValidator(schema)
    _VALIDATORS[key].validate(out)
    return out


def _without_enums(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_enums(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: _without_enums(v) for k, v in schema.items() if k != "enum"}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm plus the client's delayed
    # ACK stalls every response by ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests assert on recorded state instead

    # ---------- plumbing ----------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _is_files(self) -> bool:
        return self.server.role == "files"

    def do_GET(self) -> None:
        self._files_get() if self._is_files() else self._api()

    def do_HEAD(self) -> None:
        self._files_get() if self._is_files() else self._send(405, b"")

    def do_POST(self) -> None:
        self._files_post() if self._is_files() else self._api()

    def do_PUT(self) -> None:
        self._files_post() if self._is_files() else self._api()

    def do_DELETE(self) -> None:
        self._files_delete() if self._is_files() else self._send(405, b"")

    # ---------- files server ----------

    def _local_path(self, url_path: str, field_name: str = "") -> Path:
        """The file for a URL path (percent-decoded, as Flask decodes a route) and, for uploads, a multipart field
        name below it, taken literally as the ClearML file server takes it: the SDK names the field with its
        object path already quoted once (`bench 1%3A1%3A1.<id>/...`), records the artifact URL quoted again, and a
        GET of that URL decodes back to the stored name."""
        root = self.server.state.files_root.resolve()
        p = (root / unquote(url_path).lstrip("/") / field_name.lstrip("/")).resolve()
        if root not in p.parents and p != root:
            raise ApiError(400, 0, "path escapes the files root")
        return p

    def _files_get(self) -> None:
        try:
            p = self._local_path(urlsplit(self.path).path)
        except ApiError:
            return self._send(400, b"bad path", "text/plain")
        if not p.is_file():
            return self._send(404, b"not found", "text/plain")
        self._send(200, p.read_bytes(), "application/octet-stream")

    def _files_post(self) -> None:
        """The files server takes multipart/form-data; each field's name is the object path below the URL path."""
        body = self._read_body()
        ctype = self.headers.get("Content-Type", "")
        prefix = urlsplit(self.path).path
        stored = []
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
            )
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not name:
                    continue
                rel = prefix.rstrip("/") + "/" + name.lstrip("/")
                dest = self._local_path(prefix, name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(part.get_payload(decode=True) or b"")
                stored.append(rel)
        else:
            dest = self._local_path(prefix)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(body)
            stored.append(prefix)
        with self.server.state.lock:
            self.server.state.uploads.extend(stored)
        self._send(200, json.dumps({"stored": stored}).encode())

    def _files_delete(self) -> None:
        p = self._local_path(urlsplit(self.path).path)
        if not p.is_file():
            return self._send(404, b"not found", "text/plain")
        p.unlink()
        self._send(200, b"{}")

    # ---------- API server ----------

    def _api(self) -> None:
        url = urlsplit(self.path)
        m = re.fullmatch(r"/(?:v(\d+\.\d+)/)?([a-z_]+\.[a-z_]+)", url.path)
        endpoint = m.group(2) if m else url.path.lstrip("/")
        requested = (m.group(1) if m else None) or API_VERSION
        raw = self._read_body()
        state = self.server.state
        body: Any = None
        try:
            if m is None:
                raise ApiError(404, 0, f"Unknown path {url.path}")
            version = schema_version(requested)
            if version is None:
                # The SDK picks its version from the token's api_version, so that would be a stand-in bug; other
                # versions are those of clients whose schema classes were registered (clearml-agent's 2.5).
                served = ", ".join(SCHEMA_PACKAGES)
                raise ApiError(400, 0, f"Unsupported API version {requested} (stand-in serves {served})")
            if self.headers.get("Content-Type", "").startswith("application/json-lines"):
                body = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            else:
                body = json.loads(raw) if raw.strip() else {}
            body = [_drop_method(b) for b in body] if isinstance(body, list) else _drop_method(body)
            classes = endpoint_classes(endpoint, version)
            if classes is None:
                raise ApiError(400, 0, f"Invalid endpoint: endpoint={endpoint} version={requested}")
            req_cls, resp_cls = classes
            body = agent_compat(endpoint, body, req_cls)
            if isinstance(body, dict) and url.query:
                props = req_cls._schema.get("properties", {})
                for k, v in parse_qs(url.query).items():
                    body.setdefault(k, _coerce_query(v[-1], props.get(k)))
            if endpoint != "auth.login" and not self.headers.get("Authorization", "").startswith("Bearer "):
                raise ApiError(401, 20, "Unauthorized (missing token)")
            with state.lock:
                state.calls.append((endpoint, copy.deepcopy(body)))
                task_ref = body.get("task", "") if isinstance(body, dict) else ""
                state.timeline.append((time.time(), endpoint, task_ref if isinstance(task_ref, str) else ""))
                req = validate_request(req_cls, body)
                handler = getattr(state, endpoint.replace(".", "__"), None)
                if handler is None:
                    raise ApiError(400, 0, f"Endpoint not implemented by the stand-in: {endpoint}")
                data = build_response(resp_cls, handler(req, body))
                for hook in state.hooks.get(endpoint, []):
                    hook(body)
            self._reply(endpoint, requested, 200, 0, "OK", data)
        except ApiError as ex:
            with state.lock:
                state.errors.append((endpoint, ex.msg))
                if not state.calls or state.calls[-1][0] != endpoint or state.calls[-1][1] != body:
                    state.calls.append((endpoint, body))
            self._reply(endpoint, requested, ex.code, ex.subcode, ex.msg, {})
        except Exception as ex:  # noqa: BLE001 - a stand-in bug: answer 500 like the server, never kill the thread
            with state.lock:
                state.errors.append((endpoint, f"{type(ex).__name__}: {ex}"))
            self._reply(endpoint, requested, 500, 0, f"Internal stand-in error: {ex}", {}, traceback.format_exc())

    def _reply(
        self, endpoint: str, version: str, code: int, subcode: int, msg: str, data: dict, stack: str | None = None
    ) -> None:
        meta = {
            "id": _new_id(),
            "trx": _new_id(),
            "endpoint": {"name": endpoint, "requested_version": version,
                         "actual_version": schema_version(version) or API_VERSION},
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": stack,
            "error_data": {},
        }
        self._send(code, json.dumps({"meta": meta, "data": data}).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, role: str, state: StandinState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.role = role
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients (SDK processes that exit) drop keep-alive connections; that is not a server error worth a trace.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve(role: str, state: StandinState) -> tuple[_Server, threading.Thread]:
    """Start one listener (role "api" or "files") on a free 127.0.0.1 port, in a daemon thread."""
    server = _Server(role, state)
    # A short poll interval makes stop() (shutdown) return in ~50 ms instead of 0.5 s per listener.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"clearml-standin-{role}", daemon=True
    )
    thread.start()
    return server, thread
