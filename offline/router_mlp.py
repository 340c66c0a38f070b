"""The CITER router's MLP, fitted on the positions ``offline/routers.py`` labels: inputs standardised with the
training positions' mean and std, class-weighted BCE (``pos_weight = negatives / positives``), Adam, early
stopping on the validation loss (the positions of a held-out share of problems); AUROC and the share of
validation positions above each threshold describe it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from relay_demo.policies import RouterMLP

SHARE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass
class MLPCfg:
    """How the MLP is fitted; the router job's config (``offline.routers.RouterCfg``) extends it, so that
    this module needs nothing of the job."""

    width: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 300
    patience: int = 20
    minibatch: int = 512
    seed: int = 0


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when one class is absent."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def split_by_problem(problem: np.ndarray, val_frac: float, seed: int) -> np.ndarray:
    """Boolean mask of validation positions: every position of a held-out share of problems."""
    ids = np.unique(problem)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(ids) * val_frac))) if len(ids) > 1 else 0
    return np.isin(problem, rng.permutation(ids)[:n_val])


def train_mlp(
    x: np.ndarray, y: np.ndarray, is_val: np.ndarray, cfg: MLPCfg, log=print
) -> tuple[RouterMLP, dict]:
    """Fit the MLP with class-weighted BCE and early stopping on the validation loss; (router, facts)."""
    if is_val.all() or not is_val.any():
        raise ValueError("need both training and validation positions")
    xt, yt = x[~is_val], y[~is_val]
    if yt.min() == yt.max():
        raise ValueError(f"the training positions all have target {yt[0]}: nothing to learn")
    mean, std = xt.mean(0), np.maximum(xt.std(0), 1e-4)
    torch.manual_seed(cfg.seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], cfg.width), torch.nn.ReLU(), torch.nn.Linear(cfg.width, 1)
    )
    pos_weight = torch.tensor(float((yt == 0).sum()) / float((yt == 1).sum()))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    X = torch.from_numpy((x - mean) / std).float()
    Y = torch.from_numpy(y).float()
    tr, va = torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(np.flatnonzero(is_val))
    g = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since, epochs = float("inf"), None, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        epochs = epoch
        net.train()
        for mb in tr[torch.randperm(len(tr), generator=g)].split(cfg.minibatch):
            opt.zero_grad()
            loss_fn(net(X[mb]).squeeze(-1), Y[mb]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(net(X[va]).squeeze(-1), Y[va]))
        if val_loss < best - 1e-5:
            best, since = val_loss, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    net.load_state_dict(best_state)
    with torch.no_grad():
        val_score = torch.sigmoid(net(X[va]).squeeze(-1)).numpy()
        train_score = torch.sigmoid(net(X[tr]).squeeze(-1)).numpy()
    weights = {
        "w1": net[0].weight.detach().T.contiguous().numpy(),
        "b1": net[0].bias.detach().numpy(),
        "w2": net[2].weight.detach().T.contiguous().numpy(),
        "b2": net[2].bias.detach().numpy(),
    }
    facts = {
        "epochs": epochs,
        "val_loss": best,
        "val_auroc": auroc(y[is_val], val_score),
        "train_auroc": auroc(yt, train_score),
        "pos_weight": float(pos_weight),
        # how often each threshold would route a (validation, train-split) position to the teacher: a guide
        # for the thresholds to sweep, read from training data only
        "val_share_above": {str(t): float((val_score > t).mean()) for t in SHARE_THRESHOLDS},
    }
    log(f"trained {epochs} epochs: val loss {best:.4f}, val AUROC {facts['val_auroc']:.4f}")
    config = {"hidden_size": int(x.shape[1]), "width": cfg.width, "mean": mean.tolist(), "std": std.tolist()}
    return RouterMLP(weights, config), facts
