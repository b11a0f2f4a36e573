"""Stores on S3-compatible object storage (issue 14): a real S3 API (moto's server) on 127.0.0.1,
reached through s3fs with the endpoint and credentials in the environment, as a user sets them.

A store converted from a real file (acac frames from ../shared/data, written in small chunks so
a small store has several blocks) is pushed, checked, queried and trained from at its ``s3://``
URL; a push killed midway leaves a URL every reader refuses until the same push is run again;
the chunk cache keeps later epochs from fetching chunks again (counted at the server's door).
"""

from __future__ import annotations

import shutil
import signal
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from ase.io import read, write

from mfdata.convert import convert
from mfdata.files import KILL_AT
from mfdata.loading.datamodule import FidelityDataModule
from mfdata.loading.zarr_dataset import ZarrFidelityDataset
from mfdata.resources import example_file
from mfdata.split import make_split
from mfdata.store import zarr_store
from mfdata.store.manifest import StoreError
from mfdata.store.push import push
from mfdata.store.store import Store
from tests.conftest import run_cli
from tests.s3_server import LocalS3

BUCKET = "mfkit-test"
LEVEL = "pbe-d3-def2svp"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server behind a counting proxy, on 127.0.0.1; its settings in the
    environment (inherited by the CLI's processes); one bucket."""
    server = LocalS3().start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in server.env().items():
                mp.setenv(key, value)
            fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory, shared) -> Path:
    """12 acac frames (PBE+D3 energies and forces), in chunks of 3 structures and 45 atoms
    (4 blocks), split 8/2/2, with statistics."""
    root = tmp_path_factory.mktemp("s3_store")
    write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":12"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFKIT_HOME", str(root / "home"))
        mp.setattr(zarr_store, "STRUCTURE_CHUNK", 3)
        mp.setattr(zarr_store, "ATOM_CHUNK", 45)
        convert(root / "acac.xyz", root / "acac", level=LEVEL, name="s3-acac")
    fractions = ("--fractions", "0.666667,0.166667,0.166666", "--seed", "1")
    run_cli("split", root / "acac", "--name", "default", *fractions)
    run_cli("stats", root / "acac")
    return root / "acac"


def _one_line_error(proc, *expected: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert all(text in lines[0] for text in expected), lines[0]


def test_a_killed_push_is_refused_until_the_same_push_completes_it(s3, local, monkeypatch):
    url = f"s3://{BUCKET}/killed"
    keys = [p.relative_to(local).as_posix() for p in sorted(local.rglob("*")) if p.is_file()]
    keys = [k for k in keys if k.startswith(("data.zarr/", "splits/"))]
    monkeypatch.setenv(KILL_AT, f"push:{keys[len(keys) // 2]}")
    killed = run_cli("push", local, url, check=False)
    assert killed.returncode == -signal.SIGKILL
    monkeypatch.delenv(KILL_AT)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    there = fs.find(f"{BUCKET}/killed")
    assert 0 < len(there) < len(keys) and f"{BUCKET}/killed/manifest.json" not in there

    for command in ("info", "verify"):
        _one_line_error(run_cli(command, url, check=False), url, "interrupted mfdata push")
    with pytest.raises(StoreError, match="interrupted mfdata push"):
        FidelityDataModule(seed=0, stores=[url], levels=[LEVEL], reader="zarr")

    resumed = run_cli("push", local, url)
    assert f"to {url}" in resumed.stdout
    assert run_cli("verify", url).stdout.strip() == f"{url}: ok"
    info = run_cli("info", url).stdout
    assert "12 structures" in info and Store(local).manifest.checksum[:16] in info
    count = run_cli("query", url, local, "--has", f"{LEVEL}:energy", "--max-atoms", "15")
    assert count.stdout.splitlines() == ["s3-acac: 12 of 12 structures"] * 2
    stats = run_cli("stats", url)
    assert "force RMS" in stats.stdout and "statistics printed, not saved" in stats.stderr
    assert push(Store(local), url).objects == 0, "the same store: nothing to push"
    _one_line_error(run_cli("split", url, "--name", "x", check=False), "needs a local store")
    _one_line_error(run_cli("verify", "--repair", url, check=False), "--repair")


def test_push_refuses_a_url_that_holds_anything_else(s3, local, tmp_path):
    other = Path(str(example_file("methanol-store")))
    push(Store(other), f"s3://{BUCKET}/methanol")
    with pytest.raises(StoreError, match="holds another store"):
        push(Store(local), f"s3://{BUCKET}/methanol")
    changed = shutil.copytree(other, tmp_path / "methanol")
    make_split(Store(changed), "another", fractions=[0.5, 0.5], seed=0)
    with pytest.raises(StoreError, match="holds this store .same checksum. with another manifest"):
        push(Store(changed), f"s3://{BUCKET}/methanol")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.pipe_file(f"{BUCKET}/foreign/notes.txt", b"not a store")
    with pytest.raises(StoreError, match="not empty, and not an interrupted mfdata push"):
        push(Store(local), f"s3://{BUCKET}/foreign")
    assert fs.find(f"{BUCKET}/foreign") == [f"{BUCKET}/foreign/notes.txt"]


def _chunk_gets(s3: LocalS3, prefix: str) -> Counter:
    """GET requests for each chunk object under ``prefix`` since the requests were cleared."""
    requests = dict(s3.requests)
    return Counter(
        {
            p: n
            for (m, p), n in requests.items()
            if m == "GET" and p.startswith(prefix) and "/c/" in p
        }
    )


def test_training_reads_each_chunk_from_s3_once(s3, local, tmp_path):
    """Ten training steps (several epochs) through nequip-train and FidelityDataModule on the
    s3:// URL fetch every chunk once, and DataLoader workers then fetch none; without the
    cache, a second pass fetches them again."""
    from mftrain.checkpoint import read_checkpoint
    from mftrain.config import load_config, with_overrides
    from mftrain.train import prepare, run_nequip, write_run
    from tests.test_mftrain_fit import tiny_config

    url = f"s3://{BUCKET}/train"
    push(Store(local), url)
    prefix = f"/{BUCKET}/train/data.zarr/"

    s3.requests.clear()
    uncached = ZarrFidelityDataset([url], [LEVEL], chunk_cache_bytes=0)
    for _ in range(2):
        for i in range(len(uncached)):
            uncached[i]
    assert max(_chunk_gets(s3, prefix).values()) >= 2, "no cache: chunks fetched again"

    config = tiny_config(
        tmp_path / "s3.yaml",
        [str(local)],
        data={"levels": [LEVEL], "batch_size": 2},
        trainer={"max_steps": 10},
    )
    prepared = prepare(with_overrides(load_config(config), {"out": str(tmp_path / "run")}))
    prepared.nequip["data"].update(stores=[url], reader="zarr")
    s3.requests.clear()
    run_nequip(prepared.out, write_run(prepared))
    gets = _chunk_gets(s3, prefix)
    assert read_checkpoint(prepared.out / "last.ckpt").global_step == 10
    assert gets and set(gets.values()) == {1}, "each chunk fetched once, cached after"

    # DataLoader workers (forked) read the chunks this process cached: nothing fetched
    s3.requests.clear()
    module = FidelityDataModule(
        seed=0, stores=[url], levels=[LEVEL], reader="zarr", batch_size=2, num_workers=2
    )
    module.setup("fit")
    assert sum(len(b["num_atoms"]) for b in module.train_dataloader()) == 8
    assert not _chunk_gets(s3, prefix)
