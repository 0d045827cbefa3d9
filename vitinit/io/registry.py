"""The methods' official released checkpoints: where to download them and how to check them.

Every URL below was read from the method's own README (stored copies checked with the project's search
tools; the network was not reachable to confirm that the files are still served). Hashes are only those the
authors published: MAE's README gives the first 6 hex digits of each file's md5, DeiT's file names end in the
first 8 hex digits of the sha256 (the ``torch.hub`` convention). No other official file has a published hash
or size, so those fields are ``None`` and such a download is checked only for completeness
(Content-Length), never for content; :func:`vitinit.io.remote.resolve_source` says so in a warning.

What the paper (Li et al. 2021) used, and what differs here:
- MAE ViT-B/L: the released encoder-only files, as the paper.
- BEiT: the paper pre-trained BEiT on ImageNet-1k itself; no such file was released. The closest official
  file is the self-supervised ImageNet-22k one (``*_pt22k``, not the ``*_ft22k`` files that were then
  fine-tuned with labels).
- MoCo v3: only ViT-S and ViT-B were released; the paper's ViT-L was trained by the authors (no entry).
- Supervised: DeiT ViT-B (ImageNet-1k) as the paper. DeiT has no ViT-L; the ViT-L entry is DeiT III's
  ImageNet-1k model, which has layer scale (``blocks.i.ls1.gamma``/``ls2.gamma``), unlike the paper's.

Newer initializations (not in the paper):
- DINOv2 (facebookresearch/dinov2 README, "Pretrained models"): ``dinov2_vit{s,b,l,g}14_pretrain.pth`` and
  the register variants ``*_reg4_pretrain.pth`` (:data:`WITH_REGISTERS`), bare ``DinoVisionTransformer``
  state dicts at 518 px; no size or hash published. ViT-g has a SwiGLU MLP the backbone lacks (no entry).
- BEiT v2 (microsoft/unilm beit2/README.md): the self-supervised ImageNet-1k files ``*_pt1k.pth`` (the
  README *recommends* ``*_pt1k_ft21k``, which is then fine-tuned with labels: not a self-supervised init).
- data2vec-vision: released on the Hugging Face hub only, in the transformers layout
  (``facebook/data2vec-vision-{base,large}``, self-supervised, no fine-tuning): see :data:`HUB_ONLY`.
- DINOv3 (facebookresearch/dinov3 README): the ``.pth`` files come from a download form with signed links
  (no stable URL), so the entries are the README's transformers repositories
  ``facebook/dinov3-vit{b,l}16-pretrain-lvd1689m`` (:data:`HUB_ONLY`), which are GATED behind Meta's DINOv3
  License (accept it on the hub, then ``hf auth login``). ViT-B and ViT-L are distilled from ViT-7B.
- EVA-02 (baaivision/EVA ``EVA-02/asuka/README.md``, MIM pre-trained): ``eva02_B_pt_in21k_p14.pt`` (IN-21K)
  and ``eva02_L_pt_m38m_p14.pt`` (Merged-38M; the init of EVA-02's own COCO ViTDet-L), on the README's
  hub repository ``Yuxin-CV/EVA-02``; no size or hash published.
- CLIP: OpenAI's own hub repositories ``openai/clip-vit-base-patch16`` / ``-large-patch14`` (transformers
  ``CLIPModel``, QuickGELU as trained; the text tower is downloaded too and dropped). Not timm's
  ``timm/vit_base_patch16_clip_224.openai``: its config.json names ``vit_base_patch16_clip_224``, which timm
  computes with exact GELU (timm's ``*_clip_quickgelu_*`` architecture is the faithful one).
- SigLIP 2: Google's ``google/siglip2-base-patch16-224`` (transformers ``SiglipModel``: the fixed-resolution
  tower, tanh-GELU as big_vision trained it), rather than timm's ``vit_base_patch16_siglip_224.v2_webli``
  (exact GELU). Both are hub-only (:data:`HUB_ONLY`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released file. ``urls[0]`` is the link in the method's README; later URLs are mirrors."""

    family: str  # mae | beit | mocov3 | supervised
    model: str  # vit-s | vit-b | vit-l | vit-h
    urls: tuple[str, ...]
    filename: str
    documented_in: str  # repository and file where the URL is published
    size: int | None = None  # bytes; None = not published
    md5_prefix: str | None = None  # leading hex digits of the md5, as published (MAE)
    sha256_prefix: str | None = None  # leading hex digits of the sha256 (full digest when 64 long)
    hf_repo: str | None = None  # the same weights on the Hugging Face hub (transformers layout), if any
    note: str = ""

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def has_hash(self) -> bool:
        return bool(self.md5_prefix or self.sha256_prefix)


_MAE = "facebookresearch/mae README.md"
_BEIT = "microsoft/unilm beit/README.md"
_MOCO = "facebookresearch/moco-v3 CONFIG.md"
_DEIT = "facebookresearch/deit README_deit.md"
_DEIT3 = "facebookresearch/deit README_revenge.md"
_DINOV2 = "facebookresearch/dinov2 README.md"
_BEIT2 = "microsoft/unilm beit2/README.md"
_EVA02 = "baaivision/EVA EVA-02/asuka/README.md"
_FB = "https://dl.fbaipublicfiles.com"
# unilm.blob.core.windows.net is the README's host; timm and later unilm READMEs link the same files on
# conversationhub.blob.core.windows.net/beit-share-public (a read-only container link, tried second).
_BEIT_HOSTS = (
    "https://unilm.blob.core.windows.net/beit",
    "https://conversationhub.blob.core.windows.net/beit-share-public/beit",
)


def _beit(model: str, size_name: str) -> OfficialCheckpoint:
    filename = f"beit_{size_name}_patch16_224_pt22k.pth"
    return OfficialCheckpoint(
        "beit", model, tuple(f"{host}/{filename}" for host in _BEIT_HOSTS), filename, _BEIT,
        hf_repo=f"microsoft/beit-{size_name}-patch16-224-pt22k",
        note="self-supervised on ImageNet-22k (the paper pre-trained on ImageNet-1k; not released)",
    )


def _mae(model: str, size_name: str, md5_prefix: str) -> OfficialCheckpoint:
    filename = f"mae_pretrain_vit_{size_name}.pth"
    return OfficialCheckpoint(
        "mae", model, (f"{_FB}/mae/pretrain/{filename}",), filename, _MAE, md5_prefix=md5_prefix,
        note="encoder only (facebookresearch/mae#8)",
    )


def _dinov2(model: str, letter: str, registers: bool = False) -> OfficialCheckpoint:
    stem = f"dinov2_vit{letter}14"
    filename = f"{stem}{'_reg4' if registers else ''}_pretrain.pth"
    size_name = {"s": "small", "b": "base", "l": "large"}[letter]
    return OfficialCheckpoint(
        "dinov2", model, (f"{_FB}/dinov2/{stem}/{filename}",), filename, _DINOV2,
        hf_repo=f"facebook/dinov2{'-with-registers' if registers else ''}-{size_name}",
        note="LVD-142M, 518 px, patch 14" + (", 4 register tokens (dropped)" if registers else ""),
    )


def _beitv2(model: str, size_name: str) -> OfficialCheckpoint:
    filename = f"beitv2_{size_name}_patch16_224_pt1k.pth"
    url = f"https://conversationhub.blob.core.windows.net/beit-share-public/beitv2/{filename}"
    return OfficialCheckpoint(
        "beitv2", model, (url,), filename, _BEIT2,
        note="self-supervised on ImageNet-1k (the README recommends *_pt1k_ft21k, label-fine-tuned)",
    )


def _eva02(model: str, stem: str, note: str) -> OfficialCheckpoint:
    filename = f"{stem}.pt"
    url = f"https://huggingface.co/Yuxin-CV/EVA-02/resolve/main/eva02/pt/{filename}"
    return OfficialCheckpoint("eva02", model, (url,), filename, _EVA02, note=note)


def _mocov3(model: str, stem: str, note: str) -> OfficialCheckpoint:
    filename = f"{stem}.pth.tar"
    url = f"{_FB}/moco-v3/{stem}/{filename}"
    return OfficialCheckpoint("mocov3", model, (url,), filename, _MOCO, note=note)


OFFICIAL_CHECKPOINTS: dict[tuple[str, str], OfficialCheckpoint] = {
    (c.family, c.model): c
    for c in (
        _mae("vit-b", "base", "8cad7c"),
        _mae("vit-l", "large", "b8b06e"),
        _mae("vit-h", "huge", "9bdbb0"),
        _beit("vit-b", "base"),
        _beit("vit-l", "large"),
        _mocov3("vit-s", "vit-s-300ep", note="300 epochs; 12 heads (not DeiT-S's 6)"),
        _mocov3("vit-b", "vit-b-300ep", note="300 epochs; training checkpoint (both encoders, predictor)"),
        OfficialCheckpoint(
            "supervised", "vit-s", (f"{_FB}/deit/deit_small_patch16_224-cd65a155.pth",),
            "deit_small_patch16_224-cd65a155.pth", _DEIT, sha256_prefix="cd65a155",
        ),
        OfficialCheckpoint(
            "supervised", "vit-b", (f"{_FB}/deit/deit_base_patch16_224-b5f2ef4d.pth",),
            "deit_base_patch16_224-b5f2ef4d.pth", _DEIT, sha256_prefix="b5f2ef4d",
            note="DeiT-B, ImageNet-1k, 300 epochs",
        ),
        OfficialCheckpoint(
            "supervised", "vit-l", (f"{_FB}/deit/deit_3_large_224_1k.pth",), "deit_3_large_224_1k.pth",
            _DEIT3, note="DeiT III ViT-L, ImageNet-1k; has layer scale (DeiT released no ViT-L)",
        ),
        _dinov2("vit-s", "s"),
        _dinov2("vit-b", "b"),
        _dinov2("vit-l", "l"),
        _beitv2("vit-b", "base"),
        _beitv2("vit-l", "large"),
        _eva02("vit-b", "eva02_B_pt_in21k_p14", "MIM on ImageNet-21K, 224 px, patch 14"),
        _eva02("vit-l", "eva02_L_pt_m38m_p14", "MIM on Merged-38M, 224 px, patch 14"),
    )
}

# The same DINOv2 sizes trained with 4 register tokens (Darcet et al. 2024); same URL scheme.
WITH_REGISTERS: dict[tuple[str, str], OfficialCheckpoint] = {
    (c.family, c.model): c
    for c in (_dinov2(m, x, registers=True) for m, x in (("vit-s", "s"), ("vit-b", "b"), ("vit-l", "l")))
}

# Released only as transformers folders on the Hugging Face hub (pass ``hf://`` + the id as the source).
HUB_ONLY: dict[tuple[str, str], str] = {
    ("data2vec", "vit-b"): "facebook/data2vec-vision-base",
    ("data2vec", "vit-l"): "facebook/data2vec-vision-large",
    # Gated: accept the DINOv3 License on the hub first (facebookresearch/dinov3 README).
    ("dinov3", "vit-b"): "facebook/dinov3-vitb16-pretrain-lvd1689m",
    ("dinov3", "vit-l"): "facebook/dinov3-vitl16-pretrain-lvd1689m",
    ("clip", "vit-b"): "openai/clip-vit-base-patch16",
    ("clip", "vit-l"): "openai/clip-vit-large-patch14",
    ("siglip", "vit-b"): "google/siglip2-base-patch16-224",
}

NOT_RELEASED: dict[tuple[str, str], str] = {
    ("mocov3", "vit-l"): "MoCo v3 released only ViT-S and ViT-B (facebookresearch/moco-v3 CONFIG.md)",
    ("mocov3", "vit-h"): "MoCo v3 released only ViT-S and ViT-B (facebookresearch/moco-v3 CONFIG.md)",
    ("beit", "vit-h"): "BEiT released base and large only (microsoft/unilm beit/README.md)",
    ("beitv2", "vit-h"): "BEiT v2 released base and large only (microsoft/unilm beit2/README.md)",
    ("dinov2", "vit-h"): "DINOv2 released ViT-S/B/L/g only; ViT-g's SwiGLU MLP is not supported",
    ("eva02", "vit-h"): "EVA-02 released Ti/S/B/L MIM checkpoints only (EVA-02/asuka/README.md)",
    **{key: f"released on the Hugging Face hub only: pass hf://{repo}" for key, repo in HUB_ONLY.items()},
}


def official_checkpoint(family: str, model: str) -> OfficialCheckpoint | None:
    """The registry entry for ``family`` and ``model`` (e.g. "mae", "vit-b"), or None."""
    return OFFICIAL_CHECKPOINTS.get((family.lower(), model.lower().replace("_", "-")))
