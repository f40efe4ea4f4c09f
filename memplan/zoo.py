"""Small, deterministic builders for the real model families used in tests,
benchmarks and demos.

Every builder returns ``(model, example_inputs)``: ``model`` is a
``torch.nn.Module`` in eval mode with random (seeded) weights, and
``example_inputs`` is a tuple of tensors such that ``model(*example_inputs)``
returns a single tensor. Nothing is downloaded. Each model works with
``torch.export.export(model, example_inputs)`` and
``ep.run_decompositions(table)``.

The transformers models are wrapped in :class:`MainOutput`, whose forward takes
only the primary input (``input_ids`` / ``pixel_values``) and returns one
tensor (``last_hidden_state`` or ``logits``), with caching disabled.

Building seeds a private copy of the global RNG (``torch.random.fork_rng``), so
calling a builder does not disturb the caller's random state.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "FAMILIES",
    "MainOutput",
    "bert",
    "build",
    "gpt2",
    "llama",
    "mlp",
    "param_bytes",
    "resnet50",
    "unet",
]

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


class MainOutput(nn.Module):
    """Wrap a transformers model so that ``forward(x)`` returns one tensor.

    ``input_name`` is the keyword the wrapped model expects (``input_ids``,
    ``pixel_values``) and ``output_name`` the field of its output to return
    (``last_hidden_state``, ``logits``).
    """

    def __init__(self, model: nn.Module, input_name: str, output_name: str, **call_kwargs):
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.output_name = output_name
        self.call_kwargs = call_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Call the wrapped model on ``x`` and return its main output tensor."""
        out = self.model(**{self.input_name: x}, return_dict=True, **self.call_kwargs)
        return getattr(out, self.output_name)


def param_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (tied ones counted once)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _token_ids(vocab_size: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    """Deterministic ``(batch, seq)`` int64 token ids below ``vocab_size``."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab_size, (batch, seq), generator=gen)


def _images(batch: int, channels: int, image: int, seed: int) -> torch.Tensor:
    """Deterministic ``(batch, channels, image, image)`` float32 images ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, channels, image, image, generator=gen)


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """Run ``make()`` under a forked, seeded RNG and return its module in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


@torch.no_grad()
def _reinit_cnn(model: nn.Module) -> None:
    """Give convs and batchnorms a variance-preserving random init.

    Default inits (BN weight 1, running stats 0/1, fan-out convs) can drive deep
    CNN outputs to ~1e-21 or to huge values; comparisons on such outputs mean
    nothing. Convs get Kaiming fan-in (ReLU gain); batchnorms get random affine
    parameters and running statistics near the identity. Uses the global RNG:
    call it inside ``_seeded``.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            nn.init.normal_(m.running_mean, 0.0, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)


def gpt2(n_layer: int = 2, n_embd: int = 256, n_head: int = 4, batch: int = 1,
         seq: int = 128, lm_head: bool = False, seed: int = 0) -> Built:
    """GPT-2 (transformers ``GPT2Model``, SDPA attention) on random token ids.

    Returns ``last_hidden_state`` ``(batch, seq, n_embd)``; with
    ``lm_head=True`` uses ``GPT2LMHeadModel`` and returns the logits
    ``(batch, seq, 50257)`` (a 24.5 MiB output at seq 128). Parameters of the
    default 2L/256 model: 56.1 MiB (mostly the 50257-token embedding).
    """
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=max(1024, seq), use_cache=False,
                        attn_implementation="sdpa")
    cls, field = (GPT2LMHeadModel, "logits") if lm_head else (GPT2Model, "last_hidden_state")
    model = _seeded(seed, lambda: MainOutput(cls(config), "input_ids", field, use_cache=False))
    return model, (_token_ids(config.vocab_size, batch, seq, seed),)


def bert(n_layer: int = 2, hidden: int = 256, heads: int = 4, batch: int = 1,
         seq: int = 128, seed: int = 0) -> Built:
    """BERT encoder (transformers ``BertModel``, SDPA attention, no mask).

    Returns ``last_hidden_state`` ``(batch, seq, hidden)``. Parameters of the
    default 2L/256 model: 36.6 MiB.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=n_layer, hidden_size=hidden,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max(512, seq),
                        attn_implementation="sdpa")
    model = _seeded(seed, lambda: MainOutput(BertModel(config, add_pooling_layer=False),
                                             "input_ids", "last_hidden_state"))
    return model, (_token_ids(config.vocab_size, batch, seq, seed),)


def llama(n_layer: int = 2, hidden: int = 256, heads: int = 4, kv_heads: int = 2,
          intermediate: int = 688, vocab: int = 32000, batch: int = 1, seq: int = 128,
          seed: int = 0) -> Built:
    """Small Llama decoder (transformers ``LlamaModel``, SDPA, grouped KV heads).

    RMSNorm, rotary embeddings, SwiGLU MLP, ``kv_heads`` < ``heads`` (GQA).
    Returns ``last_hidden_state`` ``(batch, seq, hidden)``.
    """
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=hidden,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, vocab_size=vocab,
                         max_position_embeddings=max(2048, seq), use_cache=False,
                         attn_implementation="sdpa")
    model = _seeded(seed, lambda: MainOutput(LlamaModel(config), "input_ids",
                                             "last_hidden_state", use_cache=False))
    return model, (_token_ids(vocab, batch, seq, seed),)


def resnet50(batch: int = 1, image: int = 224, seed: int = 0) -> Built:
    """ResNet-50 backbone (transformers ``ResNetModel``, default config).

    Returns the final feature map ``(batch, 2048, image/32, image/32)``
    (``last_hidden_state``, before pooling). Convs and batchnorms are
    re-initialised (see ``_reinit_cnn``). Parameters + BN buffers: 89.9 MiB.
    """
    from transformers import ResNetConfig, ResNetModel

    def make() -> nn.Module:
        model = ResNetModel(ResNetConfig())
        _reinit_cnn(model)
        return MainOutput(model, "pixel_values", "last_hidden_state")

    return _seeded(seed, make), (_images(batch, 3, image, seed),)


class _DoubleConv(nn.Sequential):
    """(conv3x3 -> batchnorm -> relu) twice."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )


class UNet(nn.Module):
    """A small UNet: reflection-padded stem, ``depth`` max-pool downsamplings,
    then upsampling back with skip concatenation.

    Even decoder levels upsample with ``ConvTranspose2d``, odd ones with
    bilinear ``Upsample`` + 1x1 conv; when a skip and an upsampled map differ in
    size (input not divisible by ``2**depth``) the latter is zero-padded.
    """

    def __init__(self, in_ch: int = 3, n_classes: int = 2, base: int = 16, depth: int = 3):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_ch, base, 3),
                                  nn.BatchNorm2d(base), nn.ReLU(), _DoubleConv(base, base))
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(_DoubleConv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            if i % 2 == 0:
                self.up.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            else:
                self.up.append(nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(chans[i + 1], chans[i], 1)))
            self.dec.append(_DoubleConv(2 * chans[i], chans[i]))
        self.head = nn.Conv2d(base, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_ch, H, W)`` images to ``(N, n_classes, H, W)`` logits."""
        x = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(self.pool(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            dh, dw = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dh or dw:
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)


def unet(batch: int = 1, image: int = 64, in_ch: int = 3, n_classes: int = 2,
         base: int = 16, depth: int = 3, seed: int = 0) -> Built:
    """Small UNet (see :class:`UNet`), plain torch, re-initialised weights.

    Returns per-pixel logits ``(batch, n_classes, image, image)``.
    """
    def make() -> nn.Module:
        model = UNet(in_ch, n_classes, base, depth)
        _reinit_cnn(model)
        return model

    return _seeded(seed, make), (_images(batch, in_ch, image, seed),)


def mlp(batch: int = 8, d_in: int = 64, hidden: int = 128, d_out: int = 10,
        n_layers: int = 3, seed: int = 0) -> Built:
    """Tiny MLP: ``n_layers`` Linear layers with ReLU between them.

    Returns ``(batch, d_out)``.
    """
    def make() -> nn.Module:
        dims = [d_in] + [hidden] * (n_layers - 1) + [d_out]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    gen = torch.Generator().manual_seed(seed + 1)
    return _seeded(seed, make), (torch.randn(batch, d_in, generator=gen),)


FAMILIES: dict[str, Callable[..., Built]] = {
    "mlp": mlp,
    "gpt2": gpt2,
    "bert": bert,
    "llama": llama,
    "resnet50": resnet50,
    "unet": unet,
}


def build(name: str, **kw) -> Built:
    """Build family ``name`` (a key of :data:`FAMILIES`) with keyword overrides."""
    try:
        builder = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
    return builder(**kw)


def export_onnx(name: str, path, **kw) -> Built:
    """Build family ``name`` and write it to ``path`` as ONNX (``torch.onnx.export``, dynamo
    exporter, opset 20); returns the torch model and example inputs for comparison."""
    import contextlib
    import io
    import logging
    import warnings

    model, inputs = build(name, **kw)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, verbose=False)
    return model, inputs
