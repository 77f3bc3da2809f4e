"""LogWrites on real files and real inotify: which logs were written since the last look."""

from supervisor.parent.log_writes import LogWrites


def test_log_writes_reports_the_logs_written_since_the_last_look(tmp_path):
    # Issue 11: the size check between full rounds looks only at logs that got output.
    writes = LogWrites()
    try:
        logs = {name: tmp_path / f"{name}.log" for name in ("quiet", "chatty", "replaced")}
        for name, path in logs.items():
            path.write_bytes(b"start\n")
            writes.watch(name, str(path), path.stat().st_ino)
        assert writes.take() == set()
        with open(logs["chatty"], "ab") as f:
            for _ in range(1000):
                f.write(b"line\n")
                f.flush()
        assert writes.take() == {"chatty"}
        assert writes.take() == set()  # each write is reported once
        # Replaced by another file: reported, and no longer watched until a stat finds the new inode.
        logs["replaced"].unlink()
        logs["replaced"].write_bytes(b"new\n")
        assert writes.take() == {"replaced"}
        assert writes.unwatched(["quiet", "chatty", "replaced"]) == ["replaced"]
        writes.watch("replaced", str(logs["replaced"]), logs["replaced"].stat().st_ino)
        with open(logs["replaced"], "ab") as f:
            f.write(b"more\n")
        assert writes.take() == {"replaced"}
        writes.keep_only({"quiet"})
        assert writes.unwatched(["quiet", "chatty"]) == ["chatty"]
    finally:
        writes.close()
