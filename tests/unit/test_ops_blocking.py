"""Which handler calls leave the trio thread (offload.py, SPEC 6): handlers called
in-process over a tmp source, with the Offloader's worker entry point spied on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import pytest
import trio

from fusemount.view.live import LiveSubtree
from fusemount.view.ops import Ops
from tests.support.ops import CTX, make_ops


def _spied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Ops, LiveSubtree, list[str]]:
    ops, live = make_ops(tmp_path)
    offloaded: list[str] = []
    real_call = ops.offloader.call

    async def call(subtree: LiveSubtree, fn: Callable[..., object], *args: object,
                   **kwargs: object) -> object:
        offloaded.append(getattr(fn, "__name__", repr(fn)))
        return await real_call(subtree, fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ops.offloader, "call", call)
    return ops, live, offloaded


def test_fsync_and_writes_on_o_sync_handles_run_in_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "f").write_text("x")
    ops, live, offloaded = _spied(tmp_path, monkeypatch)

    async def body() -> None:
        entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"f", CTX)
        plain = await ops.open(entry.st_ino, pyfuse3.FlagT(os.O_WRONLY), CTX)
        synced = await ops.open(entry.st_ino, pyfuse3.FlagT(os.O_WRONLY | os.O_SYNC), CTX)
        assert offloaded == []  # opens without a lease conflict stay inline
        await ops.write(plain.fh, 0, b"a")
        assert offloaded == []
        await ops.write(synced.fh, 1, b"b")
        assert offloaded == ["write"]
        await ops.fsync(plain.fh, False)
        await ops.fsync(plain.fh, True)
        assert offloaded == ["write", "fsync", "fdatasync"]
        for fh in (plain.fh, synced.fh):
            await ops.release(fh)

    trio.run(body)
    assert (tmp_path / "f").read_bytes() == b"ab"
    live.close()


@pytest.mark.parametrize("size", [4096, 4 << 20])
def test_truncating_opens_go_to_a_worker_only_for_large_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int,
) -> None:
    (tmp_path / "f").write_bytes(os.urandom(size))
    ops, live, offloaded = _spied(tmp_path, monkeypatch)

    async def body() -> None:
        entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"f", CTX)
        info = await ops.open(entry.st_ino, pyfuse3.FlagT(os.O_WRONLY | os.O_TRUNC), CTX)
        await ops.release(info.fh)

    trio.run(body)
    assert offloaded == (["reopen"] if size > 1 << 20 else [])
    assert (tmp_path / "f").stat().st_size == 0
    live.close()


def test_the_last_close_of_a_large_unlinked_file_runs_in_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "big").write_bytes(os.urandom(4 << 20))
    ops, live = make_ops(tmp_path)
    closed_in: list[bool] = []
    real_close = ops.offloader.close

    async def close(subtree: LiveSubtree, fds: tuple[int, ...]) -> None:
        closed_in.append(True)
        await real_close(subtree, fds)

    monkeypatch.setattr(ops.offloader, "close", close)

    async def body() -> None:
        entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"big", CTX)
        info = await ops.open(entry.st_ino, pyfuse3.FlagT(os.O_RDONLY), CTX)
        await ops.unlink(pyfuse3.InodeT(live.root_ino), pyfuse3.FileNameT(b"big"), CTX)
        assert closed_in == []  # still open: nothing freed yet
        await ops.release(info.fh)

    trio.run(body)
    assert closed_in == [True]
    live.close()
