import json
import logging
import os
import re
import stat

import pytest

from supervisor.common import metadata_store
from supervisor.common.metadata_store import AgentRecord, ExitRecord, MetadataStore, iso_utc


def _record(agent_id="db-shipper", **kw):
    return AgentRecord(id=agent_id, type="filebeat", **kw)


def _corrupt_copies(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f"{name}.corrupt-"))


def test_iso_utc_format():
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1.5) == "1970-01-01T00:00:01.500Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_utc())


def test_creates_directory_with_mode(tmp_path):
    store = MetadataStore(tmp_path / "data" / "metadata")
    assert store.directory.is_dir()
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o750


def test_round_trip(tmp_path):
    store = MetadataStore(tmp_path)
    rec = _record(
        pid=4321,
        create_time=1700000000.25,
        pgid=4321,
        status="running",
        restart_count=2,
        total_restarts=5,
        last_exit=ExitRecord(code=None, signal="SIGKILL", time=iso_utc(), reason="no_heartbeat"),
        operator_stopped=True,
        cpu=12.5,
        memory=1 << 20,
    )
    store.save(rec)
    assert rec.updated_at is not None

    loaded = store.load("db-shipper")
    assert loaded == rec
    assert loaded.last_exit.signal == "SIGKILL"
    assert store.load_all() == {"db-shipper": rec}
    assert stat.S_IMODE(store.path_for("db-shipper").stat().st_mode) == 0o640


def test_save_overwrites_and_leaves_no_temp_files(tmp_path):
    store = MetadataStore(tmp_path)
    for i in range(5):
        store.save(_record(restart_count=i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db-shipper.json"]
    assert store.load("db-shipper").restart_count == 4


def test_save_failure_cleans_up_temp_file(tmp_path, monkeypatch):
    store = MetadataStore(tmp_path)
    store.save(_record(restart_count=1))

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metadata_store.os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.save(_record(restart_count=2))
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["db-shipper.json"]
    assert store.load("db-shipper").restart_count == 1


def test_load_missing_returns_none_and_delete_missing_is_fine(tmp_path):
    store = MetadataStore(tmp_path)
    assert store.load("nobody") is None
    store.delete("nobody")
    store.save(_record())
    store.delete("db-shipper")
    assert store.load("db-shipper") is None
    assert store.load_all() == {}


def test_truncated_file_is_moved_aside_with_warning(tmp_path, caplog):
    store = MetadataStore(tmp_path)
    store.save(_record(pid=99))
    path = store.path_for("db-shipper")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="supervisor.common.metadata_store"):
        assert store.load("db-shipper") is None

    assert not path.exists()
    copies = _corrupt_copies(tmp_path, "db-shipper.json")
    assert len(copies) == 1
    assert re.fullmatch(r"db-shipper\.json\.corrupt-\d{8}T\d{6}Z", copies[0])
    assert (tmp_path / copies[0]).read_bytes() == data[: len(data) // 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and "not valid JSON" in message and copies[0] in message
    # Once moved aside it is simply absent.
    assert store.load_all() == {}


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[1, 2, 3]", "wrong shape"),
        (b'{"id": "db-shipper", "restart_count": "many"}', "restart_count"),
        (b'{"type": "custom"}', "id: Field required"),
    ],
)
def test_bad_content_is_treated_as_absent(tmp_path, caplog, content, reason):
    store = MetadataStore(tmp_path)
    store.path_for("db-shipper").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="supervisor.common.metadata_store"):
        assert store.load_all() == {}
    assert reason in caplog.text
    assert len(_corrupt_copies(tmp_path, "db-shipper.json")) == 1


def test_unreadable_file_is_moved_aside(tmp_path, caplog):
    store = MetadataStore(tmp_path)
    # A directory in place of the file makes the read fail with EISDIR, even as root.
    store.path_for("db-shipper").mkdir()
    with caplog.at_level(logging.WARNING, logger="supervisor.common.metadata_store"):
        assert store.load("db-shipper") is None
    assert "unreadable" in caplog.text
    assert len(_corrupt_copies(tmp_path, "db-shipper.json")) == 1


def test_wrong_id_inside_is_corrupt(tmp_path, caplog):
    store = MetadataStore(tmp_path)
    store.save(_record("other-agent"))
    os.rename(store.path_for("other-agent"), store.path_for("db-shipper"))
    with caplog.at_level(logging.WARNING, logger="supervisor.common.metadata_store"):
        assert store.load("db-shipper") is None
    assert "does not match the file name" in caplog.text
    assert len(_corrupt_copies(tmp_path, "db-shipper.json")) == 1


def test_unknown_keys_are_ignored(tmp_path):
    store = MetadataStore(tmp_path)
    doc = {
        "id": "db-shipper",
        "status": "running",
        "from_the_future": {"x": 1},
        "schema_version": 2,
    }
    store.path_for("db-shipper").write_text(json.dumps(doc))
    rec = store.load("db-shipper")
    assert rec is not None and rec.status == "running" and rec.schema_version == 2
    assert not hasattr(rec, "from_the_future")


@pytest.mark.parametrize(
    "bad", ["", "../etc/passwd", "a/b", ".hidden", "-dash", "x" * 65, "sp ace", "é"]
)
def test_invalid_agent_id_rejected(tmp_path, bad):
    store = MetadataStore(tmp_path)
    with pytest.raises(ValueError):
        store.path_for(bad)
    with pytest.raises(ValueError):
        store.load(bad)
    with pytest.raises(ValueError):
        store.delete(bad)
    with pytest.raises(ValueError):
        store.save(AgentRecord(id=bad))


def test_valid_agent_ids_accepted(tmp_path):
    store = MetadataStore(tmp_path)
    for ok in ["a", "A.b_c-1", "x" * 64]:
        store.save(AgentRecord(id=ok))
    assert set(store.load_all()) == {"a", "A.b_c-1", "x" * 64}


def test_load_all_removes_stale_tmp_files(tmp_path):
    store = MetadataStore(tmp_path)
    store.save(_record())
    (tmp_path / ".db-shipper.abc123.tmp").write_text('{"id": "db-shi')
    (tmp_path / "leftover.tmp").write_text("")
    records = store.load_all()
    assert set(records) == {"db-shipper"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db-shipper.json"]


def test_load_all_skips_foreign_files(tmp_path, caplog):
    store = MetadataStore(tmp_path)
    store.save(_record())
    (tmp_path / "README").write_text("hello")
    (tmp_path / "bad name!.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="supervisor.common.metadata_store"):
        assert set(store.load_all()) == {"db-shipper"}
    assert "not a valid agent id" in caplog.text
    assert (tmp_path / "bad name!.json").exists()


def test_writer_retries_a_failed_write_instead_of_dropping_it(tmp_path):
    """Regression (review): a record whose write failed (disk full) was dropped, losing e.g. an operator stop."""
    from supervisor.parent.metadata_writer import MetadataWriter

    class FlakyStore(MetadataStore):
        fail = 1

        def save(self, record):
            if FlakyStore.fail:
                FlakyStore.fail -= 1
                raise OSError(28, "No space left on device")
            super().save(record)

    store = FlakyStore(tmp_path / "metadata")
    writer = MetadataWriter(store)
    try:
        writer.save(AgentRecord(id="a", status="stopped", operator_stopped=True))
        assert writer.flush(timeout=10)
        assert store.load("a").operator_stopped
        assert writer.failures == 1
    finally:
        writer.close()


def test_wait_written_returns_once_those_agents_are_on_disk(tmp_path):
    """An action's reply waits for its agents' records only: a slow write of another agent does not hold it,
    and a record still in hand is waited for."""
    import threading

    from supervisor.parent.metadata_writer import MetadataWriter

    gate = threading.Event()

    class SlowStore(MetadataStore):
        def save(self, record):
            if record.id == "slow":
                gate.wait(10)
            super().save(record)

    store = SlowStore(tmp_path / "metadata")
    writer = MetadataWriter(store)
    try:
        writer.save(AgentRecord(id="slow", status="running"))
        writer.save(AgentRecord(id="b", status="stopped", operator_stopped=True))
        assert not writer.wait_written(["slow"], timeout=0.2)  # the thread holds it until the gate opens
        gate.set()
        assert writer.wait_written(["b", "slow"], timeout=10)
        assert store.load("b").operator_stopped and store.load("slow").status == "running"
        assert writer.wait_written(["nothing-queued"], timeout=0)
    finally:
        gate.set()
        writer.close()
