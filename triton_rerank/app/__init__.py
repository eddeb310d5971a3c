"""The ``triton-rerank`` application: the command line (``cli.py``), feature-file
loaders and the embedded datasets (``data.py``), synthetic re-ID-like data
(``synthetic.py``), pictures (``visual.py``) and the ``bench`` measurements
(``benchmarking.py``). The library never imports this package."""
