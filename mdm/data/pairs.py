"""Prompt/response pairs for supervised fine-tuning (`data.format='pairs'`).

A pair becomes one row `BOS prompt response EOS PAD ...` of seq_len tokens with a segment id per
position: CONTEXT (BOS and the prompt: given, never masked or scored), RESPONSE (the response and
its EOS: what the loss covers) and PADDING. Sources: JSONL files (`data.source='text'`, fields
`data.prompt_key` / `data.response_key`) or, with no download, the embedded corpus: each
documented Python function of the stdlib, its signature and docstring as the prompt and its body
as the response (`data.source='embedded'`). The split rule is the documents' (crc32 of the key).
"""

from __future__ import annotations

import ast
import glob
import os
import textwrap

import numpy as np

from mdm.data import sources
from mdm.errors import DataError

PADDING, CONTEXT, RESPONSE = 0, 1, 2
Pair = tuple[str, str]


def _function_pair(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> Pair | None:
    """(signature + docstring, body) of a function whose first statement is its docstring."""
    body = node.body
    if len(body) < 2 or not isinstance(body[0], ast.Expr) or not isinstance(getattr(body[0], "value", None), ast.Constant):
        return None
    if not isinstance(body[0].value.value, str) or node.decorator_list:
        return None
    split_at = body[0].end_lineno  # the docstring's last line
    source = textwrap.dedent("".join(lines[node.lineno - 1 : node.end_lineno]))
    cut = split_at - node.lineno + 1
    source_lines = source.splitlines(keepends=True)
    prompt, response = "".join(source_lines[:cut]), "".join(source_lines[cut:])
    return (prompt, response) if response.strip() else None


def python_function_pairs(split: str, val_percent: int) -> list[Pair]:
    """The embedded corpus's documented functions of `split` (split by file, as its documents)."""
    pairs = []
    for document in sources.embedded_documents(split, val_percent):
        text = document.decode("utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                pair = _function_pair(lines, node)
                if pair is not None:
                    pairs.append(pair)
    return pairs


def jsonl_pairs(pattern: str, prompt_key: str, response_key: str, split: str, val_percent: int) -> list[Pair]:
    """Pairs from the JSONL files matching `pattern`; a line without both text fields, or with an
    empty response, is a one-line DataError naming the file and line."""
    sources.check_split(split)
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"no files match data.path={pattern!r}: set data.path to a glob of .jsonl prompt/response files")
    pairs = []
    for path in paths:
        for number, line, record in sources.jsonl_records(path):
            fields = [record.get(k) if isinstance(record, dict) else None for k in (prompt_key, response_key)]
            if not all(isinstance(v, str) for v in fields):
                raise DataError(
                    f"{path}:{number} lacks the text fields {prompt_key!r} and {response_key!r}: "
                    "set data.prompt_key / data.response_key to the fields holding them"
                )
            if not fields[1].strip():
                raise DataError(f"{path}:{number} has an empty {response_key!r}: drop the line or give a response")
            if sources.in_validation(line, val_percent) == (split == "validation"):
                pairs.append((fields[0], fields[1]))
    return pairs


def encode_pair(prompt_ids: np.ndarray, response_ids: np.ndarray, seq_len: int, bos: int, eos: int, pad: int) -> dict:
    """{'tokens': int32[seq_len], 'segments': int8[seq_len]} of `BOS prompt response EOS PAD...`.

    A response that does not fit is cut (and then has no EOS); a prompt that leaves no room for
    a response token is a DataError.
    """
    head = np.concatenate([[bos], prompt_ids]).astype(np.int32)
    if len(head) >= seq_len:
        raise DataError(
            f"a prompt of {len(prompt_ids)} tokens leaves no room for a response in data.seq_len={seq_len}: "
            "raise data.seq_len or shorten the prompt"
        )
    tail = np.concatenate([response_ids, [eos]]).astype(np.int32)[: seq_len - len(head)]
    tokens = np.full((seq_len,), pad, np.int32)
    segments = np.full((seq_len,), PADDING, np.int8)
    tokens[: len(head)], segments[: len(head)] = head, CONTEXT
    end = len(head) + len(tail)
    tokens[len(head) : end], segments[len(head) : end] = tail, RESPONSE
    return {"tokens": tokens, "segments": segments}
