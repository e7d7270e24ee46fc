"""The LERF field, ROS-free.

- ``hash_encoding``: multi-resolution hash encoding (tinycudann on CUDA, vectorised PyTorch otherwise)
- ``fields``: proposal density, density/colour (nerfacto-style), language ``F_lang(x, s)`` and ``F_dino(x)``
- ``sampling``: camera rays, scene contraction, the spacing function and the samplers
- ``rendering``: volume rendering kernels, interlevel and distortion losses
- ``model``: ``LerfModel`` (sampling + rendering + fields) and the losses
- ``frozen``: ``FrozenField``, the immutable snapshot implementing ``snapshot.FieldSnapshot``
"""
