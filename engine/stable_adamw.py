"""StableAdamW: AdamW with AMSGrad and update clipping (Wortsman et al. 2023, "Stable and
low-precision training for large-scale vision-language models", Alg. 2), as in the
reference (the update rule is written out in the class docstring).

One step over a parameter group is a few operations on flat buffers (`engine.flat_buffers.FlatGroup`:
75 aten ops for Dinomaly's 100 trainable tensors, 175 when gradients set from outside are
copied in, where the per-tensor form makes about 5,700) and never waits for the GPU: the
clipping factor of each tensor stays on the device. Groups that cannot be flat (mixed devices or dtypes, a parameter without gradient,
`flat=False`) take the per-tensor form, `_plain_step`, which the flat step equals to float
round-off (the per-tensor `rms` is summed in another order).
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from engine.flat_buffers import FlatGroup


class StableAdamW(Optimizer):
    """`w *= 1 - lr·wd`; `denom = sqrt(v̂_max) / sqrt(1 - β2^t) + eps`;
    `step = lr / (1 - β1^t) / max(1, rms(g / denom) / clip_threshold)`; `w -= step · m / denom`.
    The learning rate is read from each param group at every step.

    Args:
        flat: keep each group's parameters, gradients and moments in flat buffers (the
            parameters become views of one buffer, now; `zero_grad` then zeroes gradients in
            place, as torch 1.x's default did for the reference, instead of setting None).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 clip_threshold: float = 1.0, flat: bool = True) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid StableAdamW settings: lr={lr}, eps={eps}, betas={betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.clip_threshold = clip_threshold
        self.flat = flat
        self._flat_groups: dict[int, FlatGroup | None] = {}
        for i in range(len(self.param_groups)):  # now, before torch.compile or DDP see them
            self._flat_group(i)

    def _flat_group(self, i: int) -> FlatGroup | None:
        """Group i's flat buffers (built again if a parameter moved), or None."""
        params = self.param_groups[i]["params"]
        flat = self._flat_groups.get(i)
        if flat is None or not flat.holds(params):
            moments = ("exp_avg", "exp_avg_sq") + (
                ("max_exp_avg_sq",) if self.param_groups[i]["amsgrad"] else ())
            flat = (FlatGroup(params, moments) if self.flat and FlatGroup.flattenable(params)
                    else None)
            self._flat_groups[i] = flat
        return flat

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            flat = self._flat_group(i)
            states = [self.state[p] for p in group["params"]]
            if (flat is not None and group["eps"] > 0  # eps 0: 0/0 in the gaps
                    and len({s.get("step", 0) for s in states}) == 1 and flat.adopt_grads()):
                self._flat_step(group, flat, states)
            else:
                self._plain_step(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Flat groups: gradients zeroed in place in their buffer (whatever `set_to_none`);
        other groups as torch's `zero_grad`."""
        for i, group in enumerate(self.param_groups):
            flat = self._flat_group(i)
            if flat is not None:
                flat.zero_grads()
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    # ----------------------------------------------------------------- the flat step

    def _flat_step(self, group: dict, flat: FlatGroup, states: list[dict]) -> None:
        """The step of every tensor of the group at once (same formulas as `_plain_step`)."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        exp_avg = flat.moment("exp_avg", states)
        exp_avg_sq = flat.moment("exp_avg_sq", states)
        second = flat.moment("max_exp_avg_sq", states) if group["amsgrad"] else exp_avg_sq
        step = states[0].get("step", 0) + 1
        for state in states:
            state["step"] = step
        grad = flat.grad_buffer
        # moments, element for element as the per-tensor form
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(second, exp_avg_sq, out=second)
        denom, ratio = flat.scratch()
        torch.sqrt(second, out=denom).div_(math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        # per tensor: rms(grad / denom), the clipping factor and the step size, on the device
        torch.div(grad, denom, out=ratio).mul_(ratio)
        rms = (flat.segment_sums(ratio) / flat.numel_tensor).sqrt_()  # float64, n_tensors
        scale = (rms / self.clip_threshold).clamp_(min=1.0)
        step_size = (-(lr / (1 - beta1 ** step)) / scale).to(flat.dtype)
        # decoupled weight decay, then w += (-step · m) / denom
        flat.param_buffer.mul_(1 - lr * group["weight_decay"])
        torch.mul(flat.rows(exp_avg), flat.per_row(step_size), out=flat.rows(ratio))
        flat.param_buffer.addcdiv_(ratio, denom)

    # ----------------------------------------------------------------- the per-tensor form

    def _plain_step(self, group: dict) -> None:
        """Tensor by tensor (the reference's loop, with one transfer of all `rms` values)."""
        params = [p for p in group["params"] if p.grad is not None]
        # pass 1: moments and rms(g / denom) of every parameter, fetched from the device
        # in one transfer (one sync per step instead of one per parameter)
        rms = [self._update_moments(p, group) for p in params]
        rms = torch.stack(rms).tolist() if rms else []
        # pass 2: the clipped update (denom recomputed: the same values, no extra memory)
        for p, r in zip(params, rms):
            state = self.state[p]
            p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
            step_size = (group["lr"] / (1 - group["betas"][0] ** state["step"])
                         / max(1.0, r / self.clip_threshold))
            p.addcdiv_(state["exp_avg"], self._denom(state, group), value=-step_size)

    def _update_moments(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Advance the step count and moments of `p`; returns `rms(grad / denom)` (0-dim)."""
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("StableAdamW does not support sparse gradients")
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
            if name not in state:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"], out=state["max_exp_avg_sq"])
        return grad.div(self._denom(state, group)).pow(2).mean().sqrt()

    @staticmethod
    def _denom(state: dict, group: dict) -> torch.Tensor:
        """`sqrt(v) / sqrt(1 - β2^t) + eps`, v the (max, with AMSGrad) second moment."""
        second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        bias_correction2 = 1 - group["betas"][1] ** state["step"]
        return (second.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
