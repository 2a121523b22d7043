"""Training child of the kill -9 trials: prints ``STEP k`` after each step so the parent can kill it anywhere.

Usage: train_child.py stage1|stage2 CHECKPOINT_DIR ITERATIONS EVERY STAGE1_CHECKPOINT|- OUT|-
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lcmsr.progress import Progress  # noqa: E402
from lcmsr.train import train_autoencoder, train_consistency  # noqa: E402
from robustness_cases import train_options  # noqa: E402


class StepPrinter(Progress):
    def report(self, fraction, message=""):
        if message.startswith("step "):
            print("STEP", message.split()[1].split("/")[0], flush=True)


def main() -> int:
    stage, ckdir, iterations, every, stage1, out = sys.argv[1:7]
    torch.set_num_threads(1)  # the parent's reference run uses one thread too: bit-identical losses
    opts = train_options(ckdir, int(iterations), int(every), resume=True,
                         stage1=None if stage1 == "-" else stage1, out=None if out == "-" else out)
    (train_consistency if stage == "stage2" else train_autoencoder)(opts, StepPrinter())
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
