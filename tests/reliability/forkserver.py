"""Run ``graft`` commands as fresh processes that a test can SIGKILL at a chosen moment.

Importing graft's stack (torch, open_clip, torchvision, matplotlib) takes 5-10 s
on a busy 2-core machine, several times longer than the tiny builds and
training runs the kill tests interrupt. Exec'ing ``graft`` for each of ~30
runs would spend most of the budget in imports, and random kill times would
mostly land there, where nothing is written. So a server process imports
graft once (nothing else: no torch op runs, no file is opened) and forks one
child per run; the child calls :func:`graft.cli.main`, exactly what the
``graft`` console script does, in its own process group, with its output in
a log file. The server, as the child's parent, kills that group with SIGKILL
at the requested delay and only then reaps it, so a pid is never signalled
after it could have been reused.

Run as a script, this file is the server; :class:`ForkServer` is the client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ("graft.cli", "graft.pipeline.build", "graft.training.trainer")


@dataclass
class RunResult:
    """How one forked run ended."""

    returncode: int  # negative: killed by that signal
    seconds: float  # wall time from fork to exit
    killed: bool  # ended by the requested kill (not by finishing first)
    timed_out: bool  # ended by the safety timeout: the run hung
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ForkServer:
    """Client of a server process (this file run as a script) that forks ``graft`` runs on request."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path):
        self.log = log
        self._err = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if json.loads(ready or "{}").get("ready") is not True:
            self.close()
            raise RuntimeError(f"fork server did not start:\n{log.read_text(errors='replace')}")

    def run(self, argv: list[str], log: Path, kill_after: float | None = None,
            timeout: float = 300.0) -> RunResult:
        """Run ``graft ARGV`` in a forked child; SIGKILL it after ``kill_after`` seconds if still running."""
        request = {"argv": argv, "log": str(log), "kill_after": kill_after, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died:\n{self.log.read_text(errors='replace')}")
        r = json.loads(line)
        return RunResult(returncode=r["returncode"], seconds=r["seconds"], killed=r["killed"],
                         timed_out=r["timed_out"], log=log)

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # EOF: the server exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the server side


def _child(argv: list[str], log: str) -> None:
    """In the forked child: become a process group, send output to ``log``, run the CLI, exit."""
    code = 1
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        from graft.cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report anything, then leave without running the server's code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str], log: str, kill_after: float | None, timeout: float) -> dict:
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(argv, log)
    try:
        os.setpgid(pid, pid)  # also here, so the group exists even if the kill comes before the child's call
    except (PermissionError, ProcessLookupError):
        pass  # the child already did it, or already exited
    deadline = t0 + (kill_after if kill_after is not None else timeout)
    killed = timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            # Not reaped yet, so ``pid`` (and its group id) still belongs to our child: safe to signal.
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
            killed, timed_out = kill_after is not None, kill_after is None
            break
        time.sleep(0.002)
    code = os.waitstatus_to_exitcode(status)
    # It finished on its own in the instant before the kill: not a kill.
    killed = killed and code == -signal.SIGKILL
    return {"returncode": code, "seconds": time.monotonic() - t0, "killed": killed, "timed_out": timed_out}


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(_run(req["argv"], req["log"], req["kill_after"], req["timeout"])), flush=True)


if __name__ == "__main__":
    _serve()
