"""Networks of lensml: plain ``nn.Module`` presets registered in :data:`lensml.registry.NETWORKS`.

Importing this package imports every network module so that their presets register (there are
no other side effects). Build a preset by name with :func:`lensml.train.build_network`::

    from lensml.train import build_network
    net = build_network("inception-small", {"out_features": 5})

Cluster regressors (the cluster weak-lensing paper): ``vgg19``, ``vgg22``, ``vgg-small``
(:mod:`lensml.nets.vgg`), ``inception-v4``, ``inception-resnet-v2``, ``inception-small``,
``inception-resnet-small`` (:mod:`lensml.nets.inception`); shared blocks in
:mod:`lensml.nets.blocks`.

Sérsic regressors (GaLNet paper): ``galnet-1`` (image), ``galnet-2`` (image + PSF packed as a
second channel), ``galnet-1-small``, ``galnet-2-small`` (:mod:`lensml.nets.galnet`; label
encoding in :mod:`lensml.nets.sersic_labels`). Shear estimators (CLASH shear paper):
``shear-cnn`` (the paper's six layers, 107,866 parameters) and ``shear-resnet``
(:mod:`lensml.nets.shear_cnn`). Strong lensing (AstroRIM paper): ``astrorim`` (lens-parameter
encoder + conditional forward operator + RIM, :mod:`lensml.nets.astrorim`,
:mod:`lensml.nets.astrorim_forward`, :mod:`lensml.nets.rim`) and ``astrorim-small``.
Pixelated strong lensing (RIM pixelated-source-and-mass paper): ``rim-pixelated`` (U-net with a
ConvGRU in every skip connection, paper size) and ``rim-pixelated-small``
(:mod:`lensml.nets.rim_pixelated`); the source and log10 κ VAEs ``vae-source``, ``vae-kappa``,
``vae-source-small``, ``vae-kappa-small`` (:mod:`lensml.nets.vae`).
"""

from __future__ import annotations

from lensml.nets import (
    astrorim,
    astrorim_forward,
    blocks,
    galnet,
    inception,
    rim,
    rim_pixelated,
    sersic_labels,
    shear_cnn,
    vae,
    vgg,
)

__all__ = [
    "astrorim",
    "astrorim_forward",
    "blocks",
    "galnet",
    "inception",
    "rim",
    "rim_pixelated",
    "sersic_labels",
    "shear_cnn",
    "vae",
    "vgg",
]
