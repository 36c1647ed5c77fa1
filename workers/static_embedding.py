"""The default embedder: WordLlama ``l2_supercat`` static sentence embeddings (256-d), offline.

The weights (``wordllama/weights/l2_supercat_256.safetensors``, float16,
32000 x 256) and the tokenizer (``wordllama/tokenizers/
l2_supercat_tokenizer_config.json``, LLaMA-2 SentencePiece vocabulary) ship
inside the ``wordllama`` wheel on PyPI. This module reads those two files
straight from the installed package and never touches the network.

It deliberately does NOT call ``wordllama.WordLlama.load()``: in
wordllama 0.4.0.post1 that resolver looks for the tokenizer in a folder
named ``tokenizer/`` (the wheel ships ``tokenizers/``) and then falls back to
downloading from Hugging Face. It also does not import the ``wordllama``
package at all (that import costs ~0.5 s and pulls in requests/pydantic):
the package directory is located with ``importlib.util.find_spec``, which
does not execute it.

Embedding = mean of the token vectors (no special tokens), L2-normalised,
which is exactly what ``WordLlamaInference.embed(texts, norm=True)`` computes
(verified bit-identical in the evaluation; docs/SEMANTIC_CACHE.md has the
comparison with the other candidates, the provenance checks and the licence).

``name`` is the model's identity: package version, dimension and a hash of the
weights and tokenizer. The cache keeps each identity's vectors apart
(``workers.cache.store``), so a model change never compares vectors of two
models; ``tollway cache reembed`` moves the semantic index to the new model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.errors import ConfigError
from workers.embedding import text_vectors

__all__ = ["EmbedderUnavailableError", "StaticEmbedder"]

_PACKAGE: Final = "wordllama"
_CONFIG: Final = "l2_supercat"
_WEIGHTS_REL: Final = ("weights", "l2_supercat_256.safetensors")
_TOKENIZER_REL: Final = ("tokenizers", "l2_supercat_tokenizer_config.json")
_TENSOR_KEY: Final = "embedding.weight"
_CHUNK_TOKENS: Final = 16384  # bounds the temporary gather for very long texts


class EmbedderUnavailableError(ConfigError):
    """The package that carries the model files is not installed (or is broken)."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailableError(
            f"the '{_PACKAGE}' package, which ships the embedding weights, is not installed; "
            f"install it with: pip install 'wordllama==0.4.0.post1'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _required_file(base: Path, rel: tuple[str, ...]) -> Path:
    path = base.joinpath(*rel)
    if not path.is_file():
        raise EmbedderUnavailableError(
            f"'{_PACKAGE}' is installed at {base} but lacks its bundled model file "
            f"{'/'.join(rel)}; reinstall it from the PyPI wheel"
        )
    return path


class StaticEmbedder:
    """WordLlama l2_supercat static embeddings, loaded from the installed wheel.

    Args:
        dim: 64, 128 or 256 (WordLlama is Matryoshka-trained, so a prefix of
            the 256-d vector is a valid smaller embedding). 256 is best.
    """

    name: str
    dim: int

    def __init__(self, dim: int = 256) -> None:
        if dim not in (64, 128, 256):
            raise ValueError("dim must be 64, 128 or 256")
        try:
            from safetensors.numpy import load as load_safetensors
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - wordllama depends on both
            raise EmbedderUnavailableError(
                "safetensors and tokenizers are required (dependencies of wordllama)"
            ) from exc

        base = _package_dir()
        weights_path = _required_file(base, _WEIGHTS_REL)
        tokenizer_path = _required_file(base, _TOKENIZER_REL)
        weights_bytes = weights_path.read_bytes()
        tokenizer_bytes = tokenizer_path.read_bytes()

        tensors = load_safetensors(weights_bytes)
        if _TENSOR_KEY not in tensors:
            raise EmbedderUnavailableError(f"{weights_path} has no tensor {_TENSOR_KEY!r}")
        table = tensors[_TENSOR_KEY]
        self._table: npt.NDArray[np.float32] = np.ascontiguousarray(
            table[:, :dim], dtype=np.float32
        )
        self._vocab = int(self._table.shape[0])

        self._tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

        try:
            version = importlib.metadata.version(_PACKAGE)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            version = "unknown"
        digest = hashlib.sha256(weights_bytes + b"\0" + tokenizer_bytes).hexdigest()[:12]
        self.dim = dim
        self.name = f"wordllama-{_CONFIG}-{version}-d{dim}-{digest}"

        # Texts that produce no tokens (e.g. "") get a zero row, as the Embedder protocol says: they match nothing.
        self._empty: npt.NDArray[np.float32] = np.zeros(dim, dtype=np.float32)

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        # Pure CPU and ~0.05 ms per short text: cheaper inline than a thread hop.
        return self.embed_sync(texts)

    def embed_sync(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``; returns float32 array (len(texts), dim), unit-norm rows (zero rows for empty text)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a single string")
        return text_vectors(self.name).embed(texts, self.dim, self._embed)

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # encode_batch_fast: the same ids without the character offsets (half the tokenizer's CPU); older
        # tokenizers have only encode_batch.
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        id_lists = [enc.ids for enc in encode(list(texts), add_special_tokens=False)]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        if lengths.min() == 0 or lengths.max() > _CHUNK_TOKENS:  # empty or very long texts: one row at a time
            for row, ids in enumerate(id_lists):
                out[row] = self._row(np.asarray(ids, dtype=np.int64))
            return out
        # The batch a token position at a time, rows longest first: position p adds the p-th token's row to every
        # text that long, so each text's tokens are summed in order from its first, as ``sum(axis=0)`` does a row
        # at a time; each norm is the row's own dot product, as ``np.linalg.norm`` takes it. The same bits as a text
        # at a time, without numpy's per-call overhead several times a text. A batch whose longest text has many
        # more tokens than the batch has texts (one long text among short ones) goes a text at a time.
        longest = int(lengths.max())
        if longest > 4 * len(texts):
            for row, ids in enumerate(id_lists):
                out[row] = self._row(np.asarray(ids, dtype=np.int64))
            return out
        order = np.argsort(-lengths, kind="stable")
        padded = np.zeros((len(texts), longest), dtype=np.int64)
        for slot, row in enumerate(order.tolist()):
            padded[slot, : lengths[row]] = id_lists[row]
        np.clip(padded, 0, self._vocab - 1, out=padded)
        active = np.searchsorted(-lengths[order], -np.arange(longest), side="left")  # texts longer than p
        sums = self._table[padded[:, 0]]
        for position in range(1, longest):
            count = int(active[position])
            sums[:count] += self._table[padded[:count, position]]
        norms = np.sqrt(np.fromiter((row.dot(row) for row in sums), dtype=np.float32, count=len(sums)))
        sorted_out = sums / norms[:, None]
        sorted_out[~(norms > 1e-12)] = self._empty
        out[order] = sorted_out
        return out

    def _row(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        if ids.size == 0:
            return self._empty
        np.clip(ids, 0, self._vocab - 1, out=ids)
        if ids.size <= _CHUNK_TOKENS:
            acc = self._table[ids].sum(axis=0, dtype=np.float32)
        else:
            acc = np.zeros(self.dim, dtype=np.float32)
            for start in range(0, ids.size, _CHUNK_TOKENS):
                acc += self._table[ids[start : start + _CHUNK_TOKENS]].sum(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(acc))
        return acc / norm if norm > 1e-12 else self._empty

    def word_vectors(self, words: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Unit vectors of single words (mean of their tokens) and each word's rarity in [0, 1].

        Rarity is ``log(1 + highest token id) / log(vocabulary)``: SentencePiece ids grow as merges get rarer, so a
        word made of late tokens ("quail", "X200") is rare and one of early tokens ("egg", "long") is common. The
        cache's pair verifier uses both (``workers.cache.verifier``)."""
        vectors = np.zeros((len(words), self.dim), dtype=np.float32)
        rarity = np.zeros(len(words), dtype=np.float32)
        encodings = self._tokenizer.encode_batch([" " + word for word in words], add_special_tokens=False)
        log_vocab = float(np.log(self._vocab))
        for row, enc in enumerate(encodings):
            ids = np.clip(np.asarray(enc.ids, dtype=np.int64), 0, self._vocab - 1)
            if ids.size == 0:
                continue
            acc = self._table[ids].sum(axis=0, dtype=np.float32)
            norm = float(np.linalg.norm(acc))
            if norm > 1e-12:
                vectors[row] = acc / norm
            rarity[row] = float(np.log1p(ids.max())) / log_vocab
        return vectors, rarity
