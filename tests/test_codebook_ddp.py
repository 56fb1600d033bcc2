"""Two gloo ranks on CPU feed different data to a synced `NormEMAVectorQuantizer`; the codebooks must stay bitwise equal.

Each rank saves snapshots of its codebook state (after the k-means init, after the first dead-code restart, at the
end) to a file; the test process compares them. A second, unsynced quantizer on the same data is the control: its
codebooks must differ across ranks, which shows the data really differ and the comparison can fail.
"""
from __future__ import annotations

import datetime
import os
import socket

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from beitv2_lab.codebook import NormEMAVectorQuantizer
from beitv2_lab.core import l2norm

WORLD, STEPS, K, C, N = 2, 20, 64, 8, 48
STATE = ('embedding.weight', 'embedding.cluster_size', 'embedding.embed_avg', 'cluster_size')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _batch(rank: int, step: int) -> torch.Tensor:
    "Different data on every rank and step: 8 clusters, first step from one cluster only (collapsed init)."
    g = torch.Generator().manual_seed(1000 * rank + step)
    centres = l2norm(torch.randn(8, C, generator=torch.Generator().manual_seed(0)))
    which = torch.zeros(N, dtype=torch.long) if step == 0 else torch.randint(8, (N,), generator=g)
    return centres[which] + 0.1 * torch.randn(N, C, generator=g)


def _snap(q: NormEMAVectorQuantizer) -> dict:
    sd = q.state_dict()
    return {k: sd[k].clone() for k in STATE}


def _worker(rank: int, port: int, out_dir: str):
    torch.set_num_threads(1)
    torch.manual_seed(rank)                       # different global RNG on each rank too
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    kw = dict(codebook_size=K, code_dim=C, decay=0.8, dead_code_threshold=1.0, kmeans_init=True, restart_dead_codes=True)
    q, q_local = NormEMAVectorQuantizer(**kw, sync=True), NormEMAVectorQuantizer(**kw, sync=False)
    snaps, restart_step = {}, None
    for step in range(STEPS):
        x = _batch(rank, step)
        q.restart_dead_codes = step > 0           # read at call time: step 0 snapshots the k-means init alone
        q(x); q_local(x)
        if step == 0: snaps['init'] = _snap(q)
        if restart_step is None and q.stats()['restarts'] > 0:
            restart_step = step; snaps['restart'] = _snap(q)
    snaps['end'] = _snap(q)
    torch.save(dict(snaps=snaps, restart_step=restart_step, stats=q.stats(), usage=q.usage,
                    local=_snap(q_local), data0=_batch(rank, 1)), os.path.join(out_dir, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.serial
def test_synced_codebook_identical_across_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path/f'rank{r}.pt') for r in range(WORLD))
    assert not torch.equal(r0['data0'], r1['data0'])                       # the ranks saw different data
    assert r0['restart_step'] == r1['restart_step'] == 1
    assert r0['stats'] == r1['stats'] and r0['stats']['restarts'] > 0
    assert torch.equal(r0['usage'], r1['usage'])
    assert r0['snaps']['init']['embedding.cluster_size'].min() < 1.0         # step 0 left dead codes for step 1
    for when in ('init', 'restart', 'end'):
        for k in STATE:
            assert torch.equal(r0['snaps'][when][k], r1['snaps'][when][k]), (when, k)
    assert not torch.equal(r0['snaps']['init']['embedding.weight'], r0['snaps']['end']['embedding.weight'])
    # control: without sync the same data give different codebooks on the two ranks
    assert not torch.equal(r0['local']['embedding.weight'], r1['local']['embedding.weight'])
