import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor.common.pidfile import AlreadyRunning, PidFile


REPO = Path(__file__).resolve().parents[2]


def _python(code, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _finish(proc, timeout=5):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, err


def test_second_pidfile_in_another_process_is_refused(tmp_path):
    path = tmp_path / "agentd.pid"
    with PidFile(path):
        proc = _python(
            f"""
            import sys
            from supervisor.common.pidfile import AlreadyRunning, PidFile
            try:
                PidFile({str(path)!r}).acquire()
            except AlreadyRunning as exc:
                print(exc.pid)
                print(exc)
                sys.exit(3)
            sys.exit(0)
            """
        )
        out, err = _finish(proc)
        assert proc.returncode == 3, err
        pid_line, message = out.strip().splitlines()
        assert int(pid_line) == os.getpid()
        assert message == (
            f"agentd is already running with run_dir {tmp_path} "
            f"(pid {os.getpid()}; lock held on {path})"
        )
        # The holder's file is untouched.
        assert PidFile.read_pid(path) == os.getpid()


def test_lock_held_by_another_process_is_refused_here(tmp_path):
    path = tmp_path / "agentd.pid"
    proc = _python(
        f"""
        import sys
        from supervisor.common.pidfile import PidFile
        pf = PidFile({str(path)!r})
        pf.acquire()
        print("locked", flush=True)
        sys.stdin.read()
        """,
        stdin=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(AlreadyRunning) as info:
            PidFile(path).acquire()
        assert info.value.pid == proc.pid
        assert f"pid {proc.pid}" in str(info.value)
        assert info.value.path == path
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


def test_stale_file_from_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "agentd.pid"
    # A holder killed without cleanup: the file stays, its lock dies with the process.
    proc = _python(
        f"""
        import os
        from supervisor.common.pidfile import PidFile
        PidFile({str(path)!r}).acquire()
        os._exit(0)
        """
    )
    _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert PidFile.read_pid(path) == proc.pid

    with PidFile(path):
        assert PidFile.read_pid(path) == os.getpid()


def test_fd_not_inherited_by_child(tmp_path):
    path = tmp_path / "agentd.pid"
    with PidFile(path):
        # close_fds=False so only close-on-exec can keep the lock fd out of the child.
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False
        )
        try:
            targets = []
            for fd in os.listdir(f"/proc/{child.pid}/fd"):
                try:
                    targets.append(os.readlink(f"/proc/{child.pid}/fd/{fd}"))
                except FileNotFoundError:
                    pass
            assert targets, "could not read the child's fd table"
            assert str(path) not in targets
        finally:
            child.kill()
            child.wait()
