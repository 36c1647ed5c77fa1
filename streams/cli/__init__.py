"""The ``tollway`` command line (streams/cli/main.py).

Every tollway process starts here, before numpy is imported: numpy's OpenBLAS would start one spinning thread per
core for matrix products of a few rows (an embedding batch, a cache search), threads that compete with the process's
own event loop and the broker for CPU (measured: ~5 % of a co-located worker's instructions). One thread by default;
an operator who wants more sets ``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``) and it is left alone.

The same for Hugging Face ``tokenizers`` (the embedder's and the injection detector's tokenizers): ``encode_batch`` of
more than one text fans out to a Rayon thread pool whose workers spin before they sleep — for the 1–4 short prompts of
a stage's batch that is pure overhead: ~250–280 µs of other threads' CPU per call of three prompts on top of ~400 µs
(measured on this 2-vCPU VM, a call every 2 ms). Off by default (``TOKENIZERS_PARALLELISM=false``, read at every
call); an operator who sets the variable is left alone.
"""

import os

if "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
