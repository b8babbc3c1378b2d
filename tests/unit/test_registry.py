"""What the API serves under a name: promotions across names, and what a step back undoes."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.snapshots import ObjectSnapshotStore
from tests.factories import trained

AWARE, FM = ModelSpec(name="aware", crosses=()), ModelSpec(name="fm", crosses=())


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k", notices_poll_s=None)
    for v in (1, 2):
        store.put(trained(v, n=5))
        store.put(trained(v, n=5, spec=AWARE))
    store.put(trained(1, n=5, spec=FM))
    return Registry(store)


def test_a_step_back_undoes_the_newest_move_of_what_is_served(registry: Registry) -> None:
    registry.promote("ctr", 1)
    assert registry.serving("ctr") == ("ctr", 1)
    assert registry.serve("ctr", "aware") == ("aware", 2)  # its newest, as it learns
    assert registry.serve("ctr", "fm", 1) == ("fm", 1)  # fm's champion moved there first
    assert registry.store.read_registry("fm").aliases == {"champion": 1}
    assert registry.step_back("ctr") == ("aware", 2)
    assert registry.step_back("ctr") == ("ctr", 1)
    with pytest.raises(SnapshotError, match="no earlier version"):
        registry.step_back("ctr")  # ctr's champion has no history: nothing is undone
    assert registry.serving("ctr") == ("ctr", 1)


def test_serving_its_own_again_is_a_move_a_step_back_undoes(registry: Registry) -> None:
    registry.promote("ctr", 1)
    registry.serve("ctr", "aware")
    assert registry.serve("ctr", "ctr") == ("ctr", 1)
    assert registry.step_back("ctr") == ("aware", 2)
    # The champion moved while ctr serves its own: the serving history starts afresh, and a
    # step back returns to the version before.
    registry.serve("ctr", "ctr", 2)
    assert registry.serving("ctr") == ("ctr", 2)
    registry.promote("ctr", 2)
    assert registry.step_back("ctr") == ("ctr", 1)


def test_a_step_back_decided_on_what_is_no_longer_served_changes_nothing(
    registry: Registry,
) -> None:
    """The monitor's actions may run twice (after a crash): the second finds what it stepped
    back from gone, and leaves things as they are."""
    registry.promote("ctr", 1)
    registry.serve("ctr", "aware")
    before = registry.serving("ctr")
    assert registry.step_back("ctr", expected=before) == ("ctr", 1)
    assert registry.step_back("ctr", expected=before) == ("ctr", 1)
    registry.promote("ctr", 2)
    assert registry.step_back("ctr", expected=("ctr", 1)) == ("ctr", 2)  # moved on since
    assert registry.step_back("ctr", expected=("ctr", 2)) == ("ctr", 1)


def test_serving_a_model_without_versions_is_refused(registry: Registry) -> None:
    with pytest.raises(SnapshotNotFound):
        registry.serve("ctr", "nope")
    with pytest.raises(SnapshotNotFound):
        registry.serve("ctr", "aware", 7)
    assert registry.serving("ctr") == ("ctr", 2)
