"""Getting a step's loss to the host without stalling the device.

`loss.item()` right after a step makes the host wait for all of the step's kernels, so the GPU
sits idle while the host prepares and launches the next step. Here the loss is copied to pinned
host memory with the copy queued behind the step, and read once the next step is queued: the
wait is then for a step that has long finished (the usual CUDA pattern: an event per copy).
On the CPU everything runs in order and the read is immediate.
"""

import time

import torch


class Readout:
    """A scalar on its way from the device to the host; `value()` waits for it, and only for it.
    `ready_at`: the perf_counter time at which it was known to be computed (on the CPU, at once)."""

    def __init__(self, scalar: torch.Tensor):
        scalar = scalar.detach()
        self.event, self.ready_at = None, None
        if scalar.device.type == "cuda":
            self.host = torch.empty((), dtype=scalar.dtype, pin_memory=True)
            self.host.copy_(scalar, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.ready_at = scalar, time.perf_counter()

    def value(self) -> float:
        if self.event is not None:
            self.event.synchronize()
            self.ready_at = self.ready_at or time.perf_counter()
        return self.host.item()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: torch's blocking copy to a GPU waits
    for everything queued on the stream; a non-blocking one from pinned memory is queued like a kernel."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
