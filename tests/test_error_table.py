"""One error table: each library error class says how it travels, and server and TUI agree.

The rule checked here: a class either declares all three of ``code``, ``http_status`` and
``openai_type`` or none (then it answers as its nearest declaring ancestor, on purpose:
``HubAuthError`` is ``hub_unavailable``); no two classes declare the same code; the server
answers each class with its declared values; the TUI's HTTP backend turns each code back into
the declaring class. The classes are found by walking the tree after importing every module,
so a new error cannot be missed.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import adapterhub
import adapterhub_server
import adapterhub_tui
from adapterhub.errors import AdapterHubError, ServerError, error_class
from adapterhub_server.errors import HTTP_CONDITIONS, install_error_handlers, sse_error_event
from adapterhub_tui.remote import library_error

OPENAI_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "server_error", "service_unavailable",
}
"""The error ``type`` values of OpenAI's API that this server answers with."""

WIRE = {
    "AdapterHubError": ("internal_error", 500, "server_error"),
    "ConfigError": ("invalid_value", 400, "invalid_request_error"),
    "RegistryError": ("registry_conflict", 409, "invalid_request_error"),
    "AdapterNotFoundError": ("model_not_found", 404, "not_found_error"),
    "JobNotFoundError": ("job_not_found", 404, "not_found_error"),
    "VersionExistsError": ("version_exists", 409, "invalid_request_error"),
    "IncompatibleAdapterError": ("incompatible_adapter", 409, "invalid_request_error"),
    "CorruptBlobError": ("corrupt_adapter", 500, "server_error"),
    "GateError": ("gate_failed", 409, "invalid_request_error"),
    "UnsafeAdapterError": ("unsafe_adapter", 422, "invalid_request_error"),
    "RegistrySchemaError": ("registry_schema_unknown", 503, "service_unavailable"),
    "BaseModelError": ("base_unavailable", 503, "service_unavailable"),
    "HubError": ("hub_unavailable", 502, "server_error"),
    "HubAuthError": ("hub_unavailable", 502, "server_error"),
    "HubNotFoundError": ("hub_unavailable", 502, "server_error"),
    "ServerError": ("internal_error", 500, "server_error"),
    "TrainingError": ("training_failed", 500, "server_error"),
    "TrainingCancelled": ("training_failed", 500, "server_error"),
    "EngineError": ("engine_unavailable", 503, "service_unavailable"),
    "PromptTooLongError": ("context_length_exceeded", 400, "invalid_request_error"),
    "ReplicaError": ("replica_unavailable", 503, "service_unavailable"),
    "CapacityError": ("capacity_exceeded", 429, "rate_limit_error"),
}
"""What clients already depend on: class -> code, HTTP status, OpenAI type."""

_ATTRIBUTES = ("code", "http_status", "openai_type")


def _every_error_class() -> list[type[AdapterHubError]]:
    for package in (adapterhub, adapterhub_server, adapterhub_tui):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    found: set[type[AdapterHubError]] = set()
    todo = [AdapterHubError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


CLASSES = _every_error_class()


def _declarer(cls: type[AdapterHubError], attribute: str) -> type:
    return next(klass for klass in cls.__mro__ if attribute in vars(klass))


def test_every_class_declares_a_code_a_status_and_an_openai_type() -> None:
    problems = []
    for cls in CLASSES:
        if {_declarer(cls, a) for a in _ATTRIBUTES} != {_declarer(cls, "code")}:
            problems.append(f"{cls.__name__} declares some of {_ATTRIBUTES} but not all")
        if not (isinstance(cls.code, str) and cls.code):
            problems.append(f"{cls.__name__}.code={cls.code!r}")
        if type(cls.http_status) is not int or not 400 <= cls.http_status <= 599:
            problems.append(f"{cls.__name__}.http_status={cls.http_status!r}")
        if cls.openai_type not in OPENAI_TYPES:
            problems.append(f"{cls.__name__}.openai_type={cls.openai_type!r}")
    assert problems == []


def test_the_wire_values_are_the_ones_clients_know() -> None:
    assert {cls.__name__: tuple(getattr(cls, a) for a in _ATTRIBUTES) for cls in CLASSES} == WIRE


def test_each_code_names_exactly_one_class() -> None:
    declared = [cls for cls in CLASSES if "code" in vars(cls)]
    codes = [cls.code for cls in declared]
    assert len(set(codes)) == len(codes), codes
    for cls in declared:
        assert error_class(cls.code) is (None if cls is AdapterHubError else cls)
    assert error_class("no_such_code") is None
    assert not set(codes) & {code for code, _ in HTTP_CONDITIONS.values()}


def test_http_conditions_use_openai_types() -> None:
    assert {type_ for _, type_ in HTTP_CONDITIONS.values()} <= OPENAI_TYPES


@pytest.fixture(scope="module")
def answers() -> TestClient:
    """An app with the server's error handlers and a route that raises any error class."""
    app = FastAPI()
    install_error_handlers(app)
    by_name = {cls.__name__: cls for cls in CLASSES}

    @app.get("/raise/{name}")
    def raise_error(name: str) -> None:
        raise by_name[name]("it failed")

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_server_answers_each_class_as_it_declares(answers: TestClient, cls: type[AdapterHubError]) -> None:
    reply = answers.get(f"/raise/{cls.__name__}")
    assert reply.status_code == cls.http_status
    error = reply.json()["error"]
    assert (error["code"], error["type"], error["message"]) == (cls.code, cls.openai_type, "it failed")
    streamed = json.loads(sse_error_event(cls("it failed")).removeprefix("data: "))["error"]
    assert (streamed["code"], streamed["type"]) == (cls.code, cls.openai_type)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_tui_raises_the_class_that_declares_the_code(answers: TestClient, cls: type[AdapterHubError]) -> None:
    reply = answers.get(f"/raise/{cls.__name__}")
    raised = library_error(reply.status_code, reply.json(), "http://server")
    declarer = _declarer(cls, "code")
    assert type(raised) is (ServerError if declarer is AdapterHubError else declarer)
    assert raised.code == cls.code


def test_an_unexpected_error_answers_as_the_root_class() -> None:
    streamed = json.loads(sse_error_event(RuntimeError("secret")).removeprefix("data: "))["error"]
    assert (streamed["code"], streamed["type"]) == (AdapterHubError.code, AdapterHubError.openai_type)
    assert "secret" not in streamed["message"]
