"""`report A --compare B` at 1,000,000 rows stays under 2 GB because evaluate frees each large thing before the
next phase needs its memory. These tests watch the real objects (weak references, after a collection) in a real
evaluate run: the peaks themselves are measured by bench/bench_scale.py at scale."""

from __future__ import annotations

import gc
import weakref

import pytest

from lineage.runner import execute
from lineage.store import Store


@pytest.fixture
def two_versions(tmp_path):
    from tests.test_ap_history import FakeTrain, FakeTrainParams, history

    store = Store.open(tmp_path / "store", create=True)
    for seed in (1, 2):
        execute(store, FakeTrain, FakeTrainParams(train_images=40 * seed, params={"seed": seed},
                                                  history=history([0.5, 0.6], ["head", "finetune"])),
                log=lambda line: None, progress=False)
    return store


def _live(references) -> int:
    gc.collect()
    return sum(reference() is not None for reference in references)


def test_metrics_never_run_while_another_prediction_table_is_held(two_versions, monkeypatch):
    """The other version's AP (for the AP-per-version chart) is computed before the main table is read, and its
    table is gone before the main one arrives: compute_metrics peaks about 1 GB above its own table at 1M rows."""
    from report import metrics
    from stages import evaluate

    tables, live_at_metrics = [], []
    read, compute = evaluate.read_predictions, metrics.compute_metrics

    def reading(artifact):
        table = read(artifact)
        tables.append(weakref.ref(table))
        return table

    def computing(frame, *args, **kwargs):
        live_at_metrics.append(_live(tables))
        return compute(frame, *args, **kwargs)

    monkeypatch.setattr(evaluate, "read_predictions", reading)
    monkeypatch.setattr(metrics, "compute_metrics", computing)
    execute(two_versions, evaluate, evaluate.Params(input="predictions:v1", compare_with="predictions:v2"),
            log=lambda line: None, progress=False)
    assert len(tables) == 3 and live_at_metrics == [1, 1]  # B's AP, then A's metrics; then B again for the join


def test_full_curves_are_stored_and_dropped_before_the_comparison_is_joined(two_versions, monkeypatch):
    """The per-class and micro curves (millions of points at 1M rows) go to curves.npz before the join; only the
    operating curves, which the threshold panel reads, stay for the page."""
    from report import metrics
    from report.metrics import read_curves
    from stages import evaluate
    from tables import compare

    full_curves, operating, live_at_join = [], [], []
    compute, join = metrics.compute_metrics, compare.join_predictions

    def computing(frame, *args, **kwargs):
        result = compute(frame, *args, **kwargs)
        full_curves[:] = [weakref.ref(curve) for curve in [result["curves"]["micro"],
                                                           *result["curves"]["per_class"].values()]]
        operating[:] = [weakref.ref(result["curves"]["operating"]["all"]["curve"])]
        return result

    def joining(*args, **kwargs):
        live_at_join.append((_live(full_curves), _live(operating)))
        return join(*args, **kwargs)

    monkeypatch.setattr(metrics, "compute_metrics", computing)
    monkeypatch.setattr(compare, "join_predictions", joining)
    result = execute(two_versions, evaluate, evaluate.Params(input="predictions:v1", compare_with="predictions:v2"),
                     log=lambda line: None, progress=False)
    assert live_at_join == [(0, 1)]
    files = two_versions.read_manifest(result.outputs[0].key).files
    stored = read_curves(two_versions.read_object(files[metrics.CURVES_FILE].digest))
    assert stored["micro"].positives > 0 and list(stored["per_class"]) == stored["classes"]
