"""A TopK sparse autoencoder on residual-stream activations (Gao et al. 2024), and loading of
external SAE checkpoints.

``encode(x) = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))``, ``decode(z) = z W_dec + b_dec``;
the rows of ``W_dec`` (unit norm) are the feature directions in the target's residual stream.
Inputs are divided by a fixed ``scale`` (so that the mean squared norm is d) before encoding;
decoder rows stay directions in the original space. Training adds the AuxK loss on latents
that have not fired for ``dead_tokens`` tokens, which keeps the dead fraction down.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from selfexplain.features.activations import token_mask

SAE_FILE = "sae.safetensors"
SAE_CONFIG = "sae_config.json"


@dataclass
class SAEConfig:
    """Size and training settings of a TopK SAE."""

    d_model: int
    n_latents: int = 2048
    k: int = 32
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 5e-4
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000
    seed: int = 0


class TopKSAE(nn.Module):
    """TopK sparse autoencoder; ``activation`` is "topk" (ours) or "relu" (external SAEs)."""

    def __init__(self, d_model: int, n_latents: int, k: int | None, activation: str = "topk"):
        super().__init__()
        self.k = k
        self.activation = activation
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_model))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(n_latents))

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.scale - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse latent activations (..., n_latents) of residual vectors x (..., d_model)."""
        pre = self.pre_acts(x)
        if self.activation == "relu":
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre)).relu()
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec + self.b_dec) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, x: torch.Tensor, batch_size: int = 4096) -> dict:
    """FVU, mean L0, dead-latent fraction (never active on x) and firing counts on x (n, d)."""
    counts = torch.zeros(sae.n_latents, dtype=torch.long)
    err = torch.zeros((), dtype=torch.float64)
    l0 = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        z = sae.encode(xb)
        err += ((xb.double() - sae.decode(z).double()) ** 2).sum()
        active = z > 0
        counts += active.sum(0)
        l0 += int(active.sum())
    total = ((x.double() - x.double().mean(0)) ** 2).sum()
    return {
        "fvu": float(err / total),
        "l0": l0 / max(len(x), 1),
        "dead_fraction": float((counts == 0).float().mean()),
        "n_tokens": len(x),
        "n_latents": sae.n_latents,
        "counts": counts,
    }


def train_sae(x: torch.Tensor, cfg: SAEConfig, log_every: int = 50) -> tuple[TopKSAE, list[dict]]:
    """Train a TopK SAE on activations x (n_tokens, d_model); returns the SAE and a loss log."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = x.float()
    sae = TopKSAE(cfg.d_model, cfg.n_latents, cfg.k)
    scale = x.pow(2).sum(-1).mean().sqrt() / math.sqrt(cfg.d_model)
    with torch.no_grad():
        sae.scale.fill_(float(scale))
        w = torch.randn(cfg.n_latents, cfg.d_model, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec)
        sae.b_dec.copy_((x / scale).median(0).values)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=6.25e-10)
    since_fired = torch.zeros(cfg.n_latents, dtype=torch.long)
    log = []
    step = 0
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    bar = tqdm(total=steps, desc="train SAE", unit="step")
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            xb = x[order[start : start + cfg.batch_size]] / scale
            pre = (xb - sae.b_dec) @ sae.W_enc.T + sae.b_enc
            vals, idx = pre.topk(cfg.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
            recon = z @ sae.W_dec + sae.b_dec
            resid = xb - recon
            denom = (xb - xb.mean(0)).pow(2).sum()
            loss = resid.pow(2).sum() / denom
            fired = torch.zeros(cfg.n_latents, dtype=torch.bool)
            fired[idx[vals > 0]] = True
            since_fired += len(xb)
            since_fired[fired] = 0
            dead = since_fired >= cfg.dead_tokens
            aux = torch.zeros(())
            if dead.any():  # AuxK: the dead latents reconstruct the residual
                k_aux = min(cfg.aux_k, int(dead.sum()))
                dead_pre = pre.masked_fill(~dead, float("-inf"))
                dvals, didx = dead_pre.topk(k_aux, dim=-1)
                dz = torch.zeros_like(pre).scatter(-1, didx, dvals.relu())
                aux = (resid.detach() - dz @ sae.W_dec).pow(2).sum() / denom
            opt.zero_grad()
            (loss + cfg.aux_coef * aux).backward()
            with torch.no_grad():  # keep decoder rows unit norm: drop the radial gradient part
                g = sae.W_dec.grad
                g -= (g * sae.W_dec).sum(-1, keepdim=True) * sae.W_dec
            opt.step()
            sae.normalize_decoder()
            step += 1
            bar.update()
            if step % log_every == 0 or step == steps:
                entry = {"step": step, "fvu": loss.item(), "aux": aux.item()}
                entry["dead"] = float(dead.float().mean())
                log.append(entry)
                bar.set_postfix(fvu=f"{entry['fvu']:.3f}", dead=f"{entry['dead']:.2f}")
    bar.close()
    return sae.eval(), log


def save_sae(sae: TopKSAE, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Write sae.safetensors (W_enc, b_enc, W_dec, b_dec, scale, threshold) and
    sae_config.json into out_dir."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    save_file(tensors, str(out_dir / SAE_FILE))
    config = {
        "d_model": sae.W_dec.shape[1],
        "n_latents": sae.n_latents,
        "k": sae.k,
        "activation": sae.activation,
    }
    (out_dir / SAE_CONFIG).write_text(json.dumps(config | (meta or {}), indent=2) + "\n")
    return out_dir


def load_sae(path: str | Path) -> TopKSAE:
    """An SAE from a directory: ours (sae.safetensors) or an external checkpoint.

    External layouts recognised (one *.safetensors file with an encoder and a decoder):
    SAELens-style ``W_enc`` (d, n), ``W_dec`` (n, d), ``b_enc``, ``b_dec`` (+ optional
    ``threshold``, JumpReLU) and sparsify/OpenAI-style ``encoder.weight`` (n, d),
    ``encoder.bias``, ``W_dec`` or ``decoder.weight`` (d, n), ``b_dec``/``pre_bias``.
    With ``k`` in a cfg.json / config.json next to it the activation is TopK, otherwise ReLU.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if (path / SAE_FILE).is_file():
        config = json.loads((path / SAE_CONFIG).read_text())
        tensors = load_file(str(path / SAE_FILE))
        sae = TopKSAE(config["d_model"], config["n_latents"], config["k"], config["activation"])
        sae.load_state_dict(tensors)
        return sae.eval()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if len(files) != 1:
        raise FileNotFoundError(
            f"{path}: expected a directory with {SAE_FILE} or exactly one *.safetensors SAE "
            f"checkpoint, found {[f.name for f in files]}"
        )
    t = load_file(str(files[0]))
    config = {}
    for name in ("cfg.json", "config.json", SAE_CONFIG):
        if (path / name).is_file():
            config = json.loads((path / name).read_text())
            break
    if "W_dec" in t:
        w_dec = t["W_dec"]
    elif "decoder.weight" in t:
        w_dec = t["decoder.weight"].T
    else:
        raise ValueError(f"{files[0]}: no decoder matrix (W_dec or decoder.weight)")
    n, d = w_dec.shape
    if "W_enc" in t:
        w_enc = t["W_enc"].T if t["W_enc"].shape == (d, n) else t["W_enc"]
    elif "encoder.weight" in t:
        w_enc = t["encoder.weight"]
    else:
        raise ValueError(f"{files[0]}: no encoder matrix (W_enc or encoder.weight)")
    b_enc = t.get("b_enc", t.get("encoder.bias", torch.zeros(n)))
    b_dec = t.get("b_dec", t.get("pre_bias", torch.zeros(d)))
    k = config.get("k") or (config.get("activation_fn_kwargs") or {}).get("k")
    sae = TopKSAE(d, n, int(k) if k else None, "topk" if k else "relu")
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
        if "threshold" in t:
            sae.threshold.copy_(t["threshold"])
    return sae.eval()


def sae_summary(stats: dict, config: SAEConfig | None, log: list[dict] | None = None) -> dict:
    """The JSON-able quality report of an SAE (counts dropped)."""
    out = {k: v for k, v in stats.items() if k != "counts"}
    if config is not None:
        out["config"] = asdict(config)
    if log is not None:
        out["log"] = log
    return out


def save_activations(path: str | Path, windows: torch.Tensor, acts: torch.Tensor, layer: int):
    """Write corpus windows (n, ctx) and their activations (n, ctx, d) atomically."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {"windows": windows.contiguous(), "activations": acts.float().contiguous()}
    save_file(tensors, str(tmp), metadata={"layer": str(layer)})
    os.replace(tmp, path)


def load_activations(path: str | Path, meta_only: bool = False):
    """(windows, activations, layer) from save_activations; only the layer with meta_only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        layer = int(f.metadata()["layer"])
        if meta_only:
            return layer
        return f.get_tensor("windows"), f.get_tensor("activations"), layer


def split_tokens(
    windows: torch.Tensor, acts: torch.Tensor, heldout_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAE training and held-out token vectors (n_tokens, d): the last heldout_fraction of the
    windows is held out; first positions and norm outliers are left out (see token_mask)."""
    mask = token_mask(windows, acts)
    n_held = max(1, round(len(windows) * heldout_fraction)) if len(windows) > 1 else 0
    cut = len(windows) - n_held
    train = acts[:cut][mask[:cut]]
    held = acts[cut:][mask[cut:]] if n_held else train
    return train, held
