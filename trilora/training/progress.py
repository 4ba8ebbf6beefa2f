"""Progress display: a tqdm bar on a terminal, plain log lines otherwise."""

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("trilora")


class Progress:
    """A tqdm bar on a terminal; plain log lines (about 20 per run) otherwise."""

    def __init__(self, total: int, start: int = 0):
        self.total, self.start, self.every = total, start, max(1, total // 20)
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / (step - self.start) * (self.total - step)
            log.info("step %d/%d  loss %.5f  elapsed %.0fs  eta %.0fs", step, self.total, loss, elapsed, eta)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
