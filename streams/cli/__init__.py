"""The ``tollway`` command line (streams/cli/main.py).

Every tollway process starts here, before numpy is imported: numpy's OpenBLAS would start one spinning thread per
core for matrix products of a few rows (an embedding batch, a cache search), threads that compete with the process's
own event loop and the broker for CPU (measured: ~5 % of a co-located worker's instructions). One thread by default;
an operator who wants more sets ``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``) and it is left alone.
"""

import os

if "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
