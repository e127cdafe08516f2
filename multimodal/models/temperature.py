"""Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599): one scalar T per saved model, fitted
on validation rows by minimising the negative log-likelihood of softmax(logits / T).

T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones; dividing every logit of a row by
the same positive T never changes which class is highest, so accuracy is untouched. The fitted T is saved beside
the weights as `temperature.json` (`tune` writes it for every model it saves); `predict` and `evaluate` apply it.
A model folder without the file (saved before calibration existed) reads T = 1: its probabilities as trained.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from multimodal.storage.io import read_json, write_json

logger = logging.getLogger(__name__)

TEMPERATURE = "temperature.json"
# log T is searched in [-LOG_BOUND, LOG_BOUND] (T from 0.01 to 100): beyond, the probabilities are one-hot or uniform.
LOG_BOUND = math.log(100.0)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    return float(nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T minimising the mean NLL of softmax(`logits` / T) on these rows ((N, C) logits, (N,) class indices).

    LBFGS on log T (so T stays positive), in float64, from T = 1: deterministic on the same logits. No row gives 1.
    The NLL is convex in 1/T, so the minimum found is the global one; a result no better than T = 1 returns 1.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.clamp(-LOG_BOUND, LOG_BOUND).exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    fitted = float(log_t.detach().clamp(-LOG_BOUND, LOG_BOUND).exp())
    return fitted if math.isfinite(fitted) and nll(logits, labels, fitted) < nll(logits, labels, 1.0) else 1.0


def save_temperature(model_dir: Path, temperature: float, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """`model_dir/temperature.json`: T and the validation NLL before and after, on the `len(labels)` rows it was
    fitted on."""
    record = {"temperature": temperature, "fitted_on": "val", "n": len(labels),
              "val_nll_before": nll(logits, labels, 1.0) if len(labels) else None,
              "val_nll_after": nll(logits, labels, temperature) if len(labels) else None}
    write_json(Path(model_dir) / TEMPERATURE, record)
    return record


def load_temperature(model_dir: str | Path) -> float:
    """The model's saved T; 1.0 (the probabilities as trained) when the folder has no `temperature.json`."""
    path = Path(model_dir) / TEMPERATURE
    if not path.exists():
        logger.info("%s has no %s: its probabilities are not calibrated (T = 1); re-run `tune` to fit one",
                    model_dir, TEMPERATURE)
        return 1.0
    temperature = read_json(path).get("temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"{path}: `temperature` must be a positive number, found {temperature!r}; re-run `tune`")
    return float(temperature)
