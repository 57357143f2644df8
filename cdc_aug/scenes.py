"""Prompts for text-conditioned models: a template filled per sample with its category
and a scene drawn (seeded) from a list."""

from __future__ import annotations

import random
from pathlib import Path

from .errors import UserError

DEFAULT_PROMPT = "a photograph of a {category} in a {scene}"
DEFAULT_NEGATIVE = "blurry, low quality, cartoon, text, watermark"
DEFAULT_SCENES = [
    "living room",
    "bedroom",
    "kitchen",
    "office",
    "dining room",
    "hotel lobby",
    "cafe",
    "library",
    "garden",
    "patio",
    "studio apartment",
    "classroom",
    "waiting room",
    "loft with brick walls",
    "scandinavian interior",
    "conference room",
]


def load_scenes(path: str | None) -> list[str]:
    if path is None:
        return list(DEFAULT_SCENES)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--scenes {path}: no such file")
    scenes = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not scenes:
        raise UserError(f"--scenes {path}: holds no scene (one per line)")
    return scenes


def check_template(template: str) -> None:
    try:
        template.format(category="chair", scene="room")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"--prompt {template!r}: only {{category}} and {{scene}} may be filled in ({e})") from e


def make_prompt(template: str, category: str, scenes: list[str], seed: int) -> tuple[str, str]:
    """(prompt, scene) for one sample; the scene is drawn from ``seed`` alone."""
    scene = random.Random(seed).choice(scenes)
    return template.format(category=category.replace("_", " "), scene=scene), scene
