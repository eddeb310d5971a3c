"""The ``triton-rerank`` application: the command line (``cli.py``), feature-file
loaders and the embedded datasets (``data.py``), synthetic re-ID-like data
(``synthetic.py``), pictures (``visual.py``) and the ``bench`` measurements
(``benchmarking.py``). No module of the library imports this package (the package root re-exports
``load_features`` and ``load_digits_split`` lazily, for users)."""
