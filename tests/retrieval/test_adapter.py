"""Embedding adapters: found by the model's fingerprint, applied through the public API, and
bad adapter files refused with a clear error (a tiny random model; no benchmark text)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import RKLLMModel
from rkllm_core.errors import ConfigError
from rkllm_core.retrieval.adapter import EmbeddingAdapter, find_adapter, load_adapter

TEXTS = ["Rivers flow to the sea.", "How do I mount a USB disk?", "The kernel schedules tasks."]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RKLLM_CACHE_DIR", str(tmp_path))
    (tmp_path / "adapters").mkdir()
    return tmp_path / "adapters"


def _fitted_for(model: RKLLMModel, dim: int = 8, seed: int = 0) -> EmbeddingAdapter:
    query_mean, passage_mean = model.embedder.fingerprint(model.embedding_config)
    matrix = np.random.default_rng(seed).normal(size=(query_mean.shape[0], dim))
    return EmbeddingAdapter("tiny", matrix.astype(np.float16).astype(np.float32),
                            query_mean, passage_mean)


def test_a_users_adapter_is_found_and_applied(tiny_model_dir: Path, cache: Path) -> None:
    with RKLLMModel(tiny_model_dir) as probe:
        adapter = _fitted_for(probe)
        features = probe.embedder.features(TEXTS, probe.embedding_config, False)
    adapter.save(cache / "tiny.npz")
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.npz"]  # no partial file left
    with RKLLMModel(tiny_model_dir) as model:
        got = model.embed(TEXTS)
        want = (features - adapter.passage_mean) @ adapter.matrix
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        hidden = model.info.hidden_size
        assert model.embed(TEXTS, adapter=False).shape == (3, hidden)
        assert model.embed([]).shape == (0, 8)
        # a query is centred on the query side's mean before the same matrix
        query = model.embed(TEXTS[1], is_query=True, normalize=False)[0]
        np.testing.assert_allclose(query, (features[1] - adapter.query_mean) @ adapter.matrix,
                                   rtol=1e-3, atol=1e-3)
        # a query instruction changes the query's centre, not which adapter the model has
        instructed = model.embed(TEXTS[1], is_query=True, query_instruction="Find: ")
        assert instructed.shape == (1, 8) and not np.allclose(instructed[0], got[1])


def test_another_models_adapter_is_never_used(tiny_model_dir: Path, cache: Path) -> None:
    with RKLLMModel(tiny_model_dir) as model:
        own = _fitted_for(model)
        rng = np.random.default_rng(1)
        other = EmbeddingAdapter("other", own.matrix, own.query_mean + rng.normal(
            scale=np.abs(own.query_mean).mean() * 3, size=own.query_mean.shape),
            own.passage_mean)
        other.save(cache / "other.npz")
        assert not other.matches(own.query_mean, own.passage_mean)
        assert model.embed(TEXTS).shape == (3, model.info.hidden_size)


def test_a_broken_user_adapter_is_skipped_with_a_warning(
    tiny_model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (cache / "broken.npz").write_bytes(b"not a zip file")
    with RKLLMModel(tiny_model_dir) as model, caplog.at_level(logging.WARNING):
        assert model.embed(TEXTS).shape == (3, model.info.hidden_size)
    assert "broken.npz" in caplog.text and "cannot be read" in caplog.text


def test_malformed_adapter_files_raise_config_errors(tmp_path: Path) -> None:
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, matrix=np.zeros((4, 2)), query_mean=np.zeros(3), passage_mean=np.zeros(4))
    with pytest.raises(ConfigError, match=r"shape\.npz is malformed"):
        load_adapter(bad_shape)
    not_finite = tmp_path / "nan.npz"
    np.savez(not_finite, matrix=np.full((4, 2), np.nan), query_mean=np.zeros(4),
             passage_mean=np.zeros(4))
    with pytest.raises(ConfigError, match=r"nan\.npz is malformed"):
        load_adapter(not_finite)
    missing = tmp_path / "missing.npz"
    np.savez(missing, matrix=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match=r"missing\.npz cannot be read"):
        load_adapter(missing)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, matrix=np.array([object()]), query_mean=np.zeros(4),
             passage_mean=np.zeros(4))
    with pytest.raises(ConfigError, match=r"pickled\.npz cannot be read"):
        load_adapter(pickled)


def test_matching_needs_the_same_size_and_direction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    adapter = EmbeddingAdapter("x", np.eye(6, 3, dtype=np.float32), q, p)
    assert adapter.matches(q * 1.5, p + 0.001)  # scale does not matter, direction does
    assert not adapter.matches(q[:4], p[:4])
    assert not adapter.matches(-q, p)
    adapter.save(tmp_path / "x.npz")
    found = find_adapter(q, p, (tmp_path,))
    assert found is not None and found.name == "x"
    assert find_adapter(-q, p, (tmp_path,)) is None
