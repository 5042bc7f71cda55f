"""Issue 5, crash safety: a real ``ncli extract`` in another process, killed mid-run.

- SIGINT (Ctrl-C): exit 130, one line ``ncli: error: interrupted``, no file at OUT (an existing
  OUT, with --force, byte-identical), no temporary file left.
- SIGKILL: no file at OUT (an existing one byte-identical); the temporary file may remain, named
  ``.ncli-tmp-<pid>-<hex>-<name>`` (hidden, never at OUT); the next writer in that folder removes
  it (``cleanup_stale_temps``: its pid is gone and no process holds it open).

The first tests start fresh interpreters (``python -m ncli extract``). The 20-in-a-row test
forks its runs from one launcher that has already imported torch (a fresh interpreter costs
about 2 s of imports here), so each run is a separate process executing ``ncli.cli.main()``
exactly as ``python -m ncli`` does, killed by a real signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extract_util import arch, model
from ncli.features import FeatureWriter, write_features
from ncli.outputs import cleanup_stale_temps

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals and fork")

ROWS = 200_000  # with --batch-size 8: several seconds of extraction, far longer than a kill takes
BATCH = "8"
TEMP_RE = re.compile(r"^\.ncli-tmp-(\d+)-[0-9a-f]{8}-out\.h5$")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    data = d / "big.npz"
    np.savez(data, x=rng.normal(size=(ROWS, 12)).astype(np.float32), y=(np.arange(ROWS) % 4).astype(np.int64))
    ck = d / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    return {"data": data, "ck": ck}


def _argv(job, out: Path, *extra) -> list[str]:
    return ["extract", str(job["ck"]), "--arch", arch("Net"), "--data", str(job["data"]), "-o", str(out), "-q", "-b", BATCH, *extra]


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".ncli-tmp-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_temp(folder: Path, pid: int, poll, timeout: float = 60.0) -> Path:
    """Poll until the run's own temporary file exists (writing has begun)."""
    deadline = time.monotonic() + timeout
    prefix = f".ncli-tmp-{pid}-"
    while True:
        mine = [p for p in folder.iterdir() if p.name.startswith(prefix)]
        if mine:
            return mine[0]
        if poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"run {pid} never created its temporary file in {folder}")
        time.sleep(0.002)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


# ---------------------------------------------------------------------------------------
# fresh interpreters
# ---------------------------------------------------------------------------------------


def _start(job, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ncli", *_argv(job, out, *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def test_sigint_leaves_nothing(job, tmp_path):
    out = tmp_path / "out.h5"
    p = _start(job, out)
    _wait_for_temp(tmp_path, p.pid, p.poll)
    time.sleep(0.05)  # writing is under way
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, stderr)
    assert stderr == "ncli: error: interrupted\n" and stdout == ""
    assert not out.exists() and not _temps(tmp_path)


def test_sigkill_keeps_the_old_output_and_the_leftover_is_cleaned(job, tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"the old results")
    p = _start(job, out, "--force")
    tmp = _wait_for_temp(tmp_path, p.pid, p.poll)
    time.sleep(0.05)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the old results"
    assert _temps(tmp_path) == [tmp] and TEMP_RE.match(tmp.name) and TEMP_RE.match(tmp.name).group(1) == str(p.pid)
    # the next writer in this folder removes it before it creates its own
    write_features(tmp_path / "other.h5", {"train": {"features": np.ones((2, 3)), "labels": np.array([0, 1])}}, num_classes=2)
    assert not _temps(tmp_path) and out.read_bytes() == b"the old results"


# ---------------------------------------------------------------------------------------
# 20 kills in a row, forked from a warm launcher
# ---------------------------------------------------------------------------------------

LAUNCHER = r"""
import json, os, sys
import h5py, numpy, torch  # noqa: F401  (imported once, before the forks)
import ncli.cli, ncli.extract.api, ncli.extract.arch, ncli.extract.data, ncli.extract.forms, ncli.extract.loop, ncli.extract.model  # noqa

for line in sys.stdin:
    argv, err = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the run: ncli.cli.main() as `python -m ncli` calls it
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.argv = ["ncli", *argv]
        code = 0
        try:
            ncli.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""

KILLS = 20


def test_kill_mid_run_20_times_in_a_row(job, tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    rnd = random.Random(5)
    out = tmp_path / "out.h5"
    t0 = time.perf_counter()
    leftover = None  # the temporary file of the last SIGKILLed run
    try:
        for i in range(KILLS):
            sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
            existing = i % 4 >= 2  # every other pair: an OUT exists and --force is given
            if existing:
                out.write_bytes(f"old results {i}".encode())
            elif out.exists():
                out.unlink()
            err = tmp_path / f"err{i}.txt"
            launcher.stdin.write(json.dumps([_argv(job, out, *(["--force"] if existing else [])), str(err)]) + "\n")
            launcher.stdin.flush()
            pid = json.loads(launcher.stdout.readline())["pid"]
            tmp = _wait_for_temp(tmp_path, pid, lambda: None if _alive(pid) else "gone")
            if leftover is not None:  # cleaned before this run created its own temporary file
                assert not leftover.exists(), f"run {i}: the leftover {leftover.name} of a killed run is still there"
            time.sleep(rnd.uniform(0.0, 0.3))  # anywhere in the first part of the run
            os.kill(pid, sig)
            code = json.loads(launcher.stdout.readline())["exit"]
            what = f"run {i} ({signal.Signals(sig).name}, {'existing OUT' if existing else 'no OUT'})"
            if existing:
                assert out.read_bytes() == f"old results {i}".encode(), what
            else:
                assert not out.exists(), what
            temps = _temps(tmp_path)
            if sig == signal.SIGINT:
                assert code == 130, (what, code, err.read_text())
                assert err.read_text() == "ncli: error: interrupted\n", (what, err.read_text())
                assert temps == [], (what, temps)
                leftover = None
            else:
                assert code == -signal.SIGKILL, (what, code, err.read_text())
                assert temps == [tmp] and TEMP_RE.match(tmp.name).group(1) == str(pid), (what, temps)
                leftover = tmp
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=60)
    elapsed = time.perf_counter() - t0
    print(f"\n{KILLS} kills in a row: {elapsed:.1f} s ({elapsed / KILLS:.2f} s per run)")
    assert cleanup_stale_temps(tmp_path) == ([leftover] if leftover else [])
    assert not _temps(tmp_path)


# ---------------------------------------------------------------------------------------
# cleanup_stale_temps
# ---------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_cleanup_removes_only_leftovers_of_dead_processes(tmp_path):
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".ncli-tmp-{dead}-0123abcd-out.h5": False,  # a killed run's: removed
            f".ncli-tmp-{os.getpid()}-0123abcd-out.h5": True,  # this process's own
            f".ncli-tmp-{sleeper.pid}-0123abcd-out.h5": True,  # a live process's
            f".ncli-tmp-{dead}-notahex0-out.h5": True,  # not our pattern
            ".ncli-tmp-out.h5.rank0-of-2.shard.h5": True,  # a torchrun shard: not our pattern
            f"ncli-tmp-{dead}-0123abcd-out.h5": True,
            "out.h5": True,
        }
        for n in names:
            (tmp_path / n).write_bytes(b"x")
        (tmp_path / f".ncli-tmp-{dead}-0123abcd-dir.h5").mkdir()  # not a file
        os.symlink(tmp_path / "out.h5", tmp_path / f".ncli-tmp-{dead}-0123abcd-link.h5")  # not a file
        removed = cleanup_stale_temps(tmp_path)
        assert removed == [tmp_path / f".ncli-tmp-{dead}-0123abcd-out.h5"]
        for n, kept in names.items():
            assert (tmp_path / n).exists() == kept, n
        assert (tmp_path / f".ncli-tmp-{dead}-0123abcd-dir.h5").is_dir()
        assert (tmp_path / f".ncli-tmp-{dead}-0123abcd-link.h5").is_symlink()
        assert cleanup_stale_temps(tmp_path / "missing") == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_cleanup_keeps_a_file_an_hdf5_writer_holds_open(tmp_path):
    """A pid that is not alive here (e.g. a writer on another host sharing the folder) does not
    make a file stale while some process still holds it open for writing (HDF5's lock)."""
    name = tmp_path / f".ncli-tmp-{_dead_pid()}-0123abcd-out.h5"
    code = (
        "import h5py, sys, time; f = h5py.File(sys.argv[1], 'w'); f['x'] = [1]; f.flush(); "
        "print('open', flush=True); time.sleep(60)"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(name)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
            pytest.skip("HDF5 file locking is off")
        assert cleanup_stale_temps(tmp_path) == [] and name.exists()
    finally:
        writer.kill()
        writer.wait()
    assert cleanup_stale_temps(tmp_path) == [name] and not name.exists()


def test_writer_cleans_before_creating_its_own_temp(tmp_path):
    stale = tmp_path / f".ncli-tmp-{_dead_pid()}-0123abcd-feat.h5"
    stale.write_bytes(b"half a file")
    with FeatureWriter(tmp_path / "feat.h5", num_classes=2) as w:
        assert not stale.exists()
        assert [p.name for p in _temps(tmp_path)] == [w.tmp.name]
        w.append("train", features=np.ones((2, 3)), labels=np.array([0, 1]))
    assert not _temps(tmp_path) and (tmp_path / "feat.h5").exists()


# ---------------------------------------------------------------------------------------
# Ctrl-C anywhere in the main thread: the writer thread still stops, the error is "interrupted"
# ---------------------------------------------------------------------------------------


def test_interrupt_at_any_point_of_a_put_never_hangs_the_writer_thread():
    """KeyboardInterrupt can strike between any two bytecodes of the main thread. With a
    queue.Queue it could strike inside the queue's own code right after it took its lock:
    the lock stayed held and cancelling the writer thread hung for ever (about one Ctrl-C in
    150 in the kill loop above). Here: many interrupts at random points of a stream of puts."""
    import threading

    from ncli.extract.sink import Sink

    class SlowWriter:
        def append(self, *args, **kwargs):
            time.sleep(0.0002)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    rnd = random.Random(0)
    H, y = np.ones((2, 3)), np.zeros(2, np.int64)
    try:
        for trial in range(300):
            sink = Sink(SlowWriter(), np.eye(3), None, flush_rows=1, maxsize=2)
            sink.start()
            # the timer is armed inside the block: the interrupt can only strike in there (armed
            # just before it, a thread switch could delay the main thread past the alarm and the
            # interrupt escaped the test, stopping the whole pytest run)
            with pytest.raises(KeyboardInterrupt):  # nothing else (e.g. "release unlocked lock")
                signal.setitimer(signal.ITIMER_REAL, rnd.uniform(0.0005, 0.005))
                while True:
                    sink.put("train", features=H, labels=y, logits=H, index=y, layers={})
            stopper = threading.Thread(target=sink.cancel, daemon=True)
            stopper.start()
            stopper.join(5)
            assert not stopper.is_alive(), f"trial {trial}: cancelling the writer thread hangs"
            assert not sink.is_alive()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_an_interrupt_wrapped_by_python_is_still_an_interrupt():
    """Ctrl-C during an import can surface as RuntimeError("Error calling __set_name__ ...")
    caused by the KeyboardInterrupt: still exit 130 "interrupted", not an internal error."""
    import typer

    from ncli.cli import reports_errors

    @reports_errors
    def command():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == 130


def test_a_swallowed_interrupt_is_raised_again():
    """A KeyboardInterrupt lost where Python only prints "Exception ignored" (a __del__ run by
    the garbage collector) is raised again at the next check: the run stops, no file is
    committed."""
    from ncli.extract.interrupt import InterruptGuard

    class Finalised:
        def __del__(self):
            try:
                signal.raise_signal(signal.SIGINT)  # the handler raises here...
            except KeyboardInterrupt:
                pass  # ...and, as in a __del__, the exception goes nowhere

    class Swallowed:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # raised in a __del__: "Exception ignored"

    before, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    seen = []
    sys.unraisablehook = seen.append
    try:
        with InterruptGuard() as guard:
            guard.check()  # nothing yet
            Finalised()  # collected at once
            with pytest.raises(KeyboardInterrupt):
                guard.check()
        with InterruptGuard() as guard:
            Swallowed()
            with pytest.raises(KeyboardInterrupt):
                guard.check()
        assert signal.getsignal(signal.SIGINT) is before and sys.unraisablehook == seen.append
    finally:
        sys.unraisablehook = hook
    assert seen == []  # the swallowed interrupt is not reported: check() raised it


def test_the_interrupt_guard_leaves_an_ignored_sigint_ignored():
    from ncli.extract.interrupt import InterruptGuard

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard() as guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            guard.check()
    finally:
        signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------------------------------
# Ctrl-C at any moment of the process's life (issue 15): one line, exit 130
# ---------------------------------------------------------------------------------------

# Runs `python -m ncli ...` and sends itself SIGINT at a chosen moment: when a given module is
# first imported (start-up, before the command line is parsed; inside the command), or at exit.
AT_MOMENT = r"""
import atexit, importlib.abc, os, runpy, signal, sys, time
moment = sys.argv.pop(1)
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == moment:
            os.kill(os.getpid(), signal.SIGINT)
        return None
if moment == "exit":
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))
else:
    sys.meta_path.insert(0, Finder())
sys.argv = ["ncli", *sys.argv[1:]]
runpy.run_module("ncli", run_name="__main__", alter_sys=True)
"""

FEATURES = REPO / "fixtures" / "features" / "mlp_epoch0300.h5"
MOMENTS = [
    ("typer", ["measure", str(FEATURES), "--json"]),  # start-up: the command line's imports
    ("numpy", ["measure", str(FEATURES), "--json"]),
    ("ncli.measure.engine", ["measure", str(FEATURES), "--json"]),  # inside the command
    ("rich.table", ["measure", str(FEATURES)]),  # drawing the table
    ("exit", ["measure", str(FEATURES), "--json"]),  # after the output is written
    ("ncli.compare.table", ["compare", str(FEATURES), "--json"]),
    ("exit", ["compare", str(FEATURES), "--csv"]),
]


@pytest.mark.parametrize("moment, argv", MOMENTS, ids=[f"{m}-{a[0]}" for m, a in MOMENTS])
def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path, moment, argv):
    done = subprocess.run(
        [sys.executable, "-c", AT_MOMENT, moment, *argv], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr == "ncli: error: interrupted\n", done.stderr
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_extract_imports_torch_leaves_nothing(job, tmp_path):
    out = tmp_path / "out.h5"
    done = subprocess.run(
        [sys.executable, "-c", AT_MOMENT, "torch", *_argv(job, out)], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 130 and done.stderr == "ncli: error: interrupted\n", (done.returncode, done.stderr)
    assert not out.exists() and not _temps(tmp_path)


def test_an_ignored_sigint_stays_ignored():
    """ncli run with SIGINT ignored (nohup, a background job) does not start handling it."""
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); from ncli import interrupts; "
        "interrupts.install(); sys.exit(0 if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


# ---------------------------------------------------------------------------------------
# a full disk (issue 15): exit 5, one line naming the output, the old output intact
# ---------------------------------------------------------------------------------------

# Run inside a private mount namespace (unshare -rm): a tmpfs of a few MB as the output folder.
ON_A_SMALL_DISK = r"""
import hashlib, json, os, subprocess, sys
folder, size, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], check=True)
with open(os.path.join(folder, "old.out"), "wb") as f:
    f.write(b"the old results")
done = subprocess.run([sys.executable, "-m", "ncli", *argv], capture_output=True, text=True)
files = {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest() for name in os.listdir(folder)}
print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "files": files}))
"""
OLD = hashlib.sha256(b"the old results").hexdigest()


def _small_disk_available() -> bool:
    import shutil

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def _on_a_full_disk(tmp_path: Path, size: str, limit_bytes: int, argv: list[str]) -> dict:
    """Run ``ncli argv`` (``{out}`` in it: a folder that fills up) with an existing output
    ``old.out`` there: a small tmpfs where one can be made, else RLIMIT_FSIZE (EFBIG)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if _small_disk_available():
        args = [a.replace("{out}", str(folder)) for a in argv]
        done = subprocess.run(["unshare", "-rm", sys.executable, "-c", ON_A_SMALL_DISK, str(folder), size, *args],
                              capture_output=True, text=True, env=_env(), timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    (folder / "old.out").write_bytes(b"the old results")
    args = [a.replace("{out}", str(folder)) for a in argv]
    done = subprocess.run([sys.executable, "-m", "ncli", *args], capture_output=True, text=True, env=_env(), preexec_fn=limit, timeout=600)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return {"rc": done.returncode, "stderr": done.stderr, "files": files}


def _check_full_disk(result: dict, out_name: str) -> None:
    assert result["rc"] == 5, result
    assert result["stderr"].count("\n") == 1 and result["stderr"].startswith("ncli: error: "), result["stderr"]
    assert out_name in result["stderr"]
    assert "no space left on device" in result["stderr"] or "file too large" in result["stderr"]
    assert result["files"] == {"old.out": OLD}  # no temporary file left, the old output unchanged


def test_extract_onto_a_full_disk(job, tmp_path):
    argv = ["extract", str(job["ck"]), "--arch", arch("Net"), "--data", str(job["data"]), "-o", "{out}/old.out",
            "--force", "-q", "-b", "512"]
    _check_full_disk(_on_a_full_disk(tmp_path, "2m", 2 << 20, argv), "old.out")


def test_compare_plot_onto_a_full_disk(tmp_path):
    pytest.importorskip("matplotlib")
    argv = ["compare", str(FEATURES), "--plot", "{out}/old.out.png"]
    result = _on_a_full_disk(tmp_path, "24k", 24 << 10, argv)
    _check_full_disk(result, "old.out.png")


@pytest.mark.parametrize(
    "raised, code, words",
    [
        (MemoryError("Unable to allocate 8.00 TiB"), 5, "out of memory (Unable to allocate 8.00 TiB)"),
        (OSError(28, "No space left on device"), 5, "cannot write: no space left on device"),
        (RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = 'No space left')"), 1, "internal error"),
        (PermissionError(13, "Permission denied", "/data/run.h5"), 3, "/data/run.h5: Permission denied"),
        (OSError(5, "Input/output error"), 1, "internal error: OSError"),
    ],
)
def test_the_error_policy_for_what_is_not_ncli_error(capsys, raised, code, words):
    """Running out of memory or disk is the environment (5); an OSError naming a file is that
    file's error (3); anything else stays an internal error (1), one line each."""
    import typer

    from ncli.cli import reports_errors

    @reports_errors
    def command():
        raise raised

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncli: error: ") and words in err, err
