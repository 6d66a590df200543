"""The model ladder: named transformer shapes from ~5k to ~2.1B non-embedding parameters.

Two families, one table (`LADDER`, ordered by size):
- CPU rungs (`5k` ... `2M`): 2-4 layers of width 12-192, d_ff = 4 d, for sweeps that run on a
  laptop with the byte tokenizer at sequence length 128 (the in-between rungs `51k` and `300k`
  give finer grids).
- SMDM's 30 shapes (`6M` ... `2121M`), unchanged from its official code (lit_gpt/config.py): named
  by their non-embedding N in millions; SwiGLU d_ff = 4 d except `75M` (d_ff 1600, head dim 80).

Parameter counts come from `mdm.flops` on the TransformerConfig a shape makes for a vocabulary:
N (non-embedding: matrices and norm gains) does not depend on it, the total does (embedding
(V + 1) x d, plus V x d for an untied head).

    python -m scaling_laws.ladder [--vocab_size 259] [--seq_len 128] [--untied]   # prints the table
"""

from __future__ import annotations

import dataclasses
import sys

from mdm.errors import ConfigError
from mdm.flops import embedding_params, nonembedding_params, smdm_flops_per_token, total_params, train_flops_per_token
from mdm.experiment import transformer_config
from mdm.networks import TransformerConfig


@dataclasses.dataclass(frozen=True)
class Shape:
    """A named backbone shape: depth, width, heads and SwiGLU width."""

    name: str
    num_layers: int
    d_model: int
    num_heads: int
    mlp_dim: int

    def config(
        self, vocab_size: int, *, causal: bool = False, tie_embeddings: bool = True, time_conditioning: bool = False
    ) -> TransformerConfig:
        """The TransformerConfig of this shape for a vocabulary (other fields at their defaults),
        from the library's one model-config builder."""
        model = {**self.overrides(), "tie_embeddings": tie_embeddings, "time_conditioning": time_conditioning}
        return transformer_config({k.removeprefix("model."): v for k, v in model.items()}, vocab_size, causal=causal)

    @property
    def params(self) -> int:
        """N: non-embedding parameters (SMDM's count; the same for every vocabulary)."""
        return nonembedding_params(self.config(vocab_size=1))

    def overrides(self) -> dict[str, int]:
        """The `model.*` config keys that select this shape."""
        return {
            "model.num_layers": self.num_layers,
            "model.d_model": self.d_model,
            "model.num_heads": self.num_heads,
            "model.mlp_dim": self.mlp_dim,
        }


def _cpu(name: str, layers: int, d: int, heads: int) -> Shape:
    return Shape(name, layers, d, heads, 4 * d)


CPU_RUNGS = (
    _cpu("5k", 2, 12, 1),
    _cpu("8k", 2, 16, 1),
    _cpu("19k", 2, 24, 1),
    _cpu("33k", 2, 32, 2),
    _cpu("51k", 2, 40, 2),
    _cpu("74k", 2, 48, 2),
    _cpu("131k", 2, 64, 2),
    _cpu("300k", 3, 80, 2),
    _cpu("443k", 3, 96, 3),
    _cpu("1M", 4, 128, 4),
    _cpu("2M", 4, 192, 3),
)

# (name, layers, d_model, heads, d_ff): SMDM's official code, lit_gpt/config.py.
SMDM_SHAPES = tuple(
    Shape(*row)
    for row in (
        ("6M", 6, 256, 4, 1024),
        ("19M", 8, 384, 6, 1536),
        ("34M", 8, 512, 8, 2048),
        ("48M", 9, 576, 9, 2304),
        ("66M", 10, 640, 10, 2560),
        ("75M", 16, 640, 8, 1600),
        ("85M", 13, 640, 10, 2560),
        ("113M", 12, 768, 12, 3072),
        ("142M", 15, 768, 12, 3072),
        ("170M", 18, 768, 12, 3072),
        ("180M", 14, 896, 14, 3584),
        ("206M", 16, 896, 14, 3584),
        ("231M", 18, 896, 14, 3584),
        ("268M", 16, 1024, 16, 4096),
        ("302M", 18, 1024, 16, 4096),
        ("336M", 20, 1024, 16, 4096),
        ("472M", 18, 1280, 10, 5120),
        ("551M", 21, 1280, 10, 5120),
        ("571M", 18, 1408, 11, 5632),
        ("629M", 24, 1280, 10, 5120),
        ("666M", 21, 1408, 11, 5632),
        ("717M", 19, 1536, 12, 6144),
        ("761M", 24, 1408, 11, 5632),
        ("831M", 22, 1536, 12, 6144),
        ("944M", 25, 1536, 12, 6144),
        ("1028M", 20, 1792, 14, 7168),
        ("1233M", 24, 1792, 14, 7168),
        ("1476M", 22, 2048, 16, 8192),
        ("1678M", 25, 2048, 16, 8192),
        ("2121M", 28, 2176, 17, 8704),
    )
)

LADDER: dict[str, Shape] = {s.name: s for s in sorted(CPU_RUNGS + SMDM_SHAPES, key=lambda s: s.params)}


def get_shape(name: str) -> Shape:
    """The ladder shape called `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in LADDER:
        raise ConfigError(f"unknown model size {name!r}; the ladder has {', '.join(LADDER)}")
    return LADDER[name]


def ladder_rows(vocab_size: int, seq_len: int, tie_embeddings: bool = True) -> list[dict]:
    """One dict per shape: its dims, N, embedding and total params, and F_tok / 6N at `seq_len`."""
    rows = []
    for shape in LADDER.values():
        cfg = shape.config(vocab_size, tie_embeddings=tie_embeddings)
        rows.append(
            {
                "name": shape.name,
                "layers": shape.num_layers,
                "d_model": shape.d_model,
                "heads": shape.num_heads,
                "d_ff": shape.mlp_dim,
                "params": nonembedding_params(cfg),
                "embedding": embedding_params(cfg),
                "params_total": total_params(cfg),
                "full_over_6n": train_flops_per_token(cfg, seq_len) / smdm_flops_per_token(cfg),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of `ladder_rows`."""
    lines = [
        "| name | layers | d | heads | d_ff | N non-emb | emb (+head) | total | full/6N |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layers']} | {r['d_model']} | {r['heads']} | {r['d_ff']} | {r['params']:,} | "
            f"{r['embedding']:,} | {r['params_total']:,} | {r['full_over_6n']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from mdm.cli import parse_flags, run_cli

    def body(args: list[str]) -> None:
        flags, _, _ = parse_flags(args, {"vocab_size": 259, "seq_len": 128, "untied": False})
        print(format_table(ladder_rows(flags["vocab_size"], flags["seq_len"], not flags["untied"])))

    return run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
