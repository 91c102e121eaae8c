"""Put a feature vector into the explainer as a continuous token.

The question carries a placeholder (:data:`PLACEHOLDER`), rendered as one existing
token of the explainer's vocabulary (no vocabulary change). The hidden state *entering* block
``layer`` at that token's position is replaced by the vector, unit-normalised and scaled to
``norm`` (by default the explainer's mean hidden-state norm at that site on ordinary text, so
the vector looks like a token there; with layer 0 it replaces the input embedding, as in the
paper). When the target's width differs from the explainer's, a linear map (``vector_map``,
trained jointly with the LoRA adapter and saved inside it) carries the vector across. Given the
target's model directory (``map_from``), the map starts as embedding_map: the least-squares map
between the two models' input embeddings of the tokens both vocabularies share, the nearest
linear analogue of the identity a model explaining itself gets, and training leaves it fixed;
without it, a seeded random map, trained with the adapter.

The overwrite is the one ``hooks.patch_residual(site="input")`` does (a test checks they are
equal), but applied only to the forward that sees the whole prompt: ``generate`` with a KV
cache later runs one-token forwards in which the placeholder position does not exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from selfexplain.core.formats import PLACEHOLDER
from selfexplain.models import decoder_layers, hidden_size, load

MAP_NAME = "vector_map"
INJECTION_FILE = "injection.json"
PLACEHOLDER_CANDIDATES = (" X", " *", " ?", " A", " _")
_NORM_TEXT = "The history of the city began in the twelfth century, when a small market town grew."


class VectorMap(nn.Module):
    """A bias-free linear map from the target's width to the explainer's (not an nn.Linear, so
    LoRA's "all-linear" leaves it alone; it is trained in full via peft modules_to_save)."""

    def __init__(self, d_in: int, d_out: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(d_out, d_in, generator=gen) / d_in**0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.weight.T


@dataclass
class InjectionSpec:
    """Where and how vectors enter one explainer (saved as injection.json with the adapter)."""

    layer: int
    norm: float
    placeholder: str
    placeholder_id: int
    d_in: int
    d_out: int
    map_init: str = "random"  # how vector_map started: "random" or "embeddings (<n> anchors; fit)"

    @property
    def has_map(self) -> bool:
        return self.d_in != self.d_out

    def save(self, out_dir: str | Path) -> None:
        Path(out_dir, INJECTION_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> InjectionSpec:
        return cls(**json.loads(Path(path, INJECTION_FILE).read_text()))


def placeholder_token(tokenizer) -> tuple[str, int]:
    """The first candidate that is one token of the tokenizer's vocabulary, and its id."""
    for cand in PLACEHOLDER_CANDIDATES:
        ids = tokenizer(cand, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return cand, ids[0]
    raise ValueError(f"none of {PLACEHOLDER_CANDIDATES} is a single token of this tokenizer")


def render_question(question: str, placeholder: str) -> str:
    """The question with its PLACEHOLDER replaced by the explainer's placeholder token text."""
    if PLACEHOLDER not in question:
        raise ValueError(f"question has no {PLACEHOLDER}: {question!r}")
    return question.replace(" " + PLACEHOLDER, placeholder).replace(PLACEHOLDER, placeholder)


def placeholder_positions(
    ids: torch.Tensor, placeholder_id: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row of ids (B, T), the first position holding placeholder_id (within `allowed`)."""
    hit = ids == placeholder_id
    if allowed is not None:
        hit &= allowed.bool()
    if not bool(hit.any(1).all()):
        raise ValueError("a row has no placeholder token: was the question rendered?")
    return hit.int().argmax(1)


@torch.no_grad()
def reference_norm(model, tokenizer, layer: int) -> float:
    """Mean L2 norm of the hidden states entering block `layer` on a plain sentence (first
    position left out)."""
    store = {}

    def hook(module, args, kwargs):
        store["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = decoder_layers(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        ids = torch.tensor([tokenizer(_NORM_TEXT)["input_ids"]])
        model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        handle.remove()
    return float(store["h"][0, 1:].float().norm(dim=-1).mean())


@contextmanager
def inject_residual(
    model, layer: int, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor
) -> Iterator[None]:
    """Overwrite the hidden state entering block `layer` at (rows[i], positions[i]) with
    values[i] in every forward over the full prompt (width > max position); one-token decoding
    forwards pass untouched. Gradients flow into values."""
    width = int(positions.max()) + 1

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[1] < width or hidden.shape[0] <= int(rows.max()):
            return hidden
        dev = hidden.device
        return hidden.index_put(
            (rows.to(dev), positions.to(dev)), values.to(device=dev, dtype=hidden.dtype)
        )

    def hook(module, args, kwargs):
        if args:
            return (apply(args[0]), *args[1:]), kwargs
        return args, kwargs | {"hidden_states": apply(kwargs["hidden_states"])}

    handle = decoder_layers(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Injector:
    """Injects vectors into one explainer model according to an InjectionSpec."""

    def __init__(self, spec: InjectionSpec, model):
        self.spec = spec
        self.bind(model)

    @classmethod
    def setup(
        cls,
        model,
        tokenizer,
        d_in: int,
        layer: int = 0,
        scale: float | None = None,
        seed: int = 0,
        map_from: str | Path | None = None,
        map_exclude: Sequence[int] = (),
    ) -> Injector:
        """A fresh injector: placeholder, norm (scale, or the reference norm), and a vector_map
        attached to the model when the widths differ: fitted by embedding_map from the target
        model directory map_from (leaving out its token ids map_exclude), else seeded random."""
        placeholder, pid = placeholder_token(tokenizer)
        n_layers = len(decoder_layers(model))
        if not 0 <= layer < n_layers:
            raise ValueError(f"injection layer {layer} out of range (0..{n_layers - 1})")
        norm = float(scale) if scale is not None else reference_norm(model, tokenizer, layer)
        spec = InjectionSpec(layer, norm, placeholder, pid, d_in, hidden_size(model))
        init = None
        if spec.has_map and map_from is not None:
            init, n_anchors = fitted_map(map_from, model, tokenizer, tuple(map_exclude))
            spec.map_init = f"embeddings ({n_anchors} anchors; {MAP_FIT})"
        attach_map(model, spec, seed, init)
        return cls(spec, model)

    @classmethod
    def from_settings(
        cls, model, tokenizer, d_in: int, settings: dict | None, seed: int = 0
    ) -> Injector:
        """setup from the injection settings as the config and the callers pass them:
        {"layer", "scale", "map_from", "map_exclude"}, each optional."""
        settings = settings or {}
        return cls.setup(
            model,
            tokenizer,
            d_in,
            settings.get("layer", 0),
            settings.get("scale"),
            seed,
            map_from=settings.get("map_from"),
            map_exclude=settings.get("map_exclude", ()),
        )

    def bind(self, model) -> None:
        """Point at the (possibly peft-wrapped) vector_map of model."""
        self.map = getattr(_base(model), MAP_NAME, None) if self.spec.has_map else None
        if self.spec.has_map and self.map is None:
            raise ValueError(f"the explainer has no {MAP_NAME} for {self.spec.d_in}-d vectors")

    def render(self, questions: Sequence[str]) -> list[str]:
        return [render_question(q, self.spec.placeholder) for q in questions]

    def values(self, vectors: torch.Tensor) -> torch.Tensor:
        """The vectors as they enter the explainer: mapped (if needed), unit norm, times norm."""
        if vectors.shape[-1] != self.spec.d_in:
            raise ValueError(f"vectors have width {vectors.shape[-1]}, expected {self.spec.d_in}")
        v = vectors.float()
        if self.map is not None:
            v = self.map(v.to(self.map_device()))
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8) * self.spec.norm

    def map_device(self):
        return next(self.map.parameters()).device

    @contextmanager
    def inject(
        self, model, input_ids: torch.Tensor, vectors: torch.Tensor, allowed=None
    ) -> Iterator[None]:
        """Inside the block, forwards of input_ids carry vectors[i] at row i's placeholder."""
        positions = placeholder_positions(input_ids, self.spec.placeholder_id, allowed)
        rows = torch.arange(len(input_ids))
        with inject_residual(model, self.spec.layer, rows, positions, self.values(vectors)):
            yield


def attach_map(model, spec: InjectionSpec, seed: int = 0, init: torch.Tensor | None = None) -> None:
    """Give the (base) model a vector_map when the spec needs one (before peft wrapping);
    init: its starting weight (d_out, d_in), e.g. embedding_map's, else a seeded random one."""
    if spec.has_map and getattr(_base(model), MAP_NAME, None) is None:
        vmap = VectorMap(spec.d_in, spec.d_out, seed)
        if init is not None:
            if tuple(init.shape) != (spec.d_out, spec.d_in):
                raise ValueError(
                    f"vector_map init has shape {tuple(init.shape)}, "
                    f"expected {(spec.d_out, spec.d_in)}"
                )
            with torch.no_grad():
                vmap.weight.copy_(init.to(vmap.weight.dtype))
        setattr(_base(model), MAP_NAME, vmap)


def _token_texts(tokenizer, n_rows: int) -> dict[str, int]:
    """Decoded text -> token id for the ids below n_rows that decode to a distinct non-blank
    text other than a special token (first id wins)."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(len(tokenizer), n_rows)) if i not in special]
    out: dict[str, int] = {}
    for i, text in zip(ids, tokenizer.batch_decode([[i] for i in ids]), strict=True):
        if text.strip() and "\ufffd" not in text:
            out.setdefault(text, i)
    return out


def shared_tokens(
    source_tokenizer, tokenizer, n_source: int, n_model: int
) -> list[tuple[int, int]]:
    """(source id, explainer id) of the texts that are one token in both vocabularies (the ids
    below each model's embedding rows): the anchors of embedding_map."""
    src = _token_texts(source_tokenizer, n_source)
    dst = _token_texts(tokenizer, n_model)
    return [(i, dst[t]) for t, i in src.items() if t in dst]


MAP_RIDGE = 1e-6  # x anchors (embedding_map)
MAP_EPOCHS = 0  # contrastive passes after the ridge fit (embedding_map); 0: the ridge fit alone
MAP_VAL_FRACTION = 0.05  # of the anchors: they choose the pass kept (contrastive_refine)
# how embedding_map fits by default; part of a training run's fingerprint when it reads
# through such a map (train.run_fingerprint), so a change of fit does not resume old checkpoints
MAP_FIT = f"ridge {MAP_RIDGE:g}, {MAP_EPOCHS} contrastive epochs"


@torch.no_grad()
def embedding_map(
    source_model,
    source_tokenizer,
    model,
    tokenizer,
    *,
    exclude: Sequence[int] = (),
    ridge: float = MAP_RIDGE,
    epochs: int = MAP_EPOCHS,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """A linear map from source_model's input-embedding space to model's, fitted on the
    unit-normalised embeddings of the anchor tokens: the texts that are one token in both
    vocabularies (source token ids in `exclude` are left out, e.g. a check's held-out words).
    For a model explaining itself the map would be the identity; this is its nearest linear
    analogue across widths.

    First a ridge regression. The ridge is light (1e-6 x anchors): what tells neighbouring
    tokens apart lies in directions of low variance, and 1e-3 erased them (SmolLM2 -> Gemma:
    54% of held-out anchors mapped nearest their own token, against 83%). Then, with
    epochs > 0 (off by default), contrastive passes (:func:`contrastive_refine`): least squares
    pulls each image towards its own token but not away from its neighbours; ranking the own
    token first does both. A seeded MAP_VAL_FRACTION of the anchors is then left out of both
    fits to choose the pass kept (0 = the ridge fit). SmolLM2 -> Gemma, 3 passes: 83% -> 94%
    of held-out anchors nearest their own token (benchmarks/width_map.py), but the images'
    cosine to their own token fell 0.71 -> 0.54 and the explainer reads the vector, not its
    rank: untrained token identity 0.71 -> 0.22, trained 0.72 -> 0.70.
    Returns (weight (d_out, d_in), number of anchors fitted)."""
    src_emb = source_model.get_input_embeddings().weight.detach().float().cpu()
    dst_emb = model.get_input_embeddings().weight.detach().float().cpu()
    skip = set(exclude)
    pairs = [
        (i, j)
        for i, j in shared_tokens(source_tokenizer, tokenizer, src_emb.shape[0], dst_emb.shape[0])
        if i not in skip
    ]
    if len(pairs) < 2 * src_emb.shape[1]:
        raise ValueError(
            f"only {len(pairs)} tokens are shared by the two vocabularies, too few to fit a "
            f"{src_emb.shape[1]}-to-{dst_emb.shape[1]} map (need {2 * src_emb.shape[1]})"
        )
    val_pairs: list[tuple[int, int]] = []
    if epochs > 0:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(len(pairs) * MAP_VAL_FRACTION))
        val_pairs = [pairs[k] for k in order[:n_val]]
        pairs = [pairs[k] for k in order[n_val:]]
    s_ids, d_ids = (torch.tensor(x) for x in zip(*pairs, strict=True))
    x = nn.functional.normalize(src_emb[s_ids], dim=-1)
    y = nn.functional.normalize(dst_emb[d_ids], dim=-1)
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1])
    w = torch.linalg.solve(gram, x.T @ y)  # (d_in, d_out)
    if epochs > 0:
        vs, vd = (torch.tensor(v) for v in zip(*val_pairs, strict=True))
        val = (nn.functional.normalize(src_emb[vs], dim=-1), vd)
        w = contrastive_refine(w, x, dst_emb, d_ids, epochs=epochs, seed=seed, val=val)
    return w.T.contiguous(), len(pairs)


def contrastive_refine(
    w: torch.Tensor,
    x: torch.Tensor,
    dst_emb: torch.Tensor,
    d_ids: torch.Tensor,
    *,
    epochs: int,
    seed: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    lr: float = 1e-3,
    batch_size: int = 1024,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Refine a map w (d_in, d_out) so that each anchor's image x[i] @ w is, by cosine, nearest
    its own explainer token d_ids[i] among the tokens of all anchors: cross-entropy over those
    cosines (divided by a learnt temperature), Adam, `epochs` seeded passes in batches.
    With val (unit source vectors, explainer ids) the map returned is the one, of the start and
    each pass, whose images of val are most often nearest their own token (by cosine over the
    whole explainer vocabulary); without it, the last."""
    cand, target = torch.unique(d_ids, return_inverse=True)
    vocab = nn.functional.normalize(dst_emb[cand], dim=-1)
    full = nn.functional.normalize(dst_emb, dim=-1) if val is not None else None

    def retrieved(weight: torch.Tensor) -> float:
        images = nn.functional.normalize(val[0] @ weight, dim=-1)
        nearest = torch.cat([(chunk @ full.T).argmax(-1) for chunk in images.split(256)])
        return float((nearest == val[1]).float().mean())

    weight = nn.Parameter(w.clone())
    log_t = nn.Parameter(torch.tensor(temperature).log())
    opt = torch.optim.Adam([weight, log_t], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best = (retrieved(w), w.clone()) if val is not None else None
    scores = [] if best is None else [best[0]]
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), batch_size):
                i = order[start : start + batch_size]
                image = nn.functional.normalize(x[i] @ weight, dim=-1)
                loss = nn.functional.cross_entropy(image @ vocab.T / log_t.exp(), target[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if best is not None:
                scores.append(retrieved(weight.detach()))
                if scores[-1] > best[0]:
                    best = (scores[-1], weight.detach().clone())
    if best is None:
        return weight.detach()
    curve = ", ".join(f"{s:.3f}" for s in scores)
    print(
        f"width map: {len(val[1])} held-out anchors nearest their own token by pass "
        f"(0 = ridge): {curve}; kept pass {scores.index(best[0])}"
    )
    return best[1]


_FITTED: dict[tuple, tuple[torch.Tensor, int]] = {}


def fitted_map(
    source_dir: str | Path, model, tokenizer, exclude: tuple[int, ...] = ()
) -> tuple[torch.Tensor, int]:
    """embedding_map from the model in source_dir (loaded for its embeddings and tokenizer) to
    model; kept per process, so an untrained baseline at several scales fits it once."""
    name = getattr(getattr(model, "config", None), "name_or_path", "")
    key = (str(Path(source_dir).resolve()), name, hidden_size(model), exclude)
    if key not in _FITTED:
        source, source_tok = load(source_dir)
        _FITTED[key] = embedding_map(source, source_tok, model, tokenizer, exclude=exclude)
        del source
    return _FITTED[key]


def with_target_map(injection: dict | None, explainer_dir, target: str, explainer: str) -> dict:
    """The feature injection settings for `explainer` reading `target`'s vectors: for another
    model, "map_from" names the target's model directory (the explainer's sibling, as in the
    workflow's resources/models/), so the width map starts from embedding_map. Unchanged for
    self, or when no such directory exists (the map then starts random)."""
    out = dict(injection or {})
    if explainer_dir is None or target == explainer:
        return out
    target_dir = Path(explainer_dir).parent / target
    if (target_dir / "config.json").is_file():
        out["map_from"] = str(target_dir)
    return out
