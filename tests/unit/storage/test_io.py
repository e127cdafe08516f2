"""Atomic outputs: a reader never sees nothing or half of a folder, and a killed writer's leftovers are undone."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from multimodal.storage.io import atomic_dir, recover, write_csv_atomic, write_text_atomic

FILES = 1500  # enough that deleting a folder takes long enough for a watcher to see the gap


def fill(folder: Path, tag: str) -> None:
    for i in range(FILES):
        (folder / f"{i:05d}.txt").write_text(tag)


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("unprintable")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_swapped_folder_is_always_the_old_or_the_new_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        fill(tmp, "0")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not target.exists():
                seen.append("missing")
            elif not (target / f"{FILES - 1:05d}.txt").exists():
                seen.append("partial")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(1, 6):
            with atomic_dir(target) as tmp:
                fill(tmp, str(round_))
    finally:
        stop.set()
        watcher.join()
    assert seen == []
    assert (target / "00000.txt").read_text() == "5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or aside copy left


def test_a_failing_block_leaves_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_writer_leaves_the_old_output_and_the_next_write_removes_its_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    code = ("import sys, time; from multimodal.storage.io import atomic_dir\n"
            f"with atomic_dir({str(target)!r}) as tmp:\n"
            "    (tmp / 'a').write_text('half'); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".out.tmp-{child.pid}-")
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_aside_copy_of_a_writer_killed_between_the_renames_is_put_back(tmp_path: Path) -> None:
    aside = tmp_path / f".out.old-{dead_pid()}-x" / "out"
    aside.mkdir(parents=True)
    (aside / "a").write_text("old")
    recover(tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_aside_copy_is_dropped_when_the_new_output_is_in_place(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / f".out.old-{dead_pid()}-x" / "out").mkdir(parents=True)
    recover(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_live_writers_temporary_folder_is_left_alone(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        recover(tmp_path / "out")  # as a second writer starting now would
        assert tmp.exists()


def test_files_are_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_csv_atomic(path, pd.DataFrame({"a": [1, 2]}))
    assert path.read_text() == "a\n1\n2\n"
    with pytest.raises(ValueError, match="unprintable"):  # fails after the header and the first row
        write_csv_atomic(path, pd.DataFrame({"a": ["1", Unprintable()]}))
    assert path.read_text() == "a\n1\n2\n"
    write_text_atomic(path, "x")
    assert path.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
