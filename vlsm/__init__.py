"""The toolkit's library: what the scripts share besides ``models``, ``datasets`` and ``engine``.

Bottom layer (imports only torch/numpy and the standard library; ``models`` and ``datasets`` may use it):
``metrics``, ``losses``, ``runtime``, ``checkpoint``, ``optim``, ``cli``.
Top layer (puts models, datasets and the engine together; used by the scripts): ``scoring``, ``training``.
See docs/architecture.md.
"""
