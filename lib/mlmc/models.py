"""One loading path for every model in the book: hub ids and local directories alike (all chapters).

``load(name_or_path, kind)`` goes through ``transformers.Auto*`` whether it is given a hub id such as
``"FacebookAI/xlm-roberta-base"`` (the ``full`` profile) or a directory written by ``save_pretrained`` (the tiny
models of :mod:`mlmc.zoo`, fine-tuning checkpoints). Offline, a hub id missing from the local cache raises one
:class:`ModelNotAvailableError` that says how to get the model, instead of a stack of connection errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from mlmc.errors import check_choice, check_int

AUTO_CLASSES = {
    "mlm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "encoder": AutoModel,
}
KINDS = tuple(AUTO_CLASSES)
_NEEDS_LABELS = ("seq-cls", "token-cls")


class ModelNotAvailableError(RuntimeError):
    """A hub model is neither on disk nor downloadable (offline mode or no connection)."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading/saving progress bars and load reports inside the block."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _is_offline() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _not_available(name: str, reason: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {name!r} is not available: {reason}. To use it, either download it on a machine with internet "
        f"access (`huggingface-cli download {name}`) and copy the Hugging Face cache here (point HF_HOME at it), "
        f"or pass the path of a local directory that holds the model (as written by `save_pretrained`). "
        f"The CPU default of the book needs no download: use `mlmc.zoo.get('tiny-xlmr' | 'tiny-mt5' | 'tiny-llama')`."
    )


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


def load(
    name_or_path: str | Path,
    kind: str,
    *,
    num_labels: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for ``kind`` from a hub id or a local ``save_pretrained`` directory.

    ``kind`` is one of ``"mlm"``, ``"causal-lm"``, ``"seq2seq"``, ``"seq-cls"``, ``"token-cls"``, ``"encoder"``;
    the classification kinds need ``num_labels``. Freshly initialised heads (e.g. a classifier on top of a
    pretrained encoder) are drawn under ``seed`` without touching the global RNG, so loading is repeatable.
    Extra ``kwargs`` go to ``from_pretrained`` (e.g. ``hidden_dropout_prob=0.1``, ``dtype=torch.bfloat16``).
    ``verbose=True`` keeps transformers' progress bars and load report (which weights were newly initialised).
    Used by every chapter; the zoo's tiny models load through here too.
    """
    check_choice("kind", kind, KINDS)
    if kind in _NEEDS_LABELS:
        if num_labels is None:
            raise ValueError(f"parameter 'num_labels' is required for kind {kind!r}")
        check_int("num_labels", num_labels, min_value=1)
        kwargs["num_labels"] = num_labels
    elif num_labels is not None:
        raise ValueError(f"parameter 'num_labels' only applies to kinds {list(_NEEDS_LABELS)}, got kind {kind!r}")
    name = str(name_or_path)
    path = Path(name).expanduser()
    is_hub = not path.is_dir()
    if is_hub and _looks_like_path(name):
        raise FileNotFoundError(f"parameter 'name_or_path': no model directory at {name!r}")
    source, local_only = (name, _is_offline()) if is_hub else (str(path), True)
    if is_hub and local_only and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise _not_available(name, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        with contextlib.nullcontext() if verbose else quiet_transformers(), torch.random.fork_rng(devices=[]):
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            torch.manual_seed(seed)
            model = AUTO_CLASSES[kind].from_pretrained(source, local_files_only=local_only, **kwargs)
    except OSError as err:
        if is_hub:
            raise _not_available(name, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
        raise
    model.to(device)
    model.eval()
    return model, tokenizer
