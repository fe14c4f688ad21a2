"""``benchmarks/train_bench.py`` with the reference's optimizer: every run's optimizer is
:class:`bioprop.rules.emstdp.EMSTDPRMSprop` (``m = 0.9 m + 0.1 g^2`` from ``m = 1``,
``W += lr g / sqrt(m + 1e-8)``) at the config's ``optim.lr``, instead of the config's
``optim.name`` (the trainer offers SGD / Adam / AdamW only). Rows are written with
``bench: emstdp_refopt`` (the results table labels them).

    OMP_NUM_THREADS=1 python benchmarks/emstdp_refopt.py --config configs/emstdp_mnist_symmetric.yaml \
        --data-dir DIR --out benchmarks/results/emstdp.jsonl --bench emstdp_refopt [section.key=value ...]
"""

from __future__ import annotations

import train_bench  # noqa: E402  (puts src/ on the path)

import bioprop.train.trainer as trainer_mod  # noqa: E402
from bioprop.rules.emstdp import EMSTDPRMSprop  # noqa: E402


def _reference_optimizer(params, c, no_weight_decay=()):
    return EMSTDPRMSprop(list(params), lr=c.lr)


if __name__ == "__main__":
    trainer_mod.build_optimizer = _reference_optimizer
    train_bench.main()
