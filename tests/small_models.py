"""Small torch modules that together exercise the aten ops real models produce."""
import torch
import torch.nn.functional as F
from torch import nn


class ConvNet(nn.Module):
    """conv, batchnorm, relu, maxpool, padding, avgpool, residual add, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        for bn in (self.bn1, self.bn2):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.running_var, 0.5, 1.5)
            nn.init.uniform_(bn.running_mean, -0.1, 0.1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        y = self.bn2(self.conv2(F.pad(x, (1, 1, 1, 1))))[:, :, 1:-1, 1:-1]
        x = F.relu(x + y)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class Attention(nn.Module):
    """qkv projection, split, permute, SDPA with a causal mask, layernorm, gelu MLP."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(x)


class Embedder(nn.Module):
    """embedding, position ids via arange/cumsum, masks with where/eq, softmax, gather, cat."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(64, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        mask = ids.ne(0)
        pos = torch.cumsum(mask.long(), dim=1) * mask.long()
        h = self.tok(ids) + self.pos(pos)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        logits = self.head(h)
        probs = torch.softmax(logits, dim=-1)
        picked = torch.gather(probs, 2, ids.unsqueeze(-1))
        return torch.cat([picked, probs.amax(dim=-1, keepdim=True), h.mean(-1, keepdim=True)], dim=-1)


def cases():
    """(name, model, example inputs) for each small model."""
    return [
        ("convnet", ConvNet().eval(), (torch.randn(2, 3, 16, 16),)),
        ("attention", Attention().eval(), (torch.randn(2, 10, 32),)),
        ("embedder", Embedder().eval(), (torch.randint(0, 50, (2, 12)),)),
        ("mlp", nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 4)).eval(), (torch.randn(3, 8),)),
    ]
