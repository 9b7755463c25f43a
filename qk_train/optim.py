"""Optimizers of the main stage: AdamW for every parameter (`train.optimizer: adamw`), or Muon
for the hidden 2-D weight matrices with AdamW for the rest (`train.optimizer: muon`).

Muon (orthogonalised momentum) updates the matrices inside the transformer blocks of the
decoder, the gateway and the gate; embeddings, the output layer, biases, norms and the
learnable queries stay on AdamW, as Muon's authors advise. Its updates are scaled to AdamW's
RMS (`adjust_lr_fn="match_rms_adamw"`, as in Moonlight), so both parts share one learning-rate
schedule.
"""
from __future__ import annotations

from typing import Any

import torch

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


class MuonAdamW:
    """Muon and AdamW stepped together, with one `param_groups` list and one state dict (so
    the training loop, its learning-rate schedule and checkpoints treat it as one optimizer)."""

    def __init__(self, hidden: list[torch.nn.Parameter], adamw_groups: list[dict], lr: float, weight_decay: float):
        self.parts = (
            torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"),
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
