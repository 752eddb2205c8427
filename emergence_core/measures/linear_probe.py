"""Linear probe: held-out accuracy of a ridge least-squares readout.

A linear map W is fitted from standardised features (plus a bias) to one-hot labels,

    W = argmin ||X W - Y||^2 + ridge * n * ||W||^2     (closed form, float64),

and the prediction is argmax over classes of X W. Least squares rather than logistic
regression: one linear solve per layer, no iterations or learning rate to tune, and on
separable classes it reaches the same held-out accuracy. Classes absent from the fit set
can never be predicted, which is the honest outcome for a probe.
"""

from __future__ import annotations

import torch

__all__ = ["linear_probe_accuracies", "linear_probe_accuracy"]


def linear_probe_accuracy(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor,
                          y_test: torch.Tensor, *, ridge: float = 1e-3) -> float:
    """Accuracy on (x_test, y_test) of a ridge readout fitted on (x_fit, y_fit).

    ``x_*`` are [n, d] features, ``y_*`` [n] integer labels. Returns NaN when either set is
    empty (no estimate, not a zero).
    """
    if x_fit.shape[0] == 0 or x_test.shape[0] == 0:
        return float("nan")
    xf = x_fit.detach().to(torch.float64)
    xt = x_test.detach().to(torch.float64)
    mean = xf.mean(0, keepdim=True)
    std = xf.std(0, keepdim=True, unbiased=False).clamp_min(1e-8)
    xf = torch.cat([(xf - mean) / std, torch.ones_like(xf[:, :1])], dim=1)
    xt = torch.cat([(xt - mean) / std, torch.ones_like(xt[:, :1])], dim=1)
    classes, y_idx = torch.unique(y_fit, return_inverse=True)
    onehot = torch.nn.functional.one_hot(y_idx, len(classes)).to(torch.float64)
    n, d = xf.shape
    gram = xf.T @ xf + ridge * n * torch.eye(d, dtype=xf.dtype, device=xf.device)
    w = torch.linalg.solve(gram, xf.T @ onehot)
    pred = classes[(xt @ w).argmax(dim=1)]
    return float((pred == y_test.to(pred.device)).double().mean())


def linear_probe_accuracies(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor,
                            y_test: torch.Tensor, *, ridge: float = 1e-3) -> torch.Tensor:
    """:func:`linear_probe_accuracy` of each feature set [batch, n, d] with shared labels.

    The same arithmetic, batched (:func:`linear_probe_accuracy` stays the per-set reference
    the tests compare against): one batched solve for all layers of a level (their labels
    are the same samples'), and the accuracies stay a float64 tensor on the features'
    device, so no host synchronisation per probe.
    """
    batch = x_fit.shape[0]
    if x_fit.shape[1] == 0 or x_test.shape[1] == 0:
        return torch.full((batch,), float("nan"), dtype=torch.float64, device=x_fit.device)
    xf = x_fit.detach().to(torch.float64)
    xt = x_test.detach().to(torch.float64)
    mean = xf.mean(1, keepdim=True)
    std = xf.std(1, keepdim=True, unbiased=False).clamp_min(1e-8)
    xf = torch.cat([(xf - mean) / std, torch.ones_like(xf[:, :, :1])], dim=2)
    xt = torch.cat([(xt - mean) / std, torch.ones_like(xt[:, :, :1])], dim=2)
    classes, y_idx = torch.unique(y_fit, return_inverse=True)
    onehot = torch.nn.functional.one_hot(y_idx, len(classes)).to(torch.float64)
    n, d = xf.shape[1:]
    gram = xf.mT @ xf + ridge * n * torch.eye(d, dtype=xf.dtype, device=xf.device)
    w = torch.linalg.solve(gram, xf.mT @ onehot.to(xf.device))
    pred = classes.to(xf.device)[(xt @ w).argmax(dim=2)]
    return (pred == y_test.to(pred.device)).double().mean(dim=1)
