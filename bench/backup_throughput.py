"""Backup engines against ``tar -I zstd`` on the same 1 GiB data dir, in one run.

* archive engine create (``write_archive``, what ``ArchiveEngine.create`` runs:
  tar + multi-threaded zstd, SHA-256 of every file; its fsync is timed apart)
  vs ``tar -I zstd -cf``;
* archive engine restore (``extract_archive``: member checks, extraction,
  every checksum verified) vs ``tar -I zstd -xf`` of the same archive;
  the ``syncfs`` the agent adds before its swap is timed apart;
* restic: the first backup, then a second backup of the unchanged data
  (time and bytes added to the repository).

Floor of the issue: the engine's throughput at least 0.8 of tar's, for
create and for restore. Prints ``SUMMARY backup_throughput: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _harness import temp_dir
from gameplane.agent.backups.archive import write_archive
from gameplane.agent.backups.engine import Progress, Source
from gameplane.agent.backups.extract import extract_archive
from gameplane.agent.backups.records import RecordStore
from gameplane.agent.backups.swap import sync_tree

MiB = 1 << 20
FLOOR = 0.8


def make_data(root: Path, total: int) -> tuple[int, int]:
    """Many small text-like files, some medium and a few large half-random ones."""
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    size = files = 0
    for i in range(12_000):  # ~100 MiB of small files in 120 folders
        d = root / "small" / f"d{i % 120:03d}"
        d.mkdir(parents=True, exist_ok=True)
        body = b" ".join(rng.choices(words, k=rng.randint(100, 1800)))
        (d / f"f{i}.txt").write_bytes(body)
        size, files = size + len(body), files + 1
    (root / "medium").mkdir()
    for i in range(40):  # 4 MiB each: half noise, half repeated text
        body = os.urandom(2 * MiB) + b" ".join(rng.choices(words, k=4000)) * 50
        body = body[:4 * MiB]
        (root / "medium" / f"m{i}.bin").write_bytes(body)
        size, files = size + len(body), files + 1
    large = (total - size) // 3
    for i in range(3):
        with open(root / f"large{i}.dat", "wb") as fh:
            left = large
            while left > 0:
                chunk = os.urandom(MiB) if rng.random() < 0.6 else b"\0" * MiB
                fh.write(chunk[:left])
                left -= len(chunk)
        size, files = size + large, files + 1
    return size, files


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="data dir size (default 1024)")
    parser.add_argument("--reps", type=int, default=2, help="alternating repetitions, best kept")
    parser.add_argument("--no-restic", action="store_true")
    args = parser.parse_args()

    with temp_dir("gameplane-bench-backup-") as work:
        data = work / "data"
        data.mkdir()
        t = time.perf_counter()
        size, files = make_data(data, args.size_mib * MiB)
        print(f"data dir: {size / MiB:.0f} MiB in {files} files (made in {time.perf_counter() - t:.1f}s)")
        store = RecordStore(work / "backups")
        source = Source(data, (".",))
        tar_archive = work / "tar.tar.zst"
        keys = ("tar_c", "eng_c", "fsync", "tar_x", "eng_x", "sync")
        results: dict[str, list[float]] = {k: [] for k in keys}
        store.ensure()
        engine_archive = store.archive_path("bench")
        for rep in range(args.reps):
            results["tar_c"].append(timed(lambda: subprocess.run(
                ["tar", "-I", "zstd", "-cf", str(tar_archive), "-C", str(data), "."], check=True)))
            # What ArchiveEngine.create does, with its fsync timed apart (tar does none).
            with open(engine_archive, "wb") as fh:
                progress = Progress("backup", "b")
                results["eng_c"].append(timed(lambda fh=fh, p=progress: write_archive(fh, source, p)))
                results["fsync"].append(timed(lambda fh=fh: (fh.flush(), os.fsync(fh.fileno()))))
            out = fresh(work / "out-tar")
            results["tar_x"].append(timed(lambda out=out: subprocess.run(
                ["tar", "-I", "zstd", "-xf", str(tar_archive), "-C", str(out)], check=True)))
            out = fresh(work / "out-engine")

            def restore(out: Path = out) -> None:
                with open(store.archive_path("bench"), "rb", buffering=0) as fh:
                    extract_archive(fh, out, Progress("restore", "b"))

            results["eng_x"].append(timed(restore))
            results["sync"].append(timed(lambda out=out: sync_tree(out)))
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()))
        best = {k: min(v) for k, v in results.items()}
        rate = {k: size / MiB / v for k, v in best.items()}
        create_ratio, restore_ratio = rate["eng_c"] / rate["tar_c"], rate["eng_x"] / rate["tar_x"]
        print(f"archive sizes: tar {tar_archive.stat().st_size / MiB:.0f} MiB, "
              f"engine {store.archive_path('bench').stat().st_size / MiB:.0f} MiB")
        print(f"create : tar {rate['tar_c']:.0f} MiB/s, engine {rate['eng_c']:.0f} MiB/s, "
              f"ratio {create_ratio:.2f} (+ fsync of the archive {best['fsync']:.2f}s)")
        print(f"restore: tar {rate['tar_x']:.0f} MiB/s, engine {rate['eng_x']:.0f} MiB/s, "
              f"ratio {restore_ratio:.2f} (+ syncfs before the swap {best['sync']:.2f}s)")
        shutil.rmtree(work / "out-tar", ignore_errors=True)
        shutil.rmtree(work / "out-engine", ignore_errors=True)
        restic = "" if args.no_restic or not shutil.which("restic") else bench_restic(work, data)
        ok = create_ratio >= FLOOR and restore_ratio >= FLOOR
        print(f"SUMMARY backup_throughput: create {create_ratio:.2f}x tar ({rate['eng_c']:.0f} vs "
              f"{rate['tar_c']:.0f} MiB/s), restore {restore_ratio:.2f}x tar ({rate['eng_x']:.0f} vs "
              f"{rate['tar_x']:.0f} MiB/s), floor {FLOOR}: {'PASS' if ok else 'FAIL'}{restic}")
        return 0 if ok else 1


def bench_restic(work: Path, data: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "RESTIC_REPOSITORY": str(work / "repo"),
           "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "cache"), "HOME": str(work)}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    figures = []
    for label in ("first", "second"):
        start = time.perf_counter()
        done = subprocess.run(["restic", "backup", "--json", "."], cwd=data, env=env, check=True,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        summary = next(json.loads(line) for line in done.stdout.splitlines()
                       if '"message_type":"summary"' in line)
        figures.append((seconds, summary["data_added"]))
        print(f"restic {label} backup: {seconds:.2f}s, {summary['data_added'] / MiB:.1f} MiB added")
    (s1, a1), (s2, a2) = figures
    return f"; restic first {s1:.1f}s +{a1 / MiB:.0f} MiB, second (unchanged) {s2:.1f}s +{a2 / 1024:.0f} KiB"


if __name__ == "__main__":
    sys.exit(main())
