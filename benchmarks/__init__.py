"""Side-by-side performance benchmark behind ``scripts/benchmark.py``.

Every figure is a ratio of two measurements taken in the same process, on the
same model, data and optimizer, after warm-up, as the median of several
repeats (the two sides alternate, so a drifting machine load hits both):

- :mod:`.runners`  the two ways to train: resflex's Lightning step and a plain loop;
- :mod:`.sections` overhead, input pipeline, mixed resolution, memory, time-to-accuracy;
- :mod:`.loader`   the data path alone (``--sections loader``): images/s per core from
  photo-sized JPEGs, resflex's decoders vs timm's ``create_loader`` and torchvision;
- :mod:`.machine`  machine description and peak-memory readers (CUDA / CPU RSS);
- :mod:`.cli`      options, the table on stdout and the JSON file.

Nothing here imports Hydra/OmegaConf: the benchmark runs on machines that only
have torch, timm and Lightning.
"""
