"""The CPU one embedded row costs (the listener's and PostgreSQL's), by batch size and
concurrency, for this checkout and for earlier revisions checked out beside it, each with
TEI's protocol and the OpenAI one, in one run, interleaved: a `study-embed drain` of ROWS new
rows against a zero-cost loopback server, no vector index (what is left is the pipeline's own
work: claim, HTTP, JSON, complete, triggers).

    .venv/bin/python bench/cpu_per_row.py [--rows 20000] [--configs 100x1,200x2,500x2,500x4]
                                           [--baseline 6c0db04,949cdd2] [--repeats 2]

Each revision gets a throwaway cluster of its own, migrated by its own code (`git archive` of its
glue/ and db/ into a temporary directory, run with this checkout's virtualenv).  PostgreSQL's CPU
is the cluster's (the postmaster and every backend it reaped); the listener's, the drain
process's.  A benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from common import ROOT, fresh_rows, settled_cluster_cpu

from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.localdb import Cluster, scratch_cluster

# the code #26 was filed against, and the revision before the per-row helpers were inlined
# (database and listener side, BENCHMARKS.md)
BASELINES = ("6c0db04", "949cdd2")
NO_TRIO = "import sys; sys.modules['trio'] = None; from study_embed.cli import main; "


def checkout(rev: str, into: Path) -> Path:
    """glue/ and db/ of `rev`, extracted under `into`; the directory to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "glue", "db"],
        capture_output=True,
        check=True,
    ).stdout
    tar = into / "code.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "glue"


@contextlib.contextmanager
def database(code: Path) -> Iterator[tuple[Cluster, str, dict]]:
    """A throwaway cluster, its database migrated by the code at `code`; the environment that
    runs that code."""
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT / 'glue'}"}
    with scratch_cluster() as (cluster, url):
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from study_embed.migrate import Migrator; "
                "Migrator(sys.argv[1], cron=False, log=lambda m: None).run()",
                url,
            ],
            env=env,
            check=True,
        )
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("DROP INDEX study_questions_embedding_hnsw")
            # autovacuum off: the VACUUM of what each drain left is measured after it, for every
            # revision alike, instead of landing in one drain's window and not another's
            c.execute("ALTER SYSTEM SET autovacuum = off")
            c.execute("SELECT pg_reload_conf()")
        yield cluster, url, env


def drain_once(
    cluster: Cluster,
    url: str,
    env: dict,
    server: EmbedServer,
    batch: int,
    conc: int,
    rows: int,
    api: str = "tei",
    max_inputs: int | None = None,
) -> dict:
    fresh_rows(url, rows)
    pg0 = settled_cluster_cpu(cluster)
    t0 = time.monotonic()
    p = subprocess.Popen(
        # trio kept out, as from the listener's image: this virtualenv has it (selenium's), and
        # httpcore imports it whenever it is installed (encode/httpcore#692), 0.05 CPU s a start
        [sys.executable, "-c", NO_TRIO + "sys.exit(main(['drain']))"],
        env={
            **env,
            "DATABASE_URL": url,
            "EMBEDDING_URL": server.url,
            "EMBEDDING_API": api,
            "LOG_LEVEL": "WARNING",
            "BATCH_SIZE": str(batch),
            "CONCURRENCY": str(conc),
        }
        | ({"EMBEDDING_MAX_INPUTS": str(max_inputs)} if max_inputs else {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"drain failed:\n{p.stderr.read().decode() if p.stderr else ''}")
    pg1 = settled_cluster_cpu(cluster)
    listener_s = usage.ru_utime + usage.ru_stime
    if not rows:  # a drain with nothing to do: what a start costs
        return {"listener_s": listener_s}
    # what the drain left for VACUUM (its dead row versions and index entries), apart
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM study_questions")
    vacuum = settled_cluster_cpu(cluster) - pg1
    return {
        "rows_per_s": rows / wall,
        "listener_ms": listener_s * 1000 / rows,
        "pg_ms": (pg1 - pg0) * 1000 / rows,
        "vacuum_ms": vacuum * 1000 / rows,
    }


def run(
    rows: int, configs: list[tuple[int, int]], baselines: Sequence[str], repeats: int, log
) -> dict | None:
    """{"by_batch": {revision: {"BxC": {figure: median}}}, "listener_start_s": {revision:
    the CPU seconds of a drain with nothing to do (imports, connections, checks)}}, each baseline
    that can be checked out beside this checkout; None when none can (a shallow clone)."""
    server = EmbedServer(dim=1024)
    server.constant = True
    tmp = Path(tempfile.mkdtemp(prefix="study-embed-baseline-"))
    try:
        codes: dict[str, Path] = {}
        for rev in baselines:
            try:
                (tmp / rev).mkdir()
                codes[f"before ({rev})"] = checkout(rev, tmp / rev)
            except subprocess.CalledProcessError:
                log(f"cpu per row: revision {rev} is not in this clone: left out")
        if not codes:
            return None
        codes["now"] = ROOT / "glue"
        # each revision with TEI's protocol (JSON numbers) and the OpenAI one (JSON numbers
        # before, base64 now), each with its own request size (32 texts before; now 32 with
        # TEI's protocol, 128 with the OpenAI one)
        variants = [
            (f"{name}, {api}", name, api, None) for name in codes for api in ("tei", "openai")
        ]
        # and this checkout asking for a batch of 200 in one request, where a server takes it
        variants.append(("now, openai, 200 a request", "now", "openai", 200))
        out: dict = {label: {} for label, *_ in variants}
        start: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            dbs = {name: stack.enter_context(database(code)) for name, code in codes.items()}
            for name, (cluster, url, env) in dbs.items():
                start[name] = statistics.median(
                    drain_once(cluster, url, env, server, 100, 1, 0)["listener_s"] for _ in range(3)
                )
                log(f"cpu per row, {name}: a drain with nothing to do, {start[name]:.2f} CPU s")
            # one drain of each column, not counted: the first drain of a run cost more in every
            # column (session 15: 0.240 ms a row at 100 x 1 measured first, 0.223 and 0.198 after
            # 200 x 2; 6c0db04 0.474, then 0.459 and 0.462)
            for _, name, api, inputs in variants:
                cluster, url, env = dbs[name]
                drain_once(cluster, url, env, server, *configs[0], rows, api, inputs)
            log("cpu per row: one drain of each column done, not counted")
            for batch, conc in configs:
                runs: dict[str, list[dict]] = {label: [] for label, *_ in variants}
                for _ in range(repeats):
                    for label, name, api, inputs in variants:  # interleaved
                        cluster, url, env = dbs[name]
                        runs[label].append(
                            drain_once(cluster, url, env, server, batch, conc, rows, api, inputs)
                        )
                for label, rs in runs.items():
                    fig = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    out[label][f"{batch}x{conc}"] = fig
                    totals = sorted(r["listener_ms"] + r["pg_ms"] for r in rs)
                    log(
                        f"cpu per row, {label}, batch {batch} x {conc}: "
                        f"{fig['rows_per_s']:.0f} rows/s, listener {fig['listener_ms']:.3f} ms, "
                        f"PostgreSQL {fig['pg_ms']:.3f} ms (totals {totals[0]:.3f}-"
                        f"{totals[-1]:.3f}), its VACUUM {fig['vacuum_ms']:.3f} ms"
                    )
        return {"by_batch": out, "listener_start_s": start}
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(result: dict) -> str:
    out = result["by_batch"]
    names = list(out)
    lines = [
        "CPU per embedded row, ms (listener + PostgreSQL = total; then the VACUUM of what the "
        "drain left), zero-cost server, no vector index",
        f"{'batch x conc':<13}" + "".join(f"{n:>44}" for n in names),
    ]
    for cfg in out[names[0]]:
        cells = []
        for n in names:
            f = out[n][cfg]
            cells.append(
                f"{f['listener_ms']:.3f} + {f['pg_ms']:.3f} = {f['listener_ms'] + f['pg_ms']:.3f}"
                f" ({f['rows_per_s']:.0f}/s; {f['vacuum_ms']:.3f})"
            )
        lines.append(f"{cfg:<13}" + "".join(f"{c:>44}" for c in cells))
    lines.append(
        "a drain with nothing to do, listener CPU s: "
        + ", ".join(f"{n} {v:.2f}" for n, v in result["listener_start_s"].items())
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--configs", default="100x1,200x2,500x2,500x4")
    ap.add_argument("--baseline", default=",".join(BASELINES), help="revisions, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    out = run(
        args.rows, configs, args.baseline.split(","), args.repeats, lambda m: print(m, flush=True)
    )
    if out:
        print(table(out))


if __name__ == "__main__":
    main()
