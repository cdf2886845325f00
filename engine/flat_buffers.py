"""Flat buffers for one parameter group, so that an optimizer step is a few operations on
long vectors instead of a few operations per tensor (about 100 tensors in Dinomaly's
bottleneck and decoder: on a GPU, thousands of tiny kernel launches per step otherwise).

The group's parameters, their gradients and the optimizer's moments become views of flat
buffers (the technique of apex's and FSDP's flat parameters). The values are those of the
separate tensors; every tensor stays where code expects it (`p`, `p.grad`,
`optimizer.state[p]`), so clipping, loss scaling, DDP, `state_dict` and checkpoints see
ordinary tensors.

Layout: tensor i occupies `[offsets[i], offsets[i] + numel_i)` of each buffer and starts at
a multiple of `ALIGN` elements, the gaps are zeros. A buffer therefore reshapes to rows of
`ALIGN` elements, each row inside one tensor: per-tensor sums are row sums, then a sum over
each tensor's rows (`segment_sums`), without a host-device synchronisation.
"""
from __future__ import annotations

import math

import torch

ALIGN = 1024  # elements: aligned starts (vector loads) and the row length of segment_sums


class FlatGroup:
    """The parameters of one group and their gradients as views of two flat buffers, plus
    flat buffers for optimizer moments (`moment`; those named in `moments` are made now, so
    that a step makes no views). `params` must share device and dtype and be dense
    (`flattenable`)."""

    def __init__(self, params: list[torch.Tensor], moments: tuple[str, ...] = ()) -> None:
        self.params = list(params)
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        rows = [max(1, math.ceil(n / ALIGN)) for n in self.numels]
        starts = [0]
        for r in rows[:-1]:
            starts.append(starts[-1] + r)
        self.offsets = [ALIGN * s for s in starts]
        self.total = ALIGN * sum(rows)
        device, dtype = self.params[0].device, self.params[0].dtype
        self.device, self.dtype = device, dtype
        self.param_buffer = torch.zeros(self.total, device=device, dtype=dtype)
        self.grad_buffer = torch.zeros(self.total, device=device, dtype=dtype)
        # per row: the tensor it belongs to; per tensor: its last row and its element count
        counts = torch.tensor(rows)
        self.row_owner = torch.repeat_interleave(torch.arange(len(rows)), counts).to(device)
        self.last_rows = (counts.cumsum(0) - 1).to(device)
        self.numel_tensor = torch.tensor(self.numels, dtype=torch.float64).to(device)
        self.grad_views = [self.view(self.grad_buffer, i) for i in range(len(self.params))]
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # made at the first step
        self.moments: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.counters: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        for name in moments:
            self.new_moment(name)
        with torch.no_grad():
            for i, p in enumerate(self.params):  # the parameters move into param_buffer
                view = self.view(self.param_buffer, i)
                view.copy_(p)
                p.data = view
        self.pointers = [p.data_ptr() for p in self.params]

    @staticmethod
    def flattenable(params: list[torch.Tensor]) -> bool:
        """Dense tensors of one device and one floating dtype (else: per-tensor steps)."""
        return (len(params) > 0 and all(p.layout == torch.strided for p in params)
                and len({(p.device, p.dtype) for p in params}) == 1
                and params[0].dtype.is_floating_point and params[0].device.type != "meta")

    def view(self, buffer: torch.Tensor, i: int) -> torch.Tensor:
        """Tensor i's part of `buffer`, shaped like the parameter."""
        return buffer[self.offsets[i]: self.offsets[i] + self.numels[i]].view(self.shapes[i])

    def holds(self, params: list[torch.Tensor]) -> bool:
        """Whether `params` are still this group's views (`module.to()` or `p.data = …`
        elsewhere replaces a parameter's storage; then the group is built again)."""
        return (len(params) == len(self.params)
                and all(p is q for p, q in zip(params, self.params))
                and all(p.data_ptr() == ptr for p, ptr in zip(params, self.pointers)))

    def rows(self, buffer: torch.Tensor) -> torch.Tensor:
        """`total -> (total / ALIGN) × ALIGN`."""
        return buffer.view(-1, ALIGN)

    # ------------------------------------------------------------------ gradients

    def adopt_grads(self) -> bool:
        """Make every `p.grad` the view of `grad_buffer` (copying a gradient set elsewhere).
        False if a parameter has no gradient (the caller then steps tensor by tensor)."""
        if any(p.grad is None for p in self.params):
            return False
        with torch.no_grad():
            for p, view in zip(self.params, self.grad_views):
                if p.grad is not view:
                    if p.grad.is_sparse:
                        raise RuntimeError("flat buffers do not take sparse gradients")
                    view.copy_(p.grad)
                    p.grad = view
        return True

    def zero_grads(self) -> None:
        """Every gradient zero, in place: the next backward accumulates into the buffer."""
        self.grad_buffer.zero_()
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not view:
                p.grad = view

    # ------------------------------------------------------------------ optimizer state

    def moment(self, name: str, states: list[dict]) -> torch.Tensor:
        """The flat buffer of the state entry `name` of every tensor (`states[i][name]`, zeros
        where absent); afterwards each `states[i][name]` is its view."""
        buffer, views = self.moments[name] if name in self.moments else self.new_moment(name)
        with torch.no_grad():
            for state, view in zip(states, views):
                value = state.get(name)
                if value is not view:  # new, or loaded by load_state_dict
                    if value is not None:
                        view.copy_(value)
                    state[name] = view
        return buffer

    def counter(self, name: str, states: list[dict]) -> torch.Tensor:
        """Per tensor, a float64 count on the device (`n_tensors`), e.g. the optimizer's step
        count when the tensors' counts can differ; afterwards `states[i][name]` is its 0-dim
        view (a count found there, a Python number or a tensor, is copied in)."""
        if name not in self.counters:
            buffer = torch.zeros(len(self.params), dtype=torch.float64, device=self.device)
            self.counters[name] = (buffer, [buffer[i] for i in range(len(self.params))])
        buffer, views = self.counters[name]
        with torch.no_grad():
            for state, view in zip(states, views):
                value = state.get(name, 0)
                if value is not view:  # new, from the per-tensor step, or loaded
                    view.copy_(value) if isinstance(value, torch.Tensor) else view.fill_(value)
                    state[name] = view
        return buffer

    def scratch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two work buffers of the buffers' size, kept between steps (a fresh allocation of
        this size would cost page faults on a CPU at every step)."""
        if self._scratch is None:
            self._scratch = (torch.empty(self.total, device=self.device, dtype=self.dtype),
                             torch.empty(self.total, device=self.device, dtype=self.dtype))
        return self._scratch

    def new_moment(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A zero flat buffer for the state entry `name` and its per-tensor views."""
        buffer = torch.zeros(self.total, device=self.device, dtype=self.dtype)
        self.moments[name] = (buffer, [self.view(buffer, i) for i in range(len(self.params))])
        return self.moments[name]

    # ------------------------------------------------------------------ reductions

    def segment_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per tensor, the sum of `values` (a flat buffer, zeros in the gaps) in float64:
        row sums, a running sum over rows, differences at each tensor's last row.
        `total -> n_tensors`; no synchronisation."""
        row_sums = self.rows(values).sum(dim=1).double()  # rows of ALIGN, then float64 sums
        ends = row_sums.cumsum(0).index_select(0, self.last_rows)
        return torch.diff(ends, prepend=ends.new_zeros(1))

    def per_row(self, per_tensor: torch.Tensor) -> torch.Tensor:
        """`n_tensors -> (total / ALIGN) × 1`: each row gets its tensor's value."""
        return per_tensor.index_select(0, self.row_owner).unsqueeze(1)
