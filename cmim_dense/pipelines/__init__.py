"""Multi-run pipelines on top of the train/test runs: the pretrain -> transfer chain, the
one-command demo, and seed sweeps. They take config paths as arguments (the package ships no
configs); ``tools/demo.py`` and ``tools/sweep.py`` pass the repository's."""
