"""The planner and the change fingerprint: every case a run can meet, without any I/O."""

from __future__ import annotations

import itertools

import pytest

from aktin_sftp.broker import NodeStatus
from aktin_sftp.plan import Observed, Reason, Target, completion, fingerprint, make_plan
from aktin_sftp.state import Copy, Entry

T1, T2 = "2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z"
HERE = Target("key-now", "aktin@sftp.example.org:22:upload")


def copy(key_id: str = HERE.key_id, destination: str = HERE.destination) -> Copy:
    return Copy(key_id, destination, 1000, "0" * 64)


def node(number: int, **stamps: str) -> NodeStatus:
    return NodeStatus(number, tuple(sorted(stamps.items())))


# What we know of a request before the run, and what the planner must do when the broker
# does (True) or does not (False) list it.
KNOWN_CASES: dict[str, tuple[Entry | None, dict[bool, Reason | str | None]]] = {
    "never delivered": (None, {True: Reason.NEW, False: None}),
    "delivered, same fingerprint": (Entry(7, "1.0", fingerprint="fp"), {True: "unchanged", False: "remove"}),
    "delivered, other fingerprint": (Entry(7, "1.0", fingerprint="old"), {True: Reason.CHANGED, False: "remove"}),
    "taken over from upstream": (Entry(7, "1.0"), {True: Reason.CHANGED, False: "remove"}),
    "deleted before": (Entry(7, "1.0", fingerprint="fp", deleted="x"), {True: Reason.REAPPEARED, False: None}),
    "delivered here with this key": (Entry(7, "1.0", fingerprint="fp", copy=copy()), {True: "unchanged", False: "remove"}),
    "delivered with another key": (
        Entry(7, "1.0", fingerprint="fp", copy=copy(key_id="key-before")), {True: Reason.KEY_CHANGED, False: "remove"}
    ),
    "delivered to another folder": (
        Entry(7, "1.0", fingerprint="fp", copy=copy(destination="aktin@sftp.example.org:22:old")),
        {True: Reason.MOVED, False: "forget"},
    ),
    "delivered with another key, results changed since": (
        Entry(7, "1.0", fingerprint="old", copy=copy(key_id="key-before")), {True: Reason.CHANGED, False: "remove"}
    ),
    "delivered to another folder, results changed since": (
        Entry(7, "1.0", fingerprint="old", copy=copy(destination="aktin@sftp.example.org:22:old")),
        {True: Reason.CHANGED, False: "forget"},
    ),
    "re-delivery requested": (
        Entry(7, "1.0", fingerprint="fp", copy=copy(), redeliver="x"), {True: Reason.REQUESTED, False: "remove"}
    ),
    "deleted, then re-delivery requested": (
        Entry(7, "1.0", fingerprint="fp", deleted="x", redeliver="x"), {True: Reason.REAPPEARED, False: None}
    ),
}


@pytest.mark.parametrize(("case", "listed"), list(itertools.product(KNOWN_CASES, (True, False))))
def test_every_known_state_against_the_listing(case: str, listed: bool) -> None:
    entry, expected = KNOWN_CASES[case]
    known = {7: entry} if entry else {}
    observed = [Observed(7, "fp", "1.0")] if listed else []
    plan = make_plan(observed, known, max_delete=5, target=HERE)
    action = expected[listed]
    assert plan.deliver == (((7, action),) if isinstance(action, Reason) else ())
    assert plan.remove == ((7,) if action == "remove" else ())
    assert plan.forget == ((7,) if action == "forget" else ())
    assert plan.unchanged == ((7,) if action == "unchanged" else ())
    assert plan.held_back == ()


@pytest.mark.parametrize("case", KNOWN_CASES)
def test_a_listed_request_whose_status_failed_is_neither_delivered_nor_removed(case: str) -> None:
    entry, _ = KNOWN_CASES[case]
    plan = make_plan([], {7: entry} if entry else {}, max_delete=5, target=HERE, unobserved=[7])
    assert (plan.deliver, plan.remove, plan.forget, plan.unchanged, plan.held_back) == ((), (), (), (), ())


def test_many_requests_are_sorted_and_each_gets_its_own_decision() -> None:
    known = {
        1: Entry(1, "1.0", fingerprint="a"),
        2: Entry(2, "1.0", fingerprint="b"),
        3: Entry(3, "1.0", fingerprint="c"),
        4: Entry(4, "1.0", fingerprint="d", deleted="x"),
    }
    observed = [Observed(5, "e", "0.0"), Observed(2, "changed", "1.0"), Observed(1, "a", "1.0"), Observed(4, "d", "1.0")]
    plan = make_plan(observed, known, max_delete=5, target=HERE)
    assert plan.deliver == ((2, Reason.CHANGED), (4, Reason.REAPPEARED), (5, Reason.NEW))
    assert plan.unchanged == (1,)
    assert plan.remove == (3,)


@pytest.mark.parametrize(("gone", "max_delete", "removed"), [(0, 0, True), (1, 0, False), (3, 3, True), (4, 3, False)])
def test_max_delete_holds_back_all_removals_beyond_the_limit(gone: int, max_delete: int, removed: bool) -> None:
    known = {i: Entry(i, "1.0", fingerprint="x") for i in range(gone)}
    known[100] = Entry(100, "1.0", fingerprint="x")
    plan = make_plan([Observed(100, "x", "1.0"), Observed(101, "y", "0.0")], known, max_delete, HERE)
    assert plan.deliver == ((101, Reason.NEW),)
    assert plan.remove == (tuple(range(gone)) if removed else ())
    assert plan.held_back == (() if removed else tuple(range(gone)))


def test_a_new_key_re_delivers_everything_listed_however_many_and_removes_only_within_max_delete() -> None:
    known = {i: Entry(i, "1.0", fingerprint="x", copy=copy(key_id="key-before")) for i in range(40)}
    plan = make_plan([Observed(i, "x", "1.0") for i in range(30)], known, max_delete=5, target=HERE)
    assert plan.deliver == tuple((i, Reason.KEY_CHANGED) for i in range(30))
    assert plan.remove == () and plan.held_back == tuple(range(30, 40))


def test_an_empty_listing_cannot_wipe_the_folder() -> None:
    known = {i: Entry(i, "1.0", fingerprint="x") for i in range(50)}
    plan = make_plan([], known, max_delete=5, target=HERE)
    assert plan.remove == ()
    assert len(plan.held_back) == 50


def test_second_hospital_completing_changes_the_fingerprint() -> None:
    one = [node(1, completed=T1), node(2)]
    two = [node(1, completed=T1), node(2, completed=T2)]
    assert completion(one) == "0.5" and completion(two) == "1.0"
    assert fingerprint(one) != fingerprint(two)
    # The 1/1 -> 2/2 case upstream missed: same completion ratio, different results.
    assert completion([node(1, completed=T1)]) == completion(two)
    assert fingerprint([node(1, completed=T1)]) != fingerprint(two)


def test_resubmission_rejection_and_failure_change_the_fingerprint() -> None:
    base = fingerprint([node(1, completed=T1)])
    assert fingerprint([node(1, completed=T2)]) != base
    assert fingerprint([node(1, completed=T1, failed=T2)]) != base
    assert fingerprint([node(1, completed=T1), node(2, rejected=T2)]) != base


def test_one_change_among_hundreds_of_nodes_is_seen() -> None:
    nodes = [node(i, completed=T1) for i in range(400)]
    changed = list(nodes)
    changed[321] = node(321, completed=T2)
    assert fingerprint(nodes) != fingerprint(changed)
    assert completion(nodes) == completion(changed) == "1.0"


def test_progress_states_and_node_order_do_not_count_as_changes() -> None:
    nodes = [node(1, completed=T1), node(2)]
    assert fingerprint(nodes) == fingerprint(list(reversed(nodes)))
    assert fingerprint(nodes) == fingerprint([node(1, completed=T1)])
    assert fingerprint(nodes) == fingerprint([node(1, completed=T1), node(2), node(3)])


@pytest.mark.parametrize(
    ("done", "rows", "expected"), [(0, 0, "0.0"), (0, 2, "0.0"), (1, 2, "0.5"), (1, 3, "0.33"), (2, 3, "0.67"), (3, 3, "1.0")]
)
def test_completion_is_written_as_upstream_wrote_it(done: int, rows: int, expected: str) -> None:
    nodes = [node(i, completed=T1) if i < done else node(i) for i in range(rows)]
    assert completion(nodes) == expected
