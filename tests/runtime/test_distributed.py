"""torchrun on CPU (gloo, 2 processes): the same outputs as one process, exactly.

The single-process references run in this process with one thread (as each torchrun worker
does), so the comparison is bit for bit; the multi-process runs are real ``torchrun`` launches
of ``python -m ispo``: one node with two processes, and two "nodes" (two torchrun agents,
``--nnodes=2``, c10d rendezvous on 127.0.0.1) with one process each.
"""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from _scaleout import REPO, run, tiny_checkpoint, torchrun_cmd, write_small
from ispo.cli.main import main
from ispo.io.shards import ShardWriter
from ispo.runtime import dist


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {
        "ckpt": tiny_checkpoint(root / "ckpt"),
        "data": write_small(root / "d.h5ad", 13),
        "root": root,
    }


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- helpers of ispo.runtime.dist in one process ----------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 13, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_blocks_cover_every_item_once(n, world):
    blocks = [dist.block(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))  # in order, no gap, no duplicate
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("world", [2, 3])
def test_work_still_to_do_is_dealt_once_and_evenly(world):
    todo = [2, 3, 7, 8, 9, 11, 12]  # e.g. the shards a killed run left
    shares = [list(dist.mine(todo, rank, world)) for rank in range(world)]
    assert sorted(x for s in shares for x in s) == todo
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_single_process_is_rank_0_of_1():
    info = dist.info()
    assert (info.rank, info.world, info.main, info.active) == (0, 1, True, False)
    assert dist.all_sum(2, 3.5) == [2.0, 3.5] and dist.gather("x") == ["x"]
    assert [i for i, _ in dist.mine(enumerate("abc"))] == [0, 1, 2]
    dist.barrier()  # no-op


def test_rank_manifests_merge_and_resume_with_any_world(tmp_path):
    out = tmp_path / "r.parquet"
    fp = {"a": 1, "range": (0, 5)}  # a tuple: stored as a JSON list, still the same run
    w0 = ShardWriter(out, fp, resume=False, overwrite=False)
    w1 = ShardWriter(out, fp, resume=False, overwrite=False, rank=1)  # joins rank 0's folder
    w0.write(0, {"cells": pd.DataFrame({"x": [0]})})
    w1.write(1, {"cells": pd.DataFrame({"x": [1]})})
    w0.write(2, {"cells": pd.DataFrame({"x": [2]})})
    assert sorted(p.name for p in w0.parts.glob("manifest*.json")) == [
        "manifest-rank1.json",
        "manifest.json",
    ]
    assert not w0.done(1)
    w0.refresh()
    assert w0.read("cells")["x"].tolist() == [0, 1, 2]
    again = ShardWriter(out, fp, resume=True, overwrite=False)  # one process resumes both
    assert all(again.done(s) for s in range(3)) and not again.done(3)
    with pytest.raises(Exception, match="other options"):
        ShardWriter(out, {"a": 2}, resume=True, overwrite=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_units_are_the_same_however_they_are_read(workers):
    """A unit's cells (hence its batches and numbers) depend on neither the rows read at a time,
    nor which units are asked for, nor how many worker processes tokenize them: what makes any
    number of processes agree bit for bit."""
    import ispo
    from _scaleout import small_adata
    from ispo.embedding.stream import UnitReader, tokenized_units
    from ispo.io.read import MemorySource
    from ispo.tokens import Tokenizer

    a = small_adata(23, seed=5)
    X = a.X.toarray()
    X[[3, 4, 17]] = 0  # empty cells: skipped
    a.X = sp.csr_matrix(X)
    a.obs["filter_pass"] = [int(i != 9) for i in range(23)]  # a filtered cell
    src = MemorySource(a)
    tok = Tokenizer.build(a.var, ispo.demo_vocab())

    def read(units, read_rows, workers=0):
        reader = UnitReader(tok, 5, 23, None, src, read_rows=read_rows)
        return list(tokenized_units(reader, units, workers))

    whole = dict(read(list(range(5)), 5))
    assert set(np.concatenate([c.obs_index for c in whole.values()])) == (
        set(range(23)) - {3, 4, 9, 17}
    )
    for read_rows, units in [(2, [0, 1, 2, 3, 4]), (3, [1, 3, 4]), (1, [2]), (4, [0, 4])]:
        got = read(units, read_rows, workers)
        assert [u for u, _ in got] == units
        for u, c in got:
            np.testing.assert_array_equal(c.obs_index, whole[u].obs_index)
            np.testing.assert_array_equal(c.tokens, whole[u].tokens)
            np.testing.assert_array_equal(c.offsets, whole[u].offsets)


# -- torchrun ---------------------------------------------------------------------------------
def _torchrun(args: list[str]):
    res = run(torchrun_cmd(2, "-q", *args), timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_torchrun_embed_equals_one_process(files, tmp_path, capsys, one_thread):
    common = [
        str(files["data"]),
        "--vocab",
        "demo",
        "--model",
        str(files["ckpt"]),
        "--chunk-cells",
        "3",
    ]  # 5 units of 3, 3, 3, 3, 1 rows: ranks get 2 and 3
    one, two = tmp_path / "one.h5ad", tmp_path / "two.h5ad"
    main(["-q", "embed", *common, "--out", str(one)])
    res = _torchrun(["embed", *common, "--out", str(two)])
    assert res.stdout.count("embedded 13 of 13 cells") == 1  # only rank 0 speaks
    assert "2 processes" in res.stdout
    a, b = ad.read_h5ad(one), ad.read_h5ad(two)
    np.testing.assert_array_equal(a.obsm["X_geneformer"], b.obsm["X_geneformer"])
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert list(a.obs_names) == list(b.obs_names)
    assert b.uns["geneformer"]["stream"]["processes"] == 2
    assert not (tmp_path / "two.h5ad.parts").exists()


def test_torchrun_perturb_equals_one_process(files, tmp_path, one_thread):
    common = [
        str(files["data"]),
        "--vocab",
        "demo",
        "--model",
        str(files["ckpt"]),
        "--shard-cells",
        "2",
        "--emb-mode",
        "cell_and_gene",
    ]
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    main(["-q", "perturb", *common, "--out", str(one)])
    res = _torchrun(["perturb", *common, "--out", str(two)])
    assert res.stdout.count("perturbations of 13 cells") == 1
    a, b = pd.read_parquet(one), pd.read_parquet(two)
    assert len(a) > 100
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same rows, order, numbers
    ga = pd.read_parquet(tmp_path / "one.genes.parquet")
    gb = pd.read_parquet(tmp_path / "two.genes.parquet")
    pd.testing.assert_frame_equal(ga, gb, check_exact=True)
    assert not (tmp_path / "two.parquet.parts").exists()
    # input order: cells appear in obs order, no cell twice
    order = a.drop_duplicates("obs_index")["obs_index"].tolist()
    assert order == sorted(order)


# -- two torchrun "nodes" on this machine -----------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(args: list[str]) -> str:
    """Two torchrun agents (``--nnodes=2``, one process each) meeting by c10d rendezvous on
    127.0.0.1: what two machines run, each on its own port range. Returns their stdout."""
    import subprocess

    from _scaleout import env

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        f"--rdzv_id=ispo-test-{port}",
        "--local-addr=127.0.0.1",
        "-m",
        "ispo",
        "-q",
        *args,
    ]
    nodes = [
        subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err.decode()[-3000:]
    return "".join(out.decode() for out, _ in outs)


def test_two_nodes_embed_equals_one_process(files, tmp_path, one_thread):
    common = [str(files["data"]), "--vocab", "demo", "--model", str(files["ckpt"])]
    common += ["--chunk-cells", "3"]
    one, two = tmp_path / "one.h5ad", tmp_path / "two.h5ad"
    main(["-q", "embed", *common, "--out", str(one)])
    stdout = _two_nodes(["embed", *common, "--out", str(two)])
    assert stdout.count("embedded 13 of 13 cells") == 1  # rank 0 of the two nodes speaks
    a, b = ad.read_h5ad(one), ad.read_h5ad(two)
    np.testing.assert_array_equal(a.obsm["X_geneformer"], b.obsm["X_geneformer"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert b.uns["geneformer"]["stream"]["processes"] == 2


def test_two_nodes_perturb_equals_one_process(files, tmp_path, one_thread):
    common = [str(files["data"]), "--vocab", "demo", "--model", str(files["ckpt"])]
    common += ["--shard-cells", "2", "--state-key", "state", "--start-state", "a"]
    common += ["--goal-state", "b", "--alt-states", "c"]
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    main(["-q", "perturb", *common, "--out", str(one)])
    stdout = _two_nodes(["perturb", *common, "--out", str(two)])
    assert stdout.count("perturbations of") == 1
    a, b = pd.read_parquet(one), pd.read_parquet(two)
    assert len(a) > 20 and {"shift_b", "shift_c"} <= set(a.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_run_ddp_reference_form(files, capsys, tmp_path):
    from ispo.scripts.run_ddp import main as run_ddp

    out = tmp_path / "e.npy"
    run_ddp(
        [
            "--method",
            "batching",
            "--batch_size",
            "2",
            "--num_perturbations",
            "3",
            "--model_name",
            str(files["ckpt"]),
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "rank 0 (cpu): 3 cells" in text and "total: 3 cells on 1 process(es)" in text
    emb = np.load(out)
    assert emb.shape == (3, 16) and np.isfinite(emb).all()


@pytest.mark.slow  # a third torchrun launch (~15 s): the dist code is covered by the two above
def test_run_ddp_under_torchrun(files, tmp_path):
    out = tmp_path / "e.npy"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ispo.scripts.run_ddp",
        "--method",
        "fast",
        "--num_perturbations",
        "5",
        "--model_name",
        str(files["ckpt"]),
        "--out",
        str(out),
    ]
    res = run(cmd, timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0 (cpu): 2 cells" in res.stdout and "rank 1 (cpu): 3 cells" in res.stdout
    assert res.stdout.count("total: 5 cells on 2 process(es)") == 1
    import ispo

    model = ispo.load_model(files["ckpt"], vocab=ispo.demo_vocab(), device="cpu")
    ref = ispo.embed(ispo.demo_adata(5), model)
    np.testing.assert_allclose(np.load(out), ref, rtol=0, atol=1e-5)
