"""Write the embedded MNIST subset shipped in ``src/bioprop/data/embedded/``.

The subset is fixed: the first 20,000 images of MNIST's training set and the first 2,000 of its
test set, in the standard IDX format, gzipped at level 9 with mtime 0 (reproducible bytes).

    python tools/make_embedded_mnist.py [MNIST_DIR]     (default: ../shared/data/mnist)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bioprop.data.formats import read_idx, write_idx  # noqa: E402

N_TRAIN, N_TEST = 20_000, 2_000


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "mnist"
    out = ROOT / "src" / "bioprop" / "data" / "embedded"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        for kind, nd in (("images-idx3", 3), ("labels-idx1", 1)):
            name = f"{split}-{kind}-ubyte"
            f = src / f"{name}.gz"
            if not f.is_file():
                f = src / name
            a = read_idx(f, expect_ndim=nd)[:n]
            write_idx(out / f"{name}.gz", a)
            print(f"{out / (name + '.gz')}: {a.shape}, {(out / (name + '.gz')).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
