"""The dataset's text read as word tokens, next to a frozen sentence embedding of it.

Where the main text modality is a frozen embedding (mpnet or MiniLM on ``clothing`` in the
standard profile), notebook 10 also trains the word-token models (a GRU and an
order-blind bag of words) on the token text, and notebook 40 stacks them with the
fusion networks. ``load_token_text`` gives the token view of a loaded dataset (itself
when its text already is tokens); ``token_text_members`` trains (or reads back from
the run cache) those models as members of ``mmlib.analysis.stacking.stacked_ensemble``.
"""
from __future__ import annotations

import inspect
from typing import Mapping

from mmlib.data import get_loader, load_for_profile
from mmlib.data.base import MultimodalDataset

TOKEN_TEXT_ARCHS = ("gru", "bow")  # word-order aware, order-blind


def load_token_text(name: str, profile: Mapping, ds: MultimodalDataset) -> MultimodalDataset | None:
    """The dataset registered as ``name`` (``ds`` is it, loaded for ``profile``) with its
    text as word tokens: ``ds`` itself when it already has a token text modality; the
    loader's token variant when the profile gave the text as frozen embeddings or as a
    TF-IDF n-gram bag (a loader with a ``text_encoder`` option); else None."""
    if any(mod.kind == "text" and mod.info.get("encoder_arch") != "tfidf" for mod in ds.modalities.values()):
        return ds
    if "text_encoder" in inspect.signature(get_loader(name)).parameters:
        return load_for_profile(name, dict(profile), text_encoder="tokens")
    return None


def token_text_members(ds: MultimodalDataset, tok: MultimodalDataset | None, profile: Mapping, notebook: str,
                       device: str) -> dict[str, list]:
    """Extra networks for ``stacked_ensemble`` when ``ds`` reads its text as frozen
    embeddings and ``tok`` is its token view (``load_token_text``): notebook 10's
    single-modality GRU and bag-of-words models on the token text (``{"text_gru": [run
    per seed], ...}``), read back from the run cache when 10 has run with the same code and
    profile (trained here otherwise). ``{}`` when there is no token view or it is ``ds``
    itself (the fusion networks already read the tokens)."""
    from mmlib.training.experiments import run_over_seeds

    if tok is None or tok is ds:
        return {}
    out = {}
    for m in [m for m, mod in tok.modalities.items() if mod.kind == "text"]:
        for arch in TOKEN_TEXT_ARCHS:
            out[f"{m}_{arch}"] = run_over_seeds(tok, "early", [m], profile["seeds"], profile=profile, notebook=notebook,
                                                experiment="text_encoder", model_name=f"{m}_{arch}", device=device,
                                                model_kwargs={"encoder_archs": {m: arch}}, progress=False)
    return out


__all__ = ["load_token_text", "token_text_members", "TOKEN_TEXT_ARCHS"]
