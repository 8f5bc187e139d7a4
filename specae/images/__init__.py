"""Images: galaxy cutouts, the DCGAN and dense GAN trained through the engine, metrics without downloaded weights.

    train, held, record = load_split("cutouts.npz")                 # Images (N, C, H, W), held-out part
    gan, history = fit_gan(train, held, GANConfig(width=32, max_minutes=5), out_dir="GAN", data=record)
    x = sample(load_gan("GAN"), 64)                                   # (64, C, H, W) in the images' units
    report = evaluate_gan(gan, held, train)                           # morphology, KID, P/R, memorisation
"""

from specae.images.checkpoint import GAN, load_gan, load_net
from specae.images.data import Images, load_split, read_images, reload_split, split_images
from specae.images.evaluate import evaluate_gan
from specae.images.objective import GANConfig, GANObjective
from specae.images.sampling import sample, score
from specae.images.synthetic import galaxies
from specae.images.train import fit_gan
from specae.images.transforms import AsinhStretch

__all__ = ["GAN", "GANConfig", "GANObjective", "AsinhStretch", "Images", "evaluate_gan", "fit_gan", "galaxies",
           "load_gan", "load_net", "load_split", "read_images", "reload_split", "sample", "score", "split_images"]
