"""Embedding lookups as a layer norm's prologue on the Triton backend: one kernel gathers the rows,
sums them and normalises (BERT's and GPT-2's first block); indices out of range are an IndexError."""
from __future__ import annotations

import pytest
import torch

import memplan
from memplan.backends.triton.kernels import choose_kernels

pytest.importorskip("triton")


class Embeddings(torch.nn.Module):
    def __init__(self, vocab=50, positions=40, d=24):
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(vocab, d), torch.nn.Embedding(positions, d)
        self.ln = torch.nn.LayerNorm(d)

    def forward(self, ids, pos):
        return self.ln(self.tokens(ids) + self.positions(pos) * 0.5)


def _compiled():
    torch.manual_seed(0)
    model = Embeddings().eval()
    ids, pos = torch.randint(0, 50, (2, 13)), torch.arange(13).flip(0)[None].expand(2, 13).contiguous()
    return model, (ids, pos), memplan.compile(model, (ids, pos), backend="triton", options={"fusion": "on"})


def test_gathers_sum_and_norm_in_one_kernel_equal_to_eager():
    model, inputs, cm = _compiled()
    kernels = choose_kernels(cm.graph).kernels
    (kernel,) = kernels.values()
    assert [n.op for n in kernel.node.subgraph.nodes].count("aten.embedding.default") == 2
    assert not [n for n in cm.graph.nodes if n.op == "aten.embedding.default"], "no lookup runs on its own"
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_index_out_of_range_is_an_index_error():
    model, (ids, pos), cm = _compiled()
    bad = ids.clone()
    bad[1, 3] = 50
    with pytest.raises(IndexError, match="index out of range"):
        cm(bad, pos)
    with pytest.raises(IndexError):
        model(bad, pos)
    bad[1, 3] = -1
    with pytest.raises(IndexError, match=r"\[0, 50\)"):
        cm(bad, pos)
