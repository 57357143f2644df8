"""Category names and their ShapeNetCore synset ids.

``--categories`` takes either; everything downstream keys on the synset id, the name is
kept in meta.json for people.
"""

from __future__ import annotations

from cdc_aug.errors import UserError

# ShapeNetCore synsets of the 13 DISN/3D-R2N2 categories plus the furniture that the
# Sweet Home 3D catalogs hold in numbers.
SYNSETS: dict[str, str] = {
    "airplane": "02691156",
    "bathtub": "02808440",
    "bed": "02818832",
    "bench": "02828884",
    "bookshelf": "02871439",
    "cabinet": "02933112",
    "car": "02958343",
    "chair": "03001627",
    "clock": "03046257",
    "display": "03211117",
    "lamp": "03636649",
    "loudspeaker": "03691459",
    "piano": "03928116",
    "rifle": "04090263",
    "sofa": "04256520",
    "stove": "04330267",
    "table": "04379243",
    "telephone": "04401088",
    "washer": "04554684",
    "watercraft": "04530566",
}
NAMES: dict[str, str] = {v: k for k, v in SYNSETS.items()}


def resolve(values: str | list[str] | tuple[str, ...] | None, allowed: tuple[str, ...] | None = None,
            flag: str = "--categories") -> list[tuple[str, str]]:
    """``[(synset, name), ...]`` for names or synset ids, in the order given, deduplicated."""
    if values is None:
        return []
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[tuple[str, str]] = []
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        if item in SYNSETS:
            pair = (SYNSETS[item], item)
        elif item in NAMES:
            pair = (item, NAMES[item])
        else:
            known = ", ".join(allowed or tuple(SYNSETS))
            raise UserError(f"{flag}: unknown category {raw.strip()!r} (known: {known}; or a synset id)")
        if allowed is not None and pair[1] not in allowed:
            raise UserError(f"{flag}: this source has no {pair[1]!r} shapes (it has: {', '.join(allowed)})")
        if pair not in out:
            out.append(pair)
    if not out:
        raise UserError(f"{flag}: no category given")
    return out
