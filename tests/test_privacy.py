"""Personal data: encryption on every write path, decryption on every read path, and forgetting."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_analytics import DuplicateEventError, Event, Lake, Repository
from es_analytics.errors import (
    InvalidArgumentError,
    PrivacyError,
    SubjectForgottenError,
    UnknownSubjectError,
)
from es_analytics.examples.users import User
from es_analytics.forgetting import TOMBSTONE_TYPE, tombstone_stream
from es_analytics.privacy import (
    ERASED,
    FileKeyStore,
    InMemoryKeyStore,
    declare_personal,
    personal_fields,
    undeclare_personal,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


# -- an independent scan: every file, raw bytes and decoded Parquet ------------------------------
def files_holding(folder: Path, value: str) -> list[str]:
    """Every file under ``folder`` whose bytes, or whose decoded Parquet text, contain ``value``."""
    needle = value.encode("utf-8")
    hits = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if needle in path.read_bytes():
                hits.append(str(path.relative_to(folder)))
            elif name.endswith(".parquet"):
                table = pq.read_table(path)
                for column in table.columns:
                    if pa.types.is_string(column.type) and pc.any(pc.match_substring(column, value)).as_py():
                        hits.append(str(path.relative_to(folder)) + " (decoded)")
                        break
    return hits


def register(lake: Lake, user_id: str, email: str, name: str) -> int:
    user = User(user_id)
    user.register(email, name)
    return lake.append(user_id, list(user.pending_events), expected_version=0, aggregate_type="User")


def raw_data(lake: Lake, aggregate_id: str) -> list[str]:
    return lake.sql("SELECT data FROM events WHERE aggregate_id = ? ORDER BY position", [aggregate_id])["data"].to_list()


@pytest.fixture
def memory_keys() -> InMemoryKeyStore:
    return InMemoryKeyStore()


# -- encryption and decryption -----------------------------------------------------------------
def test_personal_fields_are_encrypted_at_rest_and_decrypted_for_readers(empty_lake: Lake) -> None:
    register(empty_lake, "u-1", "ada.q7@example.org", "Ada Quintero")
    stored = json.loads(raw_data(empty_lake, "u-1")[0])
    assert stored["userId"] == "u-1" and stored["preferences"] == {"newsletter": False}  # non-personal as is
    assert set(stored["profile"]["email"]) == {"$enc", "sub", "iv", "ct"}
    assert stored["profile"]["email"]["sub"] == "u-1"
    assert files_holding(empty_lake.path, "ada.q7@example.org") == []
    shown = json.loads(empty_lake.events("u-1")["data"][0])
    assert shown["profile"] == {"email": "ada.q7@example.org", "name": "Ada Quintero"}
    assert empty_lake.aggregate(User, "u-1").email == "ada.q7@example.org"  # type: ignore[union-attr]
    empty_lake.seal()
    assert files_holding(empty_lake.path, "Ada Quintero") == []
    assert json.loads(empty_lake.events()["data"][0])["profile"]["name"] == "Ada Quintero"


def test_each_value_gets_a_fresh_nonce(empty_lake: Lake) -> None:
    register(empty_lake, "u-1", "same@example.org", "Same Name")
    register(empty_lake, "u-2", "same@example.org", "Same Name")
    boxes = [json.loads(t)["profile"] for t in empty_lake.sql("SELECT data FROM events ORDER BY position")["data"]]
    ivs = {b[f]["iv"] for b in boxes for f in ("email", "name")}
    cts = {b[f]["ct"] for b in boxes for f in ("email", "name")}
    assert len(ivs) == 4 and len(cts) == 4


def test_retry_of_an_append_with_personal_fields_is_recognised(empty_lake: Lake) -> None:
    user = User("u-1")
    user.register("retry@example.org", "Retry Person")
    events = list(user.pending_events)
    assert empty_lake.append("u-1", events, expected_version=0, aggregate_type="User") == 1
    assert empty_lake.append("u-1", events, expected_version=0, aggregate_type="User") == 1
    empty_lake.seal()
    assert empty_lake.append("u-1", events, expected_version=0, aggregate_type="User") == 1
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 1
    other = Event("UserRegistered", {**events[0].data, "profile": {"email": "x@example.org", "name": "Other"}},
                  event_id=events[0].event_id, occurred_at=events[0].occurred_at, schema_version=3)
    with pytest.raises(DuplicateEventError, match="already stored with other content"):
        empty_lake.append("u-1", [other], expected_version=0, aggregate_type="User")


def test_bulk_import_path_encrypts_the_sample_users(empty_lake: Lake) -> None:
    from es_analytics.sample import generate

    generate(empty_lake, events=1_500)
    users = empty_lake.events(types="UserRegistered")
    assert users.height > 10
    profiles = [json.loads(t)["profile"] for t in users["data"]]
    assert all("@example.org" in p["email"] for p in profiles)  # every stored version decrypts and upcasts
    assert set(users["schema_version"].to_list()) == {3}
    assert set(empty_lake.sql("SELECT DISTINCT schema_version AS v FROM events WHERE event_type = "
                              "'UserRegistered'")["v"].to_list()) == {1, 2, 3}
    for profile in profiles[:5]:
        assert files_holding(empty_lake.path, profile["email"]) == []
        assert files_holding(empty_lake.path, profile["name"]) == []


def test_a_stored_v1_event_is_decrypted_before_upcasting(empty_lake: Lake) -> None:
    v1 = Event("UserRegistered", {"id": "u-old", "email": "old@example.org", "name": "Old Shape"},
               schema_version=1, occurred_at=T0)
    empty_lake.append("u-old", [v1], expected_version=0, aggregate_type="User")
    stored = json.loads(raw_data(empty_lake, "u-old")[0])
    assert stored["email"]["$enc"] == "A256GCM"  # v1 paths: top-level fields
    shown = json.loads(empty_lake.events("u-old")["data"][0])
    assert shown["profile"] == {"email": "old@example.org", "name": "Old Shape"}
    empty_lake.forget("u-old")
    assert json.loads(empty_lake.events("u-old")["data"][0])["profile"] == {"email": ERASED, "name": ERASED}


def test_moved_ciphertext_does_not_decrypt(empty_lake: Lake) -> None:
    register(empty_lake, "u-1", "one@example.org", "One Person")
    stored = json.loads(raw_data(empty_lake, "u-1")[0])
    swapped = json.dumps({"userId": "u-1", "profile": {"email": stored["profile"]["name"], "name": "Plain"}},
                         separators=(",", ":"))
    declaration = personal_fields("UserRegistered", 3)
    assert declaration is not None and declaration.subject == "userId"
    with empty_lake._store.hot.write() as con:  # store the envelope under another path, bypassing append
        con.execute("UPDATE events SET data = ? WHERE aggregate_id = 'u-1'", (swapped,))
    with pytest.raises(PrivacyError, match="does not decrypt"):
        empty_lake.events("u-1")


# -- forgetting ----------------------------------------------------------------------------------
def test_forget_shreds_one_subject_everywhere_and_leaves_others(empty_lake: Lake) -> None:
    lake = empty_lake
    repo = Repository(lake, User, snapshot_every=1, keep_snapshots=1)
    alice, bob = User("u-alice"), User("u-bob")
    alice.register("alice.k3j9@example.org", "Alice Kowalczyk-Zed")
    bob.register("bob.p2m8@example.org", "Bob Pemberton-Yu")
    repo.save(alice)
    repo.save(bob)
    lake.seal()  # Alice's registration is sealed in Parquet, her later events stay hot
    alice = repo.get("u-alice")
    alice.suspend("Chargeback dispute", "admin-1")  # type: ignore[union-attr]
    repo.save(alice)  # type: ignore[arg-type]
    assert lake.snapshots.versions("u-alice").height == 1
    assert files_holding(lake.path, "alice.k3j9@example.org") == []  # snapshots hold her state encrypted

    certificate = lake.forget("u-alice", reason="erasure request #17", actor="dpo-1")

    for value in ("alice.k3j9@example.org", "Alice Kowalczyk-Zed"):
        assert files_holding(lake.path, value) == []
    assert certificate["verified"] is True and certificate["scan"]["found"] == []
    assert {"hot.sqlite", "keys.sqlite"} <= set(certificate["scan"]["files"])
    assert any(f.endswith(".parquet") for f in certificate["scan"]["files"])
    assert certificate["events_affected"] == 1 and certificate["aggregates"] == ["u-alice"]
    assert certificate["snapshots_deleted"] >= 1
    assert "Alice" not in json.dumps(certificate)
    shown = json.loads(lake.events("u-alice")["data"][0])
    assert shown["profile"] == {"email": ERASED, "name": ERASED}
    rebuilt = lake.aggregate(User, "u-alice")
    assert rebuilt is not None and rebuilt.email == ERASED and rebuilt.status == "suspended"
    assert repo.get("u-bob").email == "bob.p2m8@example.org"  # type: ignore[union-attr]
    assert lake.snapshots.versions("u-bob").height == 1  # other subjects' snapshots stay
    tomb = lake.events(tombstone_stream("u-alice"))
    assert tomb["event_type"].to_list() == [TOMBSTONE_TYPE]
    assert tomb["position"].item() == certificate["tombstone_position"]
    assert json.loads(tomb["data"].item())["reason"] == "erasure request #17"
    assert json.loads(tomb["metadata"].item())["user_id"] == "dpo-1"


def test_forget_with_unicode_values_and_the_key_bytes(lake_path: Path) -> None:
    keys = FileKeyStore(lake_path.parent / "keys-elsewhere.sqlite")
    lake = Lake.open(lake_path, key_store=keys)
    register(lake, "u-ü", "zoë.ñandú@exämple.org", "Zoë Ñandú 名前")
    key = keys.keys_for(["u-ü"])["u-ü"]
    stored = lambda: b"".join(p.read_bytes() for p in keys.path.parent.glob(keys.path.name + "*"))  # noqa: E731
    with sqlite3.connect(keys.path) as con:
        wrapped = con.execute("SELECT key FROM subject_keys WHERE subject = 'u-ü'").fetchone()[0]
    con.close()
    assert key is not None and key not in stored()  # only its wrapped form is stored
    assert wrapped in stored()  # in the database or its write-ahead log
    certificate = lake.forget("u-ü")
    assert certificate["verified"]
    assert wrapped not in stored()  # overwritten (secure_delete) and the log truncated
    for value in ("zoë.ñandú@exämple.org", "Zoë Ñandú 名前", "名前"):
        assert files_holding(lake_path, value) == []
    assert keys.state("u-ü")[0] == "forgotten"


def test_forget_errors_are_typed_and_change_nothing(empty_lake: Lake) -> None:
    register(empty_lake, "u-1", "e1@example.org", "Err One")
    with pytest.raises(UnknownSubjectError, match="'u-nobody'"):
        empty_lake.forget("u-nobody")
    with pytest.raises(InvalidArgumentError, match="subject_id"):
        empty_lake.forget("")
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 1
    empty_lake.forget("u-1")
    with pytest.raises(SubjectForgottenError, match="'u-1' has been forgotten"):
        empty_lake.forget("u-1")
    later = Event("UserRegistered", {"userId": "u-1", "profile": {"email": "new@example.org", "name": "N"}},
                  schema_version=3)
    with pytest.raises(SubjectForgottenError, match="no new personal data"):
        empty_lake.append("u-1b", [later], expected_version=0, aggregate_type="User")
    missing = Event("UserRegistered", {"profile": {"email": "a@example.org", "name": "A"}}, schema_version=3)
    with pytest.raises(InvalidArgumentError, match="declares its data subject in 'userId'"):
        empty_lake.append("u-2", [missing], expected_version=0, aggregate_type="User")
    assert empty_lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 2  # registration + tombstone


@pytest.mark.parametrize("fail_at", ["delete_key", "mark_forgotten"])
def test_a_crash_during_forget_is_completed_by_a_rerun(
    lake_path: Path, memory_keys: InMemoryKeyStore, fail_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake.open(lake_path, key_store=memory_keys)
    register(lake, "u-1", "crash@example.org", "Crash Person")

    def crash(*args: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(memory_keys, fail_at, crash)
    with pytest.raises(RuntimeError):
        lake.forget("u-1")
    monkeypatch.undo()
    state = memory_keys.state("u-1")[0]
    assert state == ("active" if fail_at == "delete_key" else "shredded")
    tombstones = lake.events(tombstone_stream("u-1"))
    assert tombstones.height == 1  # the tombstone is written before the key goes
    certificate = lake.forget("u-1")
    assert lake.events(tombstone_stream("u-1")).height == 1  # the rerun does not write a second one
    assert certificate["tombstone_position"] == tombstones["position"].item()
    assert certificate["resumed"] is (fail_at == "mark_forgotten")
    assert memory_keys.state("u-1")[0] == "forgotten"
    assert json.loads(lake.events("u-1")["data"][0])["profile"]["email"] == ERASED
    assert files_holding(lake_path, "crash@example.org") == []


def test_declarations_validate_their_input(empty_lake: Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="dotted field path"):
        declare_personal("ContactAdded", ["a..b"], subject="owner")
    with pytest.raises(InvalidArgumentError, match="non-empty list"):
        declare_personal("ContactAdded", "contact", subject="owner")
    with pytest.raises(InvalidArgumentError, match="cannot itself be encrypted"):
        declare_personal("ContactAdded", ["owner"], subject="owner")
    empty_lake.append("c-1", [Event("ContactAdded", {"owner": "p-9", "contact": {"phone": "+44 20 7946 0000"}})],
                      expected_version=0, aggregate_type="Contact")
    assert files_holding(empty_lake.path, "7946") == []
    assert json.loads(empty_lake.events("c-1")["data"][0])["contact"] == {"phone": "+44 20 7946 0000"}
    empty_lake.forget("p-9")
    assert json.loads(empty_lake.events("c-1")["data"][0])["contact"] == ERASED


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(email=st.text(min_size=6, max_size=30).filter(lambda s: s.strip() and "\x00" not in s),
       name=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=6, max_size=30))
def test_property_after_forget_no_file_holds_the_plaintext(tmp_path_factory: pytest.TempPathFactory,
                                                           email: str, name: str) -> None:
    folder = tmp_path_factory.mktemp("lake")
    marker = uuid.uuid4().hex  # makes the values unique, so a hit cannot be a coincidence
    email, name = f"{marker}{email}", f"{name}{marker}"
    with Lake.open(folder) as lake:
        lake.append("c-1", [Event("ContactAdded", {"owner": "p-1", "contact": {"email": email, "name": name}},
                                  occurred_at=T0)], expected_version=0, aggregate_type="Contact")
        if len(email) % 2:
            lake.seal()
        assert json.loads(lake.events("c-1")["data"][0])["contact"] == {"email": email, "name": name}
        lake.forget("p-1")
        assert json.loads(lake.events("c-1")["data"][0])["contact"] == ERASED
    for value in (email, name):
        for form in {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}:
            assert files_holding(folder, form) == []


@pytest.fixture(autouse=True)
def _contact_declaration() -> Iterator[None]:
    declare_personal("ContactAdded", ["contact"], subject="owner")
    yield
    undeclare_personal("ContactAdded")


def test_keys_for_unknown_subjects_are_reported(lake_path: Path) -> None:
    writer_keys = InMemoryKeyStore()
    with Lake.open(lake_path, key_store=writer_keys) as lake:
        register(lake, "u-1", "k@example.org", "Key Person")
    with Lake.open(lake_path, key_store=InMemoryKeyStore()) as lake:
        with pytest.raises(PrivacyError, match="no key for subject 'u-1'"):
            lake.events("u-1")
        assert lake.sql("SELECT count(*) AS n FROM events")["n"].item() == 1  # SQL still works


def test_events_frame_filters_still_apply_after_decryption(empty_lake: Lake) -> None:
    for i in range(3):
        register(empty_lake, f"u-{i}", f"f{i}@example.org", f"Filter {i}")
    later = empty_lake.events(since=datetime.now(timezone.utc) - timedelta(hours=1), types=["UserRegistered"])
    assert later.height == 3
    emails = pl.Series([json.loads(t)["profile"]["email"] for t in later["data"]])
    assert emails.to_list() == ["f0@example.org", "f1@example.org", "f2@example.org"]


def test_forget_removes_derived_copies_and_reports_what_it_cannot_remove(empty_lake: Lake) -> None:
    lake = empty_lake
    register(lake, "u-1", "derived.w4@example.org", "Derived Person")
    cache = lake.path / "projections" / "user_emails" / "part-0.parquet"  # made by older code, in clear
    cache.parent.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u-1"], "email": ["derived.w4@example.org"]}), cache, compression="zstd")
    undeclare_personal("ContactAdded")  # data appended before a declaration exists is stored in clear
    lake.append("c-1", [Event("ContactAdded", {"owner": "u-1", "contact": "Derived Person"})],
                expected_version=0, aggregate_type="Contact")
    declare_personal("ContactAdded", ["contact"], subject="owner")

    certificate = lake.forget("u-1")

    assert not cache.parent.exists()
    assert any("'user_emails'" in r for r in certificate["remedies"])
    assert certificate["verified"] is False  # the clear-text event cannot be shredded, and it says so
    assert {f["path"] for f in certificate["scan"]["found"]} == {"hot.sqlite"}
    assert files_holding(lake.path, "derived.w4@example.org") == []


def test_a_materialised_projection_holds_no_plaintext_and_reads_erased_after_forget(empty_lake: Lake) -> None:
    from es_analytics.projections import StateProjection
    from es_analytics.temporal import Json, Last, Reducers

    emails = StateProjection(
        "privacy_test_user_emails", aggregate_type="User",
        fields=Reducers(email=Last(Json("profile.email"), on="UserRegistered")),
        columns=["aggregate_id", "version", "email"], personal={"email": "profile.email"},
    )
    register(empty_lake, "u-1", "proj.a1@example.org", "Proj One")
    register(empty_lake, "u-2", "proj.b2@example.org", "Proj Two")
    empty_lake.materialize(emails)
    assert dict(empty_lake.project(emails).select("aggregate_id", "email").iter_rows()) == {
        "u-1": "proj.a1@example.org", "u-2": "proj.b2@example.org"}
    assert files_holding(empty_lake.path, "proj.a1@example.org") == []

    certificate = empty_lake.forget("u-1")

    assert certificate["verified"] and certificate["remedies"] == []  # nothing derived held plaintext
    assert dict(empty_lake.project(emails).select("aggregate_id", "email").iter_rows()) == {
        "u-1": ERASED, "u-2": "proj.b2@example.org"}


def test_two_concurrent_forgets_of_one_subject_agree(lake_path: Path) -> None:
    first, second = Lake.open(lake_path), Lake.open(lake_path)  # two handles, as two processes would hold
    register(first, "u-1", "twice.c3@example.org", "Twice Person")
    state = second.key_store.state("u-1")[0]
    assert state == "active"
    # the second handle read the subject as active, then the first one forgets it completely
    a = first.forget("u-1")
    from es_analytics.forgetting import _append_tombstone, subject_events

    class Stale:  # read the tombstone stream just before the other handle wrote to it
        calls = 0

        def events(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
            Stale.calls += 1
            frame = second.events(*args, **kwargs)
            return frame.clear() if Stale.calls == 1 else frame

        def append(self, *args: Any, **kwargs: Any) -> int:
            return second.append(*args, **kwargs)

    position = _append_tombstone(Stale(), "u-1", subject_events(second, "u-1"), None, None)
    assert position == a["tombstone_position"] and second.events(tombstone_stream("u-1")).height == 1
    assert second.key_store.delete_key("u-1", {}) == first.key_store.state("u-1")[1]["key_deleted_at"]


# -- envelopes only the lake makes ----------------------------------------------------------------
FORGED = {"$enc": "A256GCM", "sub": "u-victim", "iv": "AAAAAAAAAAAAAAAA", "ct": "AAAAAAAAAAAAAAAAAAAAAAAA"}


@pytest.mark.parametrize("payload", [
    {"note": FORGED},
    {"deep": [{"x": {"y": FORGED}}]},
    {"$enc": "anything"},
])
def test_a_payload_that_imitates_an_encrypted_field_is_refused_at_append(empty_lake: Lake, payload: dict) -> None:
    register(empty_lake, "u-victim", "victim@example.org", "Victim Person")
    with pytest.raises(InvalidArgumentError, match=r"\$enc"):
        empty_lake.append("x-1", [Event("Noted", payload)], expected_version=0, aggregate_type="Note")
    assert empty_lake.current_version("x-1") == 0
    certificate = empty_lake.forget("u-victim")
    assert certificate["verified"] and not certificate["undecryptable_values"]
    assert empty_lake.events().height == 2  # the registration and the tombstone


@pytest.mark.parametrize("data", [
    json.dumps({"note": FORGED}),
    '{"note": {"\\u0024enc": "A256GCM", "sub": "u-victim", "iv": "AA", "ct": "AA"}}',
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1, "b": 2}}',
    '{"big": ' + "9" * 5000 + "}",
    '{"big": 18446744073709551616}',
])
def test_ingest_applies_the_append_rules_to_payloads(empty_lake: Lake, tmp_path: Path, data: str) -> None:
    from es_analytics.ingest import ingest

    good = {"event_id": "g-1", "event_type": "Noted", "aggregate_type": "Note", "aggregate_id": "n-1",
            "aggregate_version": 1, "occurred_at": "2025-01-01T00:00:00Z", "data": {"ok": 18446744073709551615}}
    bad = {**good, "event_id": "b-1", "aggregate_id": "n-2"}
    line = json.dumps(bad).replace('{"ok": 18446744073709551615}', "DATA").replace('"DATA"', "DATA")
    source = tmp_path / "events.jsonl"
    source.write_text(json.dumps(good) + "\n" + line.replace("DATA", data) + "\n", encoding="utf-8")
    result = ingest(empty_lake, source)
    assert (result.imported, result.rejected) == (1, 1)
    assert result.rejects["line"].to_list() == [2]
    assert empty_lake.events("n-2").height == 0
    with pytest.raises(InvalidArgumentError):  # the same payload is refused by append
        empty_lake.append("n-3", [Event("Noted", data)], expected_version=0, aggregate_type="Note")
    assert json.loads(empty_lake.events("n-1")["data"][0]) == {"ok": 18446744073709551615}


def test_forget_shreds_the_key_even_when_a_ciphertext_is_damaged(lake_path: Path) -> None:
    with Lake.open(lake_path) as lake:
        register(lake, "u-1", "damaged.q3@example.org", "Dana Maged")
        stored = json.loads(raw_data(lake, "u-1")[0])
    ct = stored["profile"]["email"]["ct"]
    stored["profile"]["email"]["ct"] = ("B" if ct[0] != "B" else "C") + ct[1:]  # one flipped ciphertext byte
    with sqlite3.connect(lake_path / "hot.sqlite") as con:  # damage the stored event, bypassing append
        con.execute("UPDATE events SET data = ? WHERE aggregate_id = 'u-1'", (json.dumps(stored, separators=(",", ":")),))
    con.close()
    lake = Lake.open(lake_path)
    certificate = lake.forget("u-1")
    assert lake.key_store.state("u-1")[0] == "forgotten"
    assert certificate["undecryptable_values"] == [f"{lake.events('u-1')['event_id'][0]}:profile.email"]
    assert not certificate["verified"]
    assert any("did not decrypt" in w for w in certificate["warnings"])
    profile = json.loads(lake.events("u-1")["data"][0])["profile"]
    assert profile == {"email": ERASED, "name": ERASED}
    assert lake.events().height == 2
    lake.close()


def test_the_certificate_warns_when_the_subject_id_is_itself_personal(empty_lake: Lake) -> None:
    register(empty_lake, "ada@example.org", "ada.w2@example.org", "Ada Wide")
    certificate = empty_lake.forget("ada@example.org")
    assert certificate["verified"]
    assert any("subject id itself looks like personal data" in w for w in certificate["warnings"])
    register(empty_lake, "u-0f3a", "bo.w2@example.org", "Bo Wide")
    assert empty_lake.forget("u-0f3a")["warnings"] == []


# -- keys wrapped with a master key kept outside the lake ----------------------------------------------
def test_a_copy_of_the_lake_folder_decrypts_nothing_without_its_master_key(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import shutil

    first, other = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("ES_ANALYTICS_MASTER_KEY", base64.b64encode(first).decode())
    with Lake.open(tmp_path / "lake") as lake:
        register(lake, "u-1", "copied.k8@example.org", "Copy Person")
        key = lake.key_store.keys_for(["u-1"])["u-1"]
        assert key is not None and len(key) == 32
    shutil.copytree(tmp_path / "lake", tmp_path / "copy")
    for form in (key, base64.b64encode(key)):
        assert not [p for p in (tmp_path / "copy").rglob("*") if p.is_file() and form in p.read_bytes()]
    monkeypatch.setenv("ES_ANALYTICS_MASTER_KEY", base64.b64encode(other).decode())
    with Lake.open(tmp_path / "copy") as copy:
        with pytest.raises(PrivacyError, match="another master key"):
            copy.events("u-1")
    monkeypatch.setenv("ES_ANALYTICS_MASTER_KEY", base64.b64encode(first).decode())
    with Lake.open(tmp_path / "copy") as copy:
        assert json.loads(copy.events("u-1")["data"][0])["profile"]["email"] == "copied.k8@example.org"


def test_the_master_key_file_is_made_once_outside_the_lake_and_private(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from es_analytics.privacy import master_key

    monkeypatch.delenv("ES_ANALYTICS_MASTER_KEY", raising=False)
    monkeypatch.delenv("ES_ANALYTICS_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with Lake.open(tmp_path / "lake") as lake:
        register(lake, "u-1", "made.once@example.org", "Made Once")
    path = tmp_path / "config" / "es_analytics" / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert master_key() == master_key()  # the same key on every use
    assert not list((tmp_path / "lake").rglob("master.key"))
    monkeypatch.setenv("ES_ANALYTICS_MASTER_KEY", "dG9vIHNob3J0")
    with pytest.raises(PrivacyError, match="not the base64 text of 32 bytes"):
        master_key()


def test_snapshots_of_personal_data_are_encrypted_and_stop_opening_once_the_subject_is_forgotten(
        empty_lake: Lake) -> None:
    lake = empty_lake
    repo = Repository(lake, User, snapshot_every=1, keep_snapshots=1)
    user = User("u-snap")
    user.register("snap.v5@example.org", "Snap Shot")
    repo.save(user)
    with sqlite3.connect(lake.path / "hot.sqlite") as con:
        (state,) = con.execute("SELECT state FROM snapshots WHERE aggregate_id = 'u-snap'").fetchone()
    con.close()
    assert "snap.v5@example.org" not in state and json.loads(state)["subs"] == ["u-snap"]
    best = lake.snapshots.best("u-snap", next(iter(lake.snapshots.versions("u-snap")["fingerprint"])),
                               as_of=None, known_at=None, version=None)
    assert best is not None and "snap.v5@example.org" in best.state  # opened for the fold
    assert repo.get("u-snap").state()["email"] == "snap.v5@example.org"  # type: ignore[union-attr]
    lake.key_store.delete_key("u-snap", {})  # the key alone gone (forget also deletes the snapshots)
    assert lake.snapshots.best("u-snap", best.fingerprint, as_of=None, known_at=None, version=None) is None
    assert repo.get("u-snap").state()["email"] == ERASED  # type: ignore[union-attr]


def test_the_seeds_first_event_is_encrypted_for_its_stream(empty_lake: Lake) -> None:
    """``UserRegistered`` ``{email, name}`` on stream ``user_123`` (the seed's first example) has no subject
    field: the v1 declaration names the stream as its subject."""
    seed = Event("UserRegistered", {"email": "john@example.com", "name": "John Doe"},
                 occurred_at=datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc))
    empty_lake.append("user_123", [seed], expected_version=0, aggregate_type="User")
    stored = json.loads(raw_data(empty_lake, "user_123")[0])
    assert stored["email"]["sub"] == stored["name"]["sub"] == "user_123"
    assert files_holding(empty_lake.path, "john@example.com") == []
    empty_lake.forget("user_123")
    shown = json.loads(empty_lake.events("user_123")["data"][0])
    assert shown["profile"] == {"email": ERASED, "name": ERASED}  # upcast to v3 on the way out
    declare_personal("Noted", ["text"], subject="owner")
    try:
        with pytest.raises(InvalidArgumentError, match="declares its data subject in 'owner'"):
            empty_lake.append("n-1", [Event("Noted", {"text": "hi"})], expected_version=0, aggregate_type="Note")
    finally:
        undeclare_personal("Noted")
