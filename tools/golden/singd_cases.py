"""Golden trajectories of the official SINGD beyond tests/golden/singd_{dense,diagonal}.

Runs the official optimizer (f-dangel/singd @1ac69a3, singd/optim/optimizer.py)
and writes tests/golden/singd_<case>.pt with keys init.<p>, x.<t>, y.<t>,
loss.<t>, after.<t>.<p> (the layout of tests/golden/README.md).

Inputs: Debian's python3-torch 1.13 plus the official singd, einops and einconv
sources on PYTHONPATH (not part of this repository):
    PYTHONPATH=<singd>:<einops>:<einconv> /usr/bin/python3 tools/golden/singd_cases.py
The test-only structures of the official code (Block3DiagonalMatrix,
Hierarchical3_2Matrix and the four recursive triangular classes) are registered
under the keys the C++ port uses (block3diagonal, hierarchical3_2, ...).
"""
import os

import torch
from torch import nn

from singd.optim.optimizer import SINGD
from singd.structures.blockdiagonal import Block3DiagonalMatrix
from singd.structures.hierarchical import Hierarchical3_2Matrix
from singd.structures.trilbottomrightdiag import TrilBottomRightDiagonalMatrix
from singd.structures.triltopleftdiag import TrilTopLeftDiagonalMatrix
from singd.structures.triubottomrightdiag import TriuBottomRightDiagonalMatrix
from singd.structures.triutopleftdiag import TriuTopLeftDiagonalMatrix

SINGD.SUPPORTED_STRUCTURES.update(
    {
        "block3diagonal": Block3DiagonalMatrix,
        "hierarchical3_2": Hierarchical3_2Matrix,
        "trilbottomrightdiag": TrilBottomRightDiagonalMatrix,
        "triltopleftdiag": TrilTopLeftDiagonalMatrix,
        "triubottomrightdiag": TriuBottomRightDiagonalMatrix,
        "triutopleftdiag": TriuTopLeftDiagonalMatrix,
    }
)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden")
STEPS = 8


def mlp():  # Linear(9,7) -> Tanh -> Linear(7,5): K dims 10/8, C dims 7/5
    return nn.Sequential(nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 5))


class ConvNet(nn.Module):  # conv(2->3, 3x3, pad 1, stride 1) -> tanh -> linear
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def run(name, model, make_batch, **kwargs):
    torch.manual_seed(0)
    rec = {f"init.{k}": v.detach().clone() for k, v in model.named_parameters()}
    opt = SINGD(model, **kwargs)
    for t in range(1, STEPS + 1):
        x, y = make_batch()
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec[f"x.{t}"], rec[f"y.{t}"], rec[f"loss.{t}"] = x, y, loss.detach()
        for k, v in model.named_parameters():
            rec[f"after.{t}.{k}"] = v.detach().clone()
    torch.save(rec, os.path.join(OUT, f"singd_{name}.pt"))
    print(name, "final loss", float(loss))


def mlp_batch():
    return torch.randn(6, 9), torch.randn(6, 5)


def seq_batch():
    return torch.randn(3, 4, 9), torch.randn(3, 4, 5)


def conv_batch():
    return torch.randn(3, 2, 4, 4), torch.randn(3, 2)


def main():
    common = dict(lr=1e-2, momentum=0.9, damping=1e-3, lr_cov=5e-2)
    torch.manual_seed(1)
    run("block_hier", mlp(), mlp_batch, T=1, alpha1=0.5, weight_decay=1e-2,
        structures=("block3diagonal", "hierarchical3_2"), **common)
    torch.manual_seed(2)
    run("toeplitz_ikfac", mlp(), mlp_batch, T=1, alpha1=0.0, kfac_like=True,
        structures=("triltoeplitz", "triutoeplitz"), **common)
    torch.manual_seed(3)
    run("hier_block_norm", mlp(), mlp_batch, T=3, alpha1=0.5,
        normalize_lr_cov=True, structures=("hierarchical3_2", "block3diagonal"),
        **dict(common, lr_cov=0.5))
    torch.manual_seed(4)
    run("arrows_a", mlp(), mlp_batch, T=1, alpha1=0.5,
        structures=("trilbottomrightdiag", "triutopleftdiag"), **common)
    torch.manual_seed(5)
    run("arrows_b", mlp(), mlp_batch, T=2, alpha1=0.5,
        structures=("triltopleftdiag", "triubottomrightdiag"), **common)
    torch.manual_seed(6)
    run("seq_reduce", mlp(), seq_batch, T=1, alpha1=0.5, kfac_approx="reduce",
        loss_average="batch+sequence", structures=("dense", "diagonal"), **common)
    torch.manual_seed(7)
    run("seq_expand_sum", mlp(), seq_batch, T=1, alpha1=0.5, loss_average=None,
        structures=("dense", "dense"), **common)
    torch.manual_seed(8)
    run("conv_expand", ConvNet(), conv_batch, T=1, alpha1=0.5,
        structures=("dense", "dense"), **common)
    torch.manual_seed(9)
    run("conv_reduce", ConvNet(), conv_batch, T=1, alpha1=0.5,
        kfac_approx="reduce", loss_average="batch+sequence",
        structures=("hierarchical3_2", "dense"), **common)
    torch.manual_seed(10)
    run("lr_cov_schedule", mlp(), mlp_batch, T=1, alpha1=0.5,
        structures=("dense", "dense"),
        **dict(common, lr_cov=lambda s: 1e-2 * (1 + s)))


if __name__ == "__main__":
    main()
