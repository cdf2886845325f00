"""StableAdamW: AdamW with AMSGrad and update clipping (Wortsman et al. 2023, "Stable and
low-precision training for large-scale vision-language models", Alg. 2), as in the
reference (the update rule is written out in the class docstring).

One step over a parameter group is a few operations on flat buffers (`engine.flat_buffers.FlatGroup`:
75 aten ops for Dinomaly's 100 trainable tensors, 175 when gradients set from outside are
copied in, where the per-tensor form makes about 5,700) and never waits for the GPU: the
clipping factor of each tensor stays on the device. Groups that cannot be flat (mixed devices or dtypes, a parameter without gradient,
`flat=False`) take the per-tensor form, `_plain_step`, which the flat step equals to float
round-off (the per-tensor `rms` is summed in another order).

`skip_nonfinite` (Dinomaly2; off for Dinomaly): the preview code's rule for a gradient with a
NaN or ±Inf. It walks the parameters in group order and abandons the step at the first
parameter whose gradient is not finite: the parameters before it are updated, that one and
every later one (same and later groups) keep their weights, moments and step count. The
flat step applies the rule on the device (per-tensor finiteness, a running "alive" product
over tensors and groups, per-tensor step counts), so it still never waits for the GPU.
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
        skip_nonfinite: the preview code's non-finite rule (module docstring). The preview
            prints a line when it skips; here `nonfinite_skips` (a device tensor, None
            before the first step) counts the steps abandoned wholly or in part, to be read
            where the loop synchronises anyway (e.g. when it logs the loss).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 clip_threshold: float = 1.0, flat: bool = True,
                 skip_nonfinite: bool = False) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid StableAdamW settings: lr={lr}, eps={eps}, betas={betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.clip_threshold = clip_threshold
        self.flat = flat
        self.skip_nonfinite = skip_nonfinite
        self.nonfinite_skips: torch.Tensor | None = None
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
        if self.skip_nonfinite:
            self._guarded_step()
            return loss
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

    def _plain_step(self, group: dict, params: list[torch.Tensor] | None = None) -> None:
        """Tensor by tensor (the reference's loop, with one transfer of all `rms` values),
        over `params` (default: the group's parameters that have a gradient)."""
        if params is None:
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

    # ----------------------------------------------------------------- the non-finite rule

    def _guarded_step(self) -> None:
        """Every group in order under the non-finite rule; `alive` (1 or 0, on the device)
        carries "no non-finite gradient so far" from tensor to tensor and group to group."""
        alive = None
        for i, group in enumerate(self.param_groups):
            flat = self._flat_group(i)
            states = [self.state[p] for p in group["params"]]
            if flat is not None and group["eps"] > 0 and flat.adopt_grads():
                if alive is None:
                    alive = torch.ones(1, dtype=torch.float64, device=flat.device)
                alive = self._guarded_flat_step(group, flat, states, alive.to(flat.device))
            else:
                alive = self._guarded_plain_step(group, alive)
        if alive is not None:
            skipped = 1 - alive.reshape(())
            self.nonfinite_skips = (skipped if self.nonfinite_skips is None
                                    else self.nonfinite_skips + skipped.to(self.nonfinite_skips))

    def _guarded_flat_step(self, group: dict, flat: FlatGroup, states: list[dict],
                           alive: torch.Tensor) -> torch.Tensor:
        """`_flat_step` for the tensors still alive: a per-tensor 0/1 factor (1 up to the
        first tensor with a non-finite gradient) selects, per row, the update or no change.
        Returns the factor of the group's last tensor (`alive` if the group is empty)."""
        beta1, beta2 = group["betas"]
        lr, dtype = group["lr"], flat.dtype
        exp_avg = flat.moment("exp_avg", states)
        exp_avg_sq = flat.moment("exp_avg_sq", states)
        second = flat.moment("max_exp_avg_sq", states) if group["amsgrad"] else exp_avg_sq
        steps = flat.counter("step", states)
        grad = flat.grad_buffer
        denom, ratio = flat.scratch()
        torch.mul(grad, 0, out=ratio)  # 0 where finite, NaN at a NaN or ±Inf
        # a NaN also spoils the segment sums of later tensors: they are dead anyway
        alive = torch.cumprod(flat.segment_sums(ratio).eq(0).double(), 0) * alive
        dead = 1 - alive
        steps.add_(alive)
        t = steps.clamp(min=1)  # dead tensors never stepped: any t > 0 avoids 0/0 below
        # per row, in float64 then the buffers' dtype: live 0/1, then for each moment the
        # factors of m and of g (β and 1 − β when live, 1 and 0 when dead), sqrt(1 − β2^t)
        live, keep1, take1, keep2, take2, bc2 = flat.per_row(torch.stack([
            alive, beta1 + (1 - beta1) * dead, (1 - beta1) * alive,
            beta2 + (1 - beta2) * dead, (1 - beta2) * alive, (1 - beta2 ** t).sqrt()],
            dim=1).to(dtype)).unbind(-1)
        torch.where(live > 0, flat.rows(grad), grad.new_zeros(()), out=flat.rows(ratio))
        flat.rows(exp_avg).mul_(keep1).addcmul_(flat.rows(ratio), take1)
        torch.mul(ratio, ratio, out=denom)
        flat.rows(exp_avg_sq).mul_(keep2).addcmul_(flat.rows(denom), take2)
        if group["amsgrad"]:
            torch.maximum(second, exp_avg_sq, out=second)
        torch.sqrt(second, out=denom)
        flat.rows(denom).div_(bc2).add_(group["eps"])
        ratio.div_(denom).mul_(ratio)  # (g / denom)², 0 on dead rows
        rms = (flat.segment_sums(ratio) / flat.numel_tensor).sqrt_()
        scale = (rms / self.clip_threshold).clamp_(min=1.0)
        # per row: the weight decay factor and the step size (dead: 1 and 0, no change)
        decay, step_size = flat.per_row(torch.stack([
            1 - lr * group["weight_decay"] * alive, -(lr / (1 - beta1 ** t)) / scale * alive],
            dim=1).to(dtype)).unbind(-1)
        flat.rows(flat.param_buffer).mul_(decay)
        torch.mul(flat.rows(exp_avg), step_size, out=flat.rows(ratio))
        flat.param_buffer.addcdiv_(ratio, denom)
        return alive[-1:]

    def _guarded_plain_step(self, group: dict, alive: torch.Tensor | None) -> torch.Tensor | None:
        """The per-tensor form under the rule (one host transfer, as `_plain_step` has)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return alive
        finite = torch.stack([torch.isfinite(p.grad).all().cpu() for p in params]).tolist()
        n_alive = 0 if alive is not None and float(alive) == 0 else len(params)
        n_alive = min(n_alive, finite.index(False) if False in finite else len(params))
        for p in params:  # counts left on the device by a flat step become numbers again
            if isinstance(self.state[p].get("step"), torch.Tensor):
                self.state[p]["step"] = int(self.state[p]["step"])
        self._plain_step(group, params[:n_alive])
        return torch.tensor([float(n_alive == len(params))], dtype=torch.float64,
                            device=params[0].device)
