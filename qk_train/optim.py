"""Optimizers of the main stage: AdamW for every parameter (`train.optimizer: adamw`), or Muon
for the hidden 2-D weight matrices with AdamW for the rest (`train.optimizer: muon`).

Muon (orthogonalised momentum) updates the matrices inside the transformer blocks of the
decoder, the gateway and the gate; embeddings, the output layer, biases, norms and the
learnable queries stay on AdamW, as Muon's authors advise. Its updates are scaled to AdamW's
RMS (0.2 * sqrt(max(rows, cols)), as in Moonlight), so both parts share one learning-rate
schedule.

`Muon` below orthogonalises all matrices of one shape together (one batched bfloat16
Newton-Schulz iteration per shape instead of one per matrix): on a 2-core CPU the small decoder's
78 matrices fall into 6 shapes, and the batched iteration takes about three quarters of the
per-matrix loop's time. Its state (one `momentum_buffer` per matrix) and its group settings are
those of `torch.optim.Muon`, so a run saved with either resumes with the other.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import ModelConfig

ADAM_BETAS = (0.9, 0.99)


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block (what Muon is for)."""
    return param.ndim == 2 and ".blocks." in f".{name}"


def make_optimizer(cfg: ModelConfig, params: dict[str, torch.nn.Parameter], lr: float):
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=ADAM_BETAS)
    hidden = [p for n, p in params.items() if is_hidden_matrix(n, p)]
    rest_decay = [p for n, p in params.items() if p.ndim >= 2 and not is_hidden_matrix(n, p)]
    if not hidden:  # e.g. only the codec trains: nothing for Muon
        return make_optimizer(cfg.replace(train={"optimizer": "adamw"}), params, lr)
    return MuonAdamW(hidden, [{"params": rest_decay, "weight_decay": cfg.train.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr, cfg.train.weight_decay)


# The quintic Newton-Schulz coefficients of Muon's authors: they push every singular value of the
# normalised momentum towards 1 in a few steps (to within about +-0.3, which is enough).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(stack: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T of each matrix in `stack` (n, rows, cols), in bfloat16, as float32."""
    a, b, c = NS_COEFFICIENTS
    x = stack.to(torch.bfloat16)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # iterate on the side with fewer rows: the Gram matrix stays small
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * G + c * G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a * X + (b * G + c * G^2) X
    return (x if wide else x.mT).float()


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: Nesterov momentum, orthogonalised per matrix, scaled to AdamW's RMS,
    decoupled weight decay. Matrices of one shape are orthogonalised in one batch."""

    def __init__(self, params, lr: float, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str = "match_rms_adamw"):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D weight matrices only; give the others to AdamW")
            if tuple(group["ns_coefficients"]) != NS_COEFFICIENTS or group["adjust_lr_fn"] != "match_rms_adamw":
                raise ValueError("this Muon implements the default coefficients and adjust_lr_fn='match_rms_adamw' only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            by_shape: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, items in by_shape.items():
                ortho = orthogonalise(torch.stack([u for _, u in items]), group["ns_steps"], group["eps"])
                scaled_lr = lr * 0.2 * max(shape) ** 0.5
                for (p, _), o in zip(items, ortho):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(o, alpha=-scaled_lr)
        return loss


class MuonAdamW:
    """Muon and AdamW stepped together, with one `param_groups` list and one state dict (so
    the training loop, its learning-rate schedule and checkpoints treat it as one optimizer)."""

    def __init__(self, hidden: list[torch.nn.Parameter], adamw_groups: list[dict], lr: float, weight_decay: float):
        self.parts = (
            Muon(hidden, lr=lr, weight_decay=weight_decay),
            torch.optim.AdamW(adamw_groups, lr=lr, betas=ADAM_BETAS),
        )

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        """The parts' states with parameter numbers running on from one part to the next; each
        group says which part it belongs to."""
        state: dict[int, Any] = {}
        groups: list[dict] = []
        offset = 0
        for k, part in enumerate(self.parts):
            sd = part.state_dict()
            state.update({i + offset: v for i, v in sd["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]], "part": k} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        offset = 0
        for k, part in enumerate(self.parts):
            groups = [g for g in sd["param_groups"] if g.get("part") == k]
            if len(groups) != len(part.param_groups):
                raise ValueError(f"optimizer state has {len(groups)} groups for part {k}, this run {len(part.param_groups)}; "
                                 "was it saved with another train.optimizer?")
            ids = [i for g in groups for i in g["params"]]
            part.load_state_dict({
                "state": {i - offset: sd["state"][i] for i in ids if i in sd["state"]},
                "param_groups": [{**{key: v for key, v in g.items() if key != "part"},
                                  "params": [i - offset for i in g["params"]]} for g in groups],
            })
            offset += len(ids)
