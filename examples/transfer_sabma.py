"""Few-shot Bayesian transfer with SA-BMA, against SGD and SWAG.

Pretrain an MLP (with LayerNorm) on digits 0-4, collect a SWAG posterior on it, then
fine-tune only the LayerNorm parameters and a fresh head on 10 examples per class of
digits 5-9. SA-BMA trains a low-rank Gaussian over those parameters with a
sharpness-aware step in the Fisher geometry of the Gaussian; the frozen backbone is
drawn from the source SWAG posterior at every step. Prints ACC / NLL / ECE before and
after temperature scaling, and the mean top Hessian eigenvalue over the BMA samples.

Run: ``python examples/transfer_sabma.py`` (``--quick`` or ``FLATJAX_EXAMPLES_QUICK=1``
for a tiny budget).
"""

import os
import sys

from flatjax.data import load_digits, split_classes
from flatjax.transfer import TransferConfig, run_transfer

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"

digits = load_digits()
source = split_classes(digits, [0, 1, 2, 3, 4])
target = split_classes(digits, [5, 6, 7, 8, 9])

budget = (
    dict(source_epochs=3, swag_epochs=2, swag_rank=2, epochs=4, num_bma=4, hidden=(16,))
    if QUICK
    else dict(source_epochs=30, swag_epochs=10, epochs=150, num_bma=30)
)

print(f"{'method':<8} {'ACC':>7} {'NLL':>7} {'ECE':>7} {'NLL-TS':>7} {'ECE-TS':>7} {'lambda1':>8}")
for method in ("sabma", "sgd", "swag"):
    report = run_transfer(TransferConfig(method=method, shots=10, **budget), source, target)
    test, scaled = report["test"], report["test_temperature_scaled"]
    print(
        f"{method:<8} {test['accuracy']:7.4f} {test['nll']:7.4f} {test['ece']:7.4f} "
        f"{scaled['nll']:7.4f} {scaled['ece']:7.4f} {report['lambda_1_mean']:8.3f}"
    )
