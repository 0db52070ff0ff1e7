"""Model source parsing and resolution (no network: Hub calls are offline or monkeypatched)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import constants, errors

from models.loader import HF_ALLOW_PATTERNS, parse_model_source, resolve_model_source
from models.source import ModelSource, ModelSourceError

REPO = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
SHA = "db1f81ad4b8c7e39777509fac66c652eb0a52f91"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("builtin:smollm2-135m-instruct", {"kind": "builtin", "name": "smollm2-135m-instruct", "seed": None}),
        ("builtin:tiny-llama", {"kind": "builtin", "name": "tiny-llama", "seed": 0}),
        ("builtin:tiny-llama?seed=7", {"kind": "builtin", "name": "tiny-llama", "seed": 7}),
        ("  builtin:tiny-llama?seed=0  ", {"kind": "builtin", "seed": 0}),
        (f"hf:{REPO}", {"kind": "hf", "repo_id": REPO, "revision": None}),
        (f"hf:{REPO}@{SHA}", {"kind": "hf", "repo_id": REPO, "revision": SHA}),
        (REPO, {"kind": "hf", "repo_id": REPO}),
        ("Org/Model-0.5B.v2@v1.0", {"kind": "hf", "repo_id": "Org/Model-0.5B.v2", "revision": "v1.0"}),
        ("/srv/models/llama", {"kind": "path", "path": "/srv/models/llama"}),
        ("file:///srv/models/my%20model", {"kind": "path", "path": "/srv/models/my model"}),
        ("catalog:smollm2-135m-instruct", {"kind": "builtin", "catalog_name": "smollm2-135m-instruct"}),
        ("catalog:llama-3.1-8b-instruct-awq", {"kind": "hf", "repo_id": REPO, "revision": SHA}),
    ],
)
def test_parse_good_sources(source: str, expected: dict[str, Any]) -> None:
    parsed = parse_model_source(source)
    for field, value in expected.items():
        assert getattr(parsed, field) == value, field
    assert parse_model_source(str(parsed)).model_dump(exclude={"catalog_name"}) == parsed.model_dump(
        exclude={"catalog_name"}
    )


def test_parse_relative_path_and_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_model_source("./m").path == str(tmp_path / "m")
    assert parse_model_source("~/m").path == str(tmp_path / "m")


def test_parse_revision_argument() -> None:
    assert parse_model_source(f"hf:{REPO}", revision=SHA).revision == SHA
    assert parse_model_source(f"hf:{REPO}@{SHA}", revision=SHA).is_pinned
    assert not parse_model_source(f"hf:{REPO}", revision="main").is_pinned
    assert parse_model_source("builtin:tiny-llama").is_pinned
    # an explicit revision overrides the catalog pin
    assert parse_model_source("catalog:llama-3.1-8b-instruct-awq", revision="main").revision == "main"


@pytest.mark.parametrize(
    "source, kwargs, fragment",
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        ("builtin:gpt-5", {}, "unknown builtin"),
        ("builtin:tiny-llama?seed=-1", {}, "seed"),
        ("builtin:tiny-llama?seed=abc", {}, "seed"),
        ("builtin:tiny-llama?temperature=1", {}, "temperature"),
        ("builtin:smollm2-135m-instruct?seed=1", {}, "no parameters"),
        ("builtin:tiny-llama", {"revision": "main"}, "no revision"),
        ("catalog:nope", {}, "unknown catalog model"),
        ("catalog:tiny-llama", {"revision": "main"}, "no revision"),
        ("hf:not a repo", {}, "invalid Hugging Face repo id"),
        ("hf:org/name/extra", {}, "invalid Hugging Face repo id"),
        ("hf:org--x/name", {}, "invalid Hugging Face repo id"),
        ("hf:org/name@", {}, "invalid revision"),
        ("hf:org/name@bad rev", {}, "invalid revision"),
        (f"hf:{REPO}@{SHA}", {"revision": "main"}, "pins revision"),
        ("file://relative/path", {}, "absolute"),
        ("/srv/models/x", {"revision": "main"}, "no revision"),
        ("just-a-name", {}, "unrecognised model source"),
        ("s3://bucket/model", {}, "unrecognised model source"),
    ],
)
def test_parse_bad_sources(source: str, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_model_source(source, **kwargs)
    assert fragment in str(info.value)


def test_model_source_error_is_a_value_error() -> None:
    # so pydantic validators that call parse_model_source turn it into a ValidationError
    assert issubclass(ModelSourceError, ValueError)
    assert ModelSource(kind="hf", repo_id="a/b").is_pinned is False


@pytest.fixture
def empty_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return home


def test_offline_with_empty_cache_raises_actionable_error(
    monkeypatch: pytest.MonkeyPatch, empty_hf_home: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines: list[str] = []
    with pytest.raises(ModelSourceError) as info:
        resolve_model_source(f"hf:{REPO}", progress=lines.append)
    message = str(info.value)
    assert "offline" in message and "HF_HUB_OFFLINE" in message
    assert "serving models pull" in message and "HF_HOME" in message
    assert str(empty_hf_home / "hub") in message
    assert isinstance(info.value.__cause__, errors.LocalEntryNotFoundError)
    assert any("not pinned" in line for line in lines)


def test_offline_catalog_source_names_the_pinned_revision(
    monkeypatch: pytest.MonkeyPatch, empty_hf_home: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as info:
        resolve_model_source("catalog:llama-3.1-8b-instruct-awq", progress=lambda _line: None)
    assert f"{REPO}@{SHA}" in str(info.value)
    assert f"--revision {SHA}" in str(info.value)


def _http_error(cls: type[Exception], status: int, message: str) -> Exception:
    """A real huggingface_hub HTTP error, built with the HTTP response type this version uses."""
    response_cls = errors.Response
    url = f"https://huggingface.co/api/models/{REPO}"
    try:  # httpx-style client (huggingface_hub >= 1.0)
        module = __import__(response_cls.__module__.split(".")[0])
        response = response_cls(status, request=module.Request("GET", url))
    except TypeError:  # requests-style client (older huggingface_hub)
        response = response_cls()
        response.status_code = status
        response.url = url
    return cls(message, response=response)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, empty_hf_home: Path) -> Path:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return empty_hf_home


def _raising(exc: BaseException) -> Callable[..., str]:
    def fake(*_args: object, **_kwargs: object) -> str:
        raise exc

    return fake


@pytest.mark.parametrize(
    "exc, fragments",
    [
        (lambda: _http_error(errors.GatedRepoError, 403, "gated"), ["gated", "HF_TOKEN", "licence"]),
        (lambda: _http_error(errors.RepositoryNotFoundError, 404, "x"), ["not found", "repo id", "HF_TOKEN"]),
        (lambda: _http_error(errors.RevisionNotFoundError, 404, "nope"), ["revision", "does not exist"]),
        (lambda: errors.LocalEntryNotFoundError("connection"), ["unreachable", "serving models pull"]),
        (lambda: _http_error(errors.HfHubHTTPError, 500, "boom"), ["HTTP 500"]),
    ],
    ids=["gated", "repo-not-found", "revision-not-found", "unreachable", "server-error"],
)
def test_hub_errors_become_model_source_errors(
    monkeypatch: pytest.MonkeyPatch, online: Path, exc: Any, fragments: list[str]
) -> None:
    raised = exc()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raising(raised))
    with pytest.raises(ModelSourceError) as info:
        resolve_model_source(f"hf:{REPO}@{SHA}", progress=lambda _line: None)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert info.value.__cause__ is raised


def test_hub_download_arguments(monkeypatch: pytest.MonkeyPatch, online: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    calls: list[tuple[tuple[object, ...], dict[str, Any]]] = []

    def fake(*args: object, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert resolve_model_source("catalog:llama-3.1-8b-instruct-awq", progress=lambda _l: None) == snapshot
    (args, kwargs), = calls
    assert args == (REPO,)
    assert kwargs["revision"] == SHA
    assert kwargs["local_files_only"] is False
    assert Path(kwargs["cache_dir"]) == online / "hub"
    assert kwargs["allow_patterns"] == HF_ALLOW_PATTERNS
    assert "*.safetensors" in kwargs["allow_patterns"] and "tokenizer.model" in kwargs["allow_patterns"]


def test_local_directory_sources(tmp_path: Path) -> None:
    model = tmp_path / "my model"
    model.mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_source(str(model))
    (model / "config.json").write_text("{}")
    assert resolve_model_source(str(model)) == model
    assert resolve_model_source(model.as_uri()) == model
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_source(str(tmp_path / "file"))


def test_builtin_tiny_llama_resolves_into_the_given_cache(tmp_path: Path) -> None:
    lines: list[str] = []
    path = resolve_model_source("builtin:tiny-llama?seed=2", cache=tmp_path, progress=lines.append)
    assert path == tmp_path / "models" / "tiny-llama-seed2"
    assert (path / "config.json").is_file() and (path / "serving-build.json").is_file()
    assert resolve_model_source("catalog:tiny-llama", cache=tmp_path, progress=lines.append) == (
        tmp_path / "models" / "tiny-llama-seed0"
    )
