"""Export and import of trained spiking networks: NIR (:mod:`.nir_graph`; needs ``bioprop[nir]``)."""

from .nir_graph import (FORMAT, NIRExportError, export_run, fold_bn, from_nir, load_nir, reduce_readout, run_nir,
                        save_nir, to_nir)

__all__ = ["to_nir", "from_nir", "save_nir", "load_nir", "run_nir", "reduce_readout", "export_run", "fold_bn", "NIRExportError", "FORMAT"]
