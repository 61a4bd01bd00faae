"""History pages over the store's typed queries: filters from the query string, clamped pages."""

from mistryd.history import Filters, page_of
from mistryd.layout import Layout
from mistryd.store import Status, Store


def store_with(tmp_path, n: int) -> Store:
    """n finished builds of p, every third failed, in groups g0 and g1; build i queued at t=i."""
    store = Store(Layout(tmp_path))
    for i in range(n):
        status = Status.FAILED if i % 3 == 0 else Status.SUCCEEDED
        store.record_queued("p", f"b{i:02}", f"g{i % 2}", {}, False, now=i)
        store.record_finished("p", f"b{i:02}", status, {"Group": f"g{i % 2}"}, now=i + 0.5)
    return store


def test_a_page_is_filtered_and_clamped(tmp_path):
    store = store_with(tmp_path, 12)
    page = page_of(store, Filters.parse("p", " failed ", ""), number=1, size=3)
    assert [r.id for r in page.rows] == ["b09", "b06", "b03"] and page.total == 4
    assert page.pages == 2 and page.has_next and not page.has_prev
    last = page_of(store, Filters.parse("p", "failed", ""), number=99, size=3)
    assert last.number == 2 and [r.id for r in last.rows] == ["b00"]
    grouped = page_of(store, Filters.parse(group="g1"), size=50)
    assert grouped.total == 6 and {r.group for r in grouped.rows} == {"g1"}


def test_an_unknown_status_shows_nothing_rather_than_everything(tmp_path):
    store = store_with(tmp_path, 4)
    page = page_of(store, Filters.parse("p", "sucess", ""))
    assert page.rows == [] and page.total == 0 and page.number == 1
    assert Filters.parse(status="sucess").args() == {"status": "sucess"}  # the link keeps it
