"""Shared by the benchmark scripts: a throwaway cluster and realistic question rows (the rows
come from the project's one loader, study_embed_dev.rows)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psycopg

from study_embed_dev.localdb import free_port, scratch_database
from study_embed_dev.rows import GENERATED_QUESTIONS as LOAD
from study_embed_dev.rows import GENERATED_QUESTIONS_MANY_USERS as LOAD_MANY
from study_embed_dev.rows import add_topic, add_user, add_users

__all__ = [
    "LOAD",
    "LOAD_MANY",
    "ROOT",
    "add_users",
    "cluster_cpu",
    "free_port",
    "fresh_rows",
    "print_figures",
    "process_cpu",
    "scratch_database",
    "stamped_log",
]

ROOT = Path(__file__).resolve().parents[1]


def fresh_rows(url: str, n: int) -> None:
    """The bank emptied, then `n` new questions of one user, none embedded yet, analyzed."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
        uid = add_user(c, f"bench-{time.time_ns()}@example.com")
        tid = add_topic(c, uid, "t")
        c.execute(LOAD, {"uid": uid, "tid": tid, "n": n})
        c.execute("VACUUM ANALYZE study_questions")


CLK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int, reaped: bool = True) -> float:
    """CPU seconds a process has used (utime + stime) and, with `reaped`, its ended children
    (cutime + cstime); 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + (cutime + cstime if reaped else 0)) / CLK


def cluster_cpu(cluster, live_children: bool = False) -> float:
    """CPU seconds of a cluster so far: the postmaster and every backend it has reaped, and
    with `live_children` its processes still running (taken before the backends end)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    total = process_cpu(postmaster)
    if live_children:
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        total += sum(process_cpu(int(c), reaped=False) for c in children)
    return total


def settled_cluster_cpu(cluster) -> float:
    """cluster_cpu() once the postmaster has reaped the backends that just ended.  A backend's
    CPU reaches the postmaster's count only when it is reaped: read at once, the CPU of the
    backend that had just loaded a drain's rows (its INSERTs and VACUUM ANALYZE) was counted as
    the drain's, about 0.03 ms per row (BENCHMARKS.md, "A measurement fix")."""
    time.sleep(0.3)
    return cluster_cpu(cluster)


def stamped_log():
    """A log for a bench run alone: each line printed at once, after the seconds since now."""
    t0 = time.monotonic()
    return lambda m: print(f"[{time.monotonic() - t0:6.0f}s] {m}", flush=True)


def print_figures(out: dict, path: str | None) -> None:
    """A bench's figures as JSON on stdout, and in the file `path` when one is given."""
    print(json.dumps(out, indent=2, default=str))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2, default=str)
