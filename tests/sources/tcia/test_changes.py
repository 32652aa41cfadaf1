"""Change detection against the sandbox: every kind of TCIA change lands in the right list."""

from __future__ import annotations

import pytest

from mirror.errors import ArchiveError
from mirror.sources.http import HttpClient
from mirror.sources.tcia.changes import ChangePlanner, KnownSeries, combine
from mirror.sources.tcia.client import NbiaClient
from mirror.sources.tcia.sandbox import start

COLLECTIONS = ["Sandbox-Lung-CT", "Sandbox-Brain-MR"]


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=5)
    yield sandbox
    sandbox.stop()


def nbia(sandbox) -> NbiaClient:
    return NbiaClient(HttpClient(attempts=2, backoff=0.01), sandbox.v4_url)


def mirror_state(sandbox) -> dict[str, KnownSeries]:
    """What a mirror synced now holds: the listed rows and the MD5s of the bytes it got."""
    client = nbia(sandbox)
    known = {}
    for collection in client.collections():
        for row in client.series(Collection=collection):
            images = sandbox.archive.series[row["SeriesInstanceUID"]].images.values()
            known[row["SeriesInstanceUID"]] = KnownSeries(row, [i.md5 for i in images])
    return known


def plan(sandbox, known, collections=COLLECTIONS):
    return ChangePlanner(nbia(sandbox)).plan(collections, known)


def test_combine_is_nbias_construction():
    assert combine([]) == "" and combine(["", ""]) == ""
    import hashlib
    assert combine(["b" * 32, "a" * 32]) == hashlib.md5(
        ("a" * 32 + "b" * 32).encode()).hexdigest()


def test_nothing_changed_costs_two_requests_per_collection(sb):
    known = mirror_state(sb)
    result = plan(sb, known)
    assert sorted(result.unchanged) == sorted(known)
    assert not (result.added or result.refetch or result.fields_only or result.hidden
                or result.removed)
    assert result.requests == 4  # one listing and one collection hash each


def test_each_kind_of_change(sb):
    known = mirror_state(sb)
    lung = [k for k in known.values() if k.row["Collection"] == "Sandbox-Lung-CT"]
    brain = [k for k in known.values() if k.row["Collection"] == "Sandbox-Brain-MR"]
    reprocessed, hidden = lung[0].uid, lung[1].uid
    sb.mutate("reprocess", series=reprocessed)
    sb.mutate("approve", series=reprocessed)  # same release date: no date endpoint shows it
    sb.mutate("reprocess", series=hidden)  # still under review
    new = sb.mutate("add_series", collection="Sandbox-Lung-CT")["series"]
    removed_pid = brain[0].row["PatientID"]
    removed = [k.uid for k in brain if k.row["PatientID"] == removed_pid]
    sb.mutate("remove_patient", collection="Sandbox-Brain-MR", patient=removed_pid)
    sb.mutate("set_license", collection="Sandbox-Brain-MR")
    result = plan(sb, known)
    assert result.added == [new]
    assert result.refetch == [reprocessed]
    assert result.hidden == [hidden]
    assert sorted(result.removed) == sorted(removed)
    licensed = {k.uid for k in brain if k.row["PatientID"] != removed_pid}
    assert set(result.fields_only) == licensed
    everything = (set(result.added) | set(result.refetch) | set(result.hidden)
                  | set(result.removed) | set(result.fields_only) | set(result.unchanged))
    assert everything == set(known) | {new}


def test_rename_is_found_and_costs_no_downloads(sb):
    known = mirror_state(sb)
    sb.mutate("rename_collection", old="Sandbox-Lung-CT", new="Sandbox-Lung-CT-2")
    result = plan(sb, known)
    assert result.renamed == {"Sandbox-Lung-CT": "Sandbox-Lung-CT-2"}
    lung = {u for u, k in known.items() if k.row["Collection"] == "Sandbox-Lung-CT"}
    assert set(result.fields_only) == lung
    assert not (result.removed or result.hidden or result.refetch or result.added)


def test_byte_change_with_identical_fields_is_found_through_the_hierarchy(sb):
    known = mirror_state(sb)
    victim = next(iter(known.values()))
    victim.md5s[0] = "0" * 32  # the mirror's copy differs; every getSeries field agrees
    result = plan(sb, known)
    assert result.refetch == [victim.uid]
    assert victim.uid not in result.unchanged


def test_a_lagging_collection_hash_is_settled_at_the_live_patient_level(sb):
    sb.mutate("add_series", collection="Sandbox-Lung-CT")  # not yet in the collection hash
    known = mirror_state(sb)  # the mirror already has it
    client = nbia(sb)
    assert client.md5_hierarchy(collection="Sandbox-Lung-CT") != combine(
        combine(combine(k.hash for k in known.values()
                        if k.row["StudyInstanceUID"] == study)
                for study in {k.row["StudyInstanceUID"] for k in known.values()
                              if k.row["PatientID"] == pid})
        for pid in {k.row["PatientID"] for k in known.values()
                    if k.row["Collection"] == "Sandbox-Lung-CT"})
    result = plan(sb, known)
    assert sorted(result.unchanged) == sorted(known)
    patients = len({k.row["PatientID"] for k in known.values()
                    if k.row["Collection"] == "Sandbox-Lung-CT"})
    assert result.requests == 4 + patients


def test_empty_and_html_listings_are_not_taken_for_removals():
    sandbox = start(collections=2, seed=5, hostile="empty,html")
    try:
        honest = start(collections=2, seed=5)
        try:
            known = mirror_state(honest)  # the same archive, told straight
        finally:
            honest.stop()
        for _ in range(3):  # every position in the lying cycle
            result = plan(sandbox, known)
            assert sorted(result.unchanged) == sorted(known)
            assert not (result.removed or result.hidden or result.renamed or result.added)
    finally:
        sandbox.stop()


def test_a_listing_that_keeps_leaving_series_out_is_an_error(sb, monkeypatch):
    known = mirror_state(sb)
    client = nbia(sb)
    real = client.series

    def lying(**filters):
        return [] if "Collection" in filters else real(**filters)

    monkeypatch.setattr(client, "series", lying)
    with pytest.raises(ArchiveError, match="leaves out series"):
        ChangePlanner(client).plan(COLLECTIONS, known)


def test_an_executor_gives_the_same_plan(sb):
    from concurrent.futures import ThreadPoolExecutor

    known = mirror_state(sb)
    victim = next(iter(known.values()))
    victim.md5s[0] = "0" * 32
    sb.mutate("add_series", collection="Sandbox-Brain-MR")
    serial = plan(sb, known)
    with ThreadPoolExecutor(4) as pool:
        parallel = ChangePlanner(nbia(sb), pool).plan(COLLECTIONS, known)
    assert parallel == serial and serial.refetch == [victim.uid] and len(serial.added) == 1


def test_full_walks_the_live_patient_hashes_past_a_stale_collection_hash(sb):
    """Bytes change under identical getSeries fields before NBIA's daily job: the stale
    collection hash still equals the mirror's, so only --full (patient level) sees it."""
    known = mirror_state(sb)
    victim = next(k for k in known.values() if k.row["Collection"] == "Sandbox-Lung-CT")
    for image in sb.archive.series[victim.uid].images.values():
        image.data = image.data[:-2] + b"\x00\x01"  # same size, other bytes
        image.__post_init__()
    assert plan(sb, known).refetch == []  # within the staleness window: missed
    patients = len({k.row["PatientID"] for k in known.values()})
    full = ChangePlanner(nbia(sb), full=True).plan(COLLECTIONS, known)
    assert full.refetch == [victim.uid]
    assert full.requests >= 2 + patients  # two listings, then every patient's live hash
