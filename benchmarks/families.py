"""Planned vs measured vs eager on many `transformers` model families.

memplan must never plan an activation peak above eager PyTorch's. This zoo builds
tiny random-weight models of many kinds (decoder-only, encoder-only,
encoder-decoder, speech, vision transformers, CNNs) from configs in code, no
downloads, and for each one prints:

- nodes: IR nodes of the compiled graph;
- eager: measured activation peak of ``model(*inputs)`` under no_grad
  (profiler memory timeline peak minus the weights and inputs resident before
  the call: ``measure.eager_activation_peak``);
- planned: ``cm.plan.stats["planned_peak_bytes"]``;
- measured: the same timeline measurement of ``cm(*inputs)``;
- planned/eager, and whether the outputs match eager (rtol = atol = 1e-4).

Sizes: 2 layers (per stack), hidden 128 (4 heads, FFN 512), vocabulary 1000,
batch 1, 256 tokens (decoder inputs 64), 128-pixel images, 1 s of 16 kHz audio,
256 mel frames; every compile takes under 30 s on 2 cores.

Run: ``.venv/bin/python benchmarks/families.py [--markdown FILE] [names...]``.
``tests/test_families.py`` asserts the same figures family by family.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import MiB, eager_activation_peak, timeline_peak, publish  # noqa: E402

import memplan  # noqa: E402
from memplan.zoo import _images, _reinit_cnn, _seeded, _token_ids  # noqa: E402

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]
RTOL = ATOL = 1e-4
VOCAB, SEQ, IMAGE = 1000, 256, 128
SMALL = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=512,
             vocab_size=VOCAB)


class Outputs(nn.Module):
    """``forward(*tensors)`` calls ``model(**dict(zip(names, tensors)), **kwargs)`` and returns the
    ``field`` of its output (``last_hidden_state``, ``logits``): one tensor."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], field: str, **kwargs):
        super().__init__()
        self.model, self.names, self.field, self.kwargs = model, names, field, kwargs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, tensors)), return_dict=True, **self.kwargs)
        return getattr(out, self.field)


def _wrap(make: Callable[[], nn.Module], names, field="last_hidden_state", cnn=False, **kwargs) -> nn.Module:
    """Build ``make()`` under a seeded RNG (CNNs re-initialised, see ``zoo._reinit_cnn``), wrapped."""
    def build():
        model = make()
        if cnn:
            _reinit_cnn(model)
        return Outputs(model, tuple(names), field, **kwargs)
    return _seeded(0, build)


def _ids(seq=SEQ, vocab=VOCAB, seed=0):
    return _token_ids(vocab, 1, seq, seed)


def _decoder(cls, config) -> Built:
    """A decoder-only text model on token ids, no KV cache: last hidden state."""
    return _wrap(lambda: cls(config), ["input_ids"], use_cache=False), (_ids(),)


def _encoder(cls, config) -> Built:
    """An encoder-only text model on token ids: last hidden state."""
    return _wrap(lambda: cls(config), ["input_ids"]), (_ids(),)


def _seq2seq(cls, config, dec_seq=64) -> Built:
    """An encoder-decoder text model on input ids + decoder ids, no KV cache: logits."""
    return (_wrap(lambda: cls(config), ["input_ids", "decoder_input_ids"], "logits", use_cache=False),
            (_ids(), _ids(dec_seq, seed=1)))


def _vision(cls, config, field="last_hidden_state", cnn=False) -> Built:
    """A vision model on one ``IMAGE``-pixel RGB image (CNNs re-initialised)."""
    return _wrap(lambda: cls(config), ["pixel_values"], field, cnn=cnn), (_images(1, 3, IMAGE, 0),)


# ---- decoder-only ---------------------------------------------------------------------------

def gpt2() -> Built:
    from transformers import GPT2Config, GPT2Model
    return _decoder(GPT2Model, GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=VOCAB, bos_token_id=0,
                                          eos_token_id=0,
                                          attn_implementation="sdpa"))


def llama() -> Built:
    from transformers import LlamaConfig, LlamaModel
    return _decoder(LlamaModel, LlamaConfig(**SMALL, num_key_value_heads=2, attn_implementation="sdpa"))


def qwen2() -> Built:
    from transformers import Qwen2Config, Qwen2Model
    return _decoder(Qwen2Model, Qwen2Config(**SMALL, num_key_value_heads=2, attn_implementation="sdpa"))


def mistral() -> Built:
    from transformers import MistralConfig, MistralModel
    return _decoder(MistralModel, MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=64,
                                                attn_implementation="sdpa"))


def gpt_neox() -> Built:
    from transformers import GPTNeoXConfig, GPTNeoXModel
    return _decoder(GPTNeoXModel, GPTNeoXConfig(**SMALL, attn_implementation="sdpa"))


def opt() -> Built:
    from transformers import OPTConfig, OPTModel
    return _decoder(OPTModel, OPTConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                        ffn_dim=512, word_embed_proj_dim=128, vocab_size=VOCAB,
                                        attn_implementation="sdpa"))


def phi() -> Built:
    from transformers import PhiConfig, PhiModel
    return _decoder(PhiModel, PhiConfig(**SMALL, attn_implementation="sdpa"))


def gemma() -> Built:
    from transformers import GemmaConfig, GemmaModel
    return _decoder(GemmaModel, GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=32,
                                            attn_implementation="sdpa"))


# ---- encoder-only ---------------------------------------------------------------------------

def bert() -> Built:
    from transformers import BertConfig, BertModel
    return _encoder(BertModel, BertConfig(**SMALL, attn_implementation="sdpa"))


def roberta() -> Built:
    from transformers import RobertaConfig, RobertaModel
    return _encoder(RobertaModel, RobertaConfig(**SMALL, attn_implementation="sdpa"))


def distilbert() -> Built:
    from transformers import DistilBertConfig, DistilBertModel
    return _encoder(DistilBertModel, DistilBertConfig(n_layers=2, dim=128, n_heads=4, hidden_dim=512,
                                                      vocab_size=VOCAB, attn_implementation="sdpa"))


def albert() -> Built:
    from transformers import AlbertConfig, AlbertModel
    return _encoder(AlbertModel, AlbertConfig(**SMALL, embedding_size=64, attn_implementation="sdpa"))


def deberta_v2() -> Built:
    from transformers import DebertaV2Config, DebertaV2Model
    return _encoder(DebertaV2Model, DebertaV2Config(**SMALL, relative_attention=True,
                                                    pos_att_type=["p2c", "c2p"]))


def electra() -> Built:
    from transformers import ElectraConfig, ElectraModel
    return _encoder(ElectraModel, ElectraConfig(**SMALL, embedding_size=64, attn_implementation="sdpa"))


# ---- encoder-decoder text -------------------------------------------------------------------

def t5() -> Built:
    from transformers import T5Config, T5ForConditionalGeneration
    return _seq2seq(T5ForConditionalGeneration, T5Config(
        num_layers=2, num_decoder_layers=2, d_model=128, d_kv=32, num_heads=4, d_ff=512,
        vocab_size=VOCAB, attn_implementation="eager"))


def _bart_like(**kw):
    return dict(encoder_layers=2, decoder_layers=2, d_model=128, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                vocab_size=VOCAB, max_position_embeddings=256, **{"attn_implementation": "sdpa", **kw})


def bart() -> Built:
    from transformers import BartConfig, BartForConditionalGeneration
    return _seq2seq(BartForConditionalGeneration, BartConfig(**_bart_like()))


def marian() -> Built:
    from transformers import MarianConfig, MarianMTModel
    return _seq2seq(MarianMTModel, MarianConfig(**_bart_like(decoder_vocab_size=VOCAB, pad_token_id=0,
                                                             decoder_start_token_id=0)))


def pegasus() -> Built:
    from transformers import PegasusConfig, PegasusForConditionalGeneration
    return _seq2seq(PegasusForConditionalGeneration, PegasusConfig(**_bart_like()))


# ---- speech ---------------------------------------------------------------------------------

def whisper() -> Built:
    from transformers import WhisperConfig, WhisperModel
    config = WhisperConfig(encoder_layers=2, decoder_layers=2, d_model=128, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                           vocab_size=VOCAB, num_mel_bins=80, max_source_positions=128,
                           max_target_positions=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1, attn_implementation="sdpa")
    features = torch.randn(1, 80, 256, generator=torch.Generator().manual_seed(1))
    model = _wrap(lambda: WhisperModel(config), ["input_features", "decoder_input_ids"], use_cache=False)
    return model, (features, _ids(32, seed=1))


def wav2vec2() -> Built:
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    config = Wav2Vec2Config(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                            intermediate_size=512, conv_dim=(64,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, attn_implementation="sdpa")
    audio = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    return _wrap(lambda: Wav2Vec2Model(config), ["input_values"]), (audio,)


def speech2text() -> Built:
    from transformers import Speech2TextConfig, Speech2TextModel
    config = Speech2TextConfig(**_bart_like(attn_implementation="eager"),  # no SDPA in Speech2Text
                               input_feat_per_channel=80, max_source_positions=256, max_target_positions=128,
                               conv_channels=128)
    features = torch.randn(1, 256, 80, generator=torch.Generator().manual_seed(1))
    model = _wrap(lambda: Speech2TextModel(config), ["input_features", "decoder_input_ids"], use_cache=False)
    return model, (features, _ids(32, seed=1))


# ---- vision transformers --------------------------------------------------------------------

def vit() -> Built:
    from transformers import ViTConfig, ViTModel
    return _vision(ViTModel, ViTConfig(**{k: v for k, v in SMALL.items() if k != "vocab_size"},
                                       image_size=IMAGE, patch_size=8, attn_implementation="sdpa"))


def deit() -> Built:
    from transformers import DeiTConfig, DeiTModel
    return _vision(DeiTModel, DeiTConfig(**{k: v for k, v in SMALL.items() if k != "vocab_size"},
                                         image_size=IMAGE, patch_size=8, attn_implementation="sdpa"))


def swin() -> Built:
    from transformers import SwinConfig, SwinModel
    return _vision(SwinModel, SwinConfig(image_size=IMAGE, patch_size=4, embed_dim=32, depths=[2, 2],
                                         num_heads=[2, 4], window_size=4))


def segformer() -> Built:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[32, 64],
                             num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                             decoder_hidden_size=64, num_labels=4)
    return _vision(SegformerForSemanticSegmentation, config, "logits", cnn=True)


# ---- CNNs -----------------------------------------------------------------------------------

def resnet() -> Built:
    from transformers import ResNetConfig, ResNetModel
    return _vision(ResNetModel, ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                                             depths=[1, 1, 1, 1], layer_type="bottleneck"), cnn=True)


def convnext() -> Built:
    from transformers import ConvNextConfig, ConvNextModel
    return _vision(ConvNextModel, ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1]), cnn=True)


def mobilenet_v2() -> Built:
    from transformers import MobileNetV2Config, MobileNetV2Model
    return _vision(MobileNetV2Model, MobileNetV2Config(image_size=IMAGE, depth_multiplier=0.5), cnn=True)


def efficientnet() -> Built:
    from transformers import EfficientNetConfig, EfficientNetModel
    return _vision(EfficientNetModel, EfficientNetConfig(image_size=IMAGE, width_coefficient=0.5,
                                                         depth_coefficient=0.5, hidden_dim=640), cnn=True)


FAMILIES: dict[str, tuple[str, Callable[[], Built]]] = {
    "gpt2": ("decoder", gpt2), "llama": ("decoder", llama), "qwen2": ("decoder", qwen2),
    "mistral": ("decoder", mistral), "gpt-neox": ("decoder", gpt_neox), "opt": ("decoder", opt),
    "phi": ("decoder", phi), "gemma": ("decoder", gemma),
    "bert": ("encoder", bert), "roberta": ("encoder", roberta), "distilbert": ("encoder", distilbert),
    "albert": ("encoder", albert), "deberta-v2": ("encoder", deberta_v2), "electra": ("encoder", electra),
    "t5": ("enc-dec", t5), "bart": ("enc-dec", bart), "marian": ("enc-dec", marian),
    "pegasus": ("enc-dec", pegasus),
    "whisper": ("speech", whisper), "wav2vec2": ("speech", wav2vec2), "speech2text": ("speech", speech2text),
    "vit": ("vision", vit), "deit": ("vision", deit), "swin": ("vision", swin),
    "segformer": ("vision", segformer),
    "resnet": ("cnn", resnet), "convnext": ("cnn", convnext), "mobilenet-v2": ("cnn", mobilenet_v2),
    "efficientnet": ("cnn", efficientnet),
}


def measure_family(name: str) -> dict:
    """Build family ``name``, compile it for the CPU and measure eager vs memplan (bytes)."""
    kind, builder = FAMILIES[name]
    model, inputs = builder()
    start = time.perf_counter()
    cm = memplan.compile(model, inputs, target="cpu")
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        reference = model(*inputs)  # also warms up lazy initialisation before measuring
    got = cm(*inputs)
    diff = (got - reference).abs().max().item()
    match = got.shape == reference.shape and torch.allclose(got, reference, rtol=RTOL, atol=ATOL)
    eager = eager_activation_peak(model, inputs)
    measured = timeline_peak(cm, *inputs)["activation_peak"]
    planned = cm.plan.stats["planned_peak_bytes"]
    return {"family": name, "kind": kind, "nodes": len(cm.graph.nodes), "eager": eager, "planned": planned,
            "measured": measured, "ratio": planned / eager, "match": match, "max_abs_diff": diff,
            "compile_s": compile_s}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| family | kind | nodes | eager act. peak | planned | measured | planned/eager | match | compile |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['kind']} | — | — | — | — | — | error: {r['error']} | — |")
            continue
        flag = "**" if r["planned"] > r["eager"] else ""
        match = "yes" if r["match"] else f"NO ({r['max_abs_diff']:.1e})"
        lines.append(f"| {r['family']} | {r['kind']} | {r['nodes']} | {r['eager'] / MiB:.3f} | "
                     f"{r['planned'] / MiB:.3f} | {r['measured'] / MiB:.3f} | {flag}{r['ratio']:.3f}{flag} | "
                     f"{match} | {r['compile_s']:.1f} s |")
    return "\n".join(lines) + ("\n\nMemory in MiB (activations: weights and inputs excluded); "
                               "**bold**: planned above eager.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"families to run (default: all): {', '.join(FAMILIES)}")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    rows = []
    for name in args.names or FAMILIES:
        start = time.perf_counter()
        try:
            rows.append(measure_family(name))
        except Exception as e:  # noqa: BLE001  (a table row, not a crash: the test file asserts)
            rows.append({"family": name, "kind": FAMILIES[name][0],
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return publish(to_markdown(rows), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
