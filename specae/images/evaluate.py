"""Evaluate a trained GAN on held-out real images, every figure beside its real-vs-real reference.

The held-out set is split into two random halves A and B. Each metric compares A with as many
generated images as B holds ("gan") and A with B ("real"): what two independent draws of real
images score is the floor a perfect generator would reach with that many images.

    report = evaluate_gan(gan, held_out, train)      # plain JSON-ready dict
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from specae.errors import SpecaeError
from specae.images.checkpoint import GAN
from specae.images.data import Images
from specae.images.features import FeatureExtractor, train_extractor
from specae.images.metrics import (MORPHOLOGY, kid, morphology, morphology_distances, nearest_distances,
                                   precision_recall, standardise)
from specae.images.sampling import sample, score


def extractor_for(gan: GAN, train: Images | None, fallback: Images, seed: int = 0) -> tuple[FeatureExtractor, str]:
    """The feature extractor cached in GAN/features, else one trained on `train` (or, without training
    images, on `fallback`) and cached there. Returns it and what it was trained on."""
    cache = gan.directory / "features" if gan.directory else None
    if cache is not None and (cache / "config.json").is_file():
        return FeatureExtractor.load(cache), f"cached in {cache}"
    on, what = (train, "the training images") if train is not None else (fallback, "held-out half A")
    ext = train_extractor(on, gan.stretch, seed=seed)
    if cache is not None:
        ext.save(cache)
    return ext, what


def evaluate_gan(gan: GAN, held_out: Images, train: Images | None = None, seed: int = 0) -> dict:
    """Morphology distances, KID, precision/recall, memorisation and D's scores of `gan` against the
    held-out real images (N >= 8, in the training images' units); `train` (the images it was trained
    on) is needed for memorisation and trains the feature extractor when none is cached."""
    if len(held_out) < 8:
        raise SpecaeError(f"{len(held_out)} held-out images; at least 8 are needed to compare two halves")
    shape = (gan.net.channels, gan.net.size, gan.net.size)
    if held_out.pixels.shape[1:] != shape:
        raise SpecaeError(f"{held_out.meta.get('source', 'images')}: images of shape {held_out.pixels.shape[1:]}; "
                          f"the GAN makes {shape}")
    order = np.random.default_rng(seed).permutation(len(held_out))
    half_a, half_b = held_out.select(order[:len(order) // 2]), held_out.select(order[len(order) // 2:])
    gen = sample(gan, len(half_b), seed=seed)
    m_a, m_b, m_gen = morphology(half_a.pixels), morphology(half_b.pixels), morphology(gen)
    d_gan, d_real = morphology_distances(m_a, m_gen), morphology_distances(m_a, m_b)

    ext, trained_on = extractor_for(gan, train, half_a, seed)
    f_a, f_b, f_gen = (ext.features(gan.stretch.forward(x)) for x in (half_a.pixels, half_b.pixels, gen))
    f_a, f_b, f_gen = standardise(f_a, f_b, f_gen)      # so no feature dominates the kernel and the distances
    pr_gan, pr_real = precision_recall(f_a, f_gen), precision_recall(f_a, f_b)

    logits_real, logits_gen = (score(gan.discriminator, gan.stretch, x) for x in (half_b.pixels, gen))
    report = {
        "n_held_out": len(held_out), "n_per_half": [len(half_a), len(half_b)], "n_generated": len(gen),
        "morphology": {k: {"gan": d_gan[k], "real": d_real[k]} for k in MORPHOLOGY},
        "morphology_median": {k: {"gan": float(np.median(m_gen[k])), "real": float(np.median(m_b[k]))} for k in MORPHOLOGY},
        "morphology_mean": {"gan": float(np.mean(list(d_gan.values()))), "real": float(np.mean(list(d_real.values())))},
        "morphology_max": {"gan": float(max(d_gan.values())), "real": float(max(d_real.values()))},
        "kid": {"gan": kid(f_a, f_gen), "real": kid(f_a, f_b)},
        "precision": {"gan": pr_gan["precision"], "real": pr_real["precision"]},
        "recall": {"gan": pr_gan["recall"], "real": pr_real["recall"]},
        # recall falling well below its real-vs-real value while precision holds is the signature of mode collapse
        "mode_collapse": bool(pr_gan["recall"] < 0.5 * pr_real["recall"] and pr_gan["precision"] >= 0.8 * pr_real["precision"]),
        "features": {"trained_on": trained_on, "targets": ext.names},
        "discriminator": {"mean_logit_real": float(logits_real.mean()), "mean_logit_generated": float(logits_gen.mean()),
                          "auc": auc(logits_real, logits_gen)},
    }
    if train is not None:
        report["memorisation"] = memorisation(gan, gen, half_b, train)
    return report


def memorisation(gan: GAN, generated: np.ndarray, held_out: Images, train: Images) -> dict:
    """Distances (in the stretched pixel space) from each generated and each held-out image to its nearest
    training image. ratio = median over generated / median over held-out: about 1 when the GAN invents,
    near 0 when it copies; `copies` is the fraction of generated images closer to the training set than
    every held-out image is."""
    to_train = gan.stretch.forward(train.pixels)
    d_gen = nearest_distances(gan.stretch.forward(generated), to_train)
    d_held = nearest_distances(gan.stretch.forward(held_out.pixels), to_train)
    return {"ratio": float(np.median(d_gen) / np.median(d_held)), "median_generated": float(np.median(d_gen)),
            "median_held_out": float(np.median(d_held)), "copies": float((d_gen < d_held.min()).mean())}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random `pos` score exceeds a random `neg` one (ties count half): D's ROC AUC."""
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
