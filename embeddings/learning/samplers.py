"""What the head learns from: cached vectors with labels, a validation split, and batch samplers.

Two sources give the same ``ItemSet``:
- the downloader's manifest: street crops (queries) and shop photos (gallery), labelled by product and
  grouped by category; validation holds out whole products;
- a cache built from a labelled folder: every item is both query and gallery, labelled by class;
  validation holds out items of every class (category-level similarity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Container

import numpy as np

from common import read_manifest

from ..extraction.cache import Vectors, read_ids, read_rows


@dataclass
class ItemSet:
    """Vectors with integer ``labels`` (product or class), ``groups`` (category), and their roles."""

    vectors: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    query: np.ndarray  # street side (anchors)
    gallery: np.ndarray  # shop side
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> "ItemSet":
        return ItemSet(self.vectors[mask], self.labels[mask], self.groups[mask], self.query[mask],
                       self.gallery[mask], self.ids[mask])

    @property
    def same_sides(self) -> bool:
        """True when queries and gallery are the same items (a labelled folder)."""
        return bool(np.array_equal(self.query, self.gallery))


@dataclass
class Selection:
    """The rows a manifest asks for: street crops first (``streets`` of them), then shop photos."""

    ids: list[str]
    labels: np.ndarray
    groups: np.ndarray
    streets: int


def select_from_manifest(manifest: str | Path, present: Container[str], split: str = "train",
                         strict: bool = False) -> Selection:
    """Street crops of ``split`` and the shop photos of their products whose ids are ``present``;
    products without both a street crop and a shop photo are left out. Bad manifest lines are skipped
    and reported (``strict``: the first is an error).

    Raises:
        FileNotFoundError: no manifest. ValueError: nothing to learn from (or a bad line, with ``strict``).
    """
    street, shop = [], []
    for entry in read_manifest(manifest, strict=strict).entries:
        if entry.path not in present:
            continue
        key = (entry.category, entry.product)
        if entry.kind == "street" and entry.split == split:
            street.append((entry.path, key))
        elif entry.kind == "shop":
            shop.append((entry.path, key))
    products = {key for _, key in street} & {key for _, key in shop}
    street = [(path, key) for path, key in street if key in products]
    shop = [(path, key) for path, key in shop if key in products]
    if not street:
        raise ValueError(f"{manifest}: no {split} street crop has both a vector and a shop photo of its product")
    items = street + shop
    codes = {key: code for code, key in enumerate(sorted(products))}
    return Selection([path for path, _ in items], np.array([codes[key] for _, key in items], dtype=np.int64),
                     np.array([key[0] for _, key in items], dtype=object), len(street))


def _items(selection: Selection, vectors: np.ndarray, ids: np.ndarray) -> ItemSet:
    count = len(selection.ids)
    return ItemSet(vectors, selection.labels, selection.groups, np.arange(count) < selection.streets,
                   np.arange(count) >= selection.streets, ids)


def from_manifest(vectors: Vectors, manifest: str | Path, split: str = "train", strict: bool = False) -> ItemSet:
    """The items of ``select_from_manifest`` from vectors already in memory."""
    rows = vectors.positions()
    selection = select_from_manifest(manifest, rows, split, strict)
    row_index = np.array([rows[key] for key in selection.ids], dtype=np.int64)
    return _items(selection, vectors.vectors[row_index], vectors.ids[row_index])


def from_manifest_cache(cache: str | Path, manifest: str | Path, split: str = "train",
                        strict: bool = False) -> tuple[ItemSet, dict[str, Any]]:
    """The items of ``select_from_manifest``, reading from the cache only their rows (and its ids);
    returns them with the cache's attributes.

    Raises:
        FileNotFoundError, CacheError, ValueError.
    """
    selection = select_from_manifest(manifest, set(read_ids(cache)), split, strict)
    found = read_rows(cache, selection.ids)
    return _items(selection, found.vectors, found.ids), found.attrs


def from_labels(vectors: Vectors) -> ItemSet:
    """Every item of a labelled cache, as both query and gallery."""
    if vectors.labels is None:
        raise ValueError("this cache has no labels: build it from a folder with one sub-folder per class, "
                         "or pass --manifest")
    names, labels = np.unique(vectors.labels.astype(str), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"need at least two classes, found {list(names)}")
    everything = np.ones(len(labels), dtype=bool)
    return ItemSet(vectors.vectors, labels.astype(np.int64), np.full(len(labels), "", dtype=object),
                   everything, everything.copy(), vectors.ids)


def split_validation(items: ItemSet, fraction: float, seed: int) -> tuple[ItemSet, ItemSet]:
    """Hold out whole labels (products) for validation; a labelled folder holds out items of each class."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if items.same_sides:
        held = np.zeros(len(items), dtype=bool)
        for label in np.unique(items.labels):
            members = np.flatnonzero(items.labels == label)
            count = int(round(fraction * len(members)))
            held[rng.choice(members, size=min(max(count, 1), len(members) - 1), replace=False)] = True
    else:
        labels = np.unique(items.labels)
        count = min(max(1, int(round(fraction * len(labels)))), len(labels) - 1)
        held = np.isin(items.labels, rng.choice(labels, size=count, replace=False))
    if held.all() or not held.any():
        raise ValueError(f"too few labels ({len(np.unique(items.labels))}) to hold out a validation set")
    return items.subset(~held), items.subset(held)


class _Index:
    """Positions of the items of each key, for vectorised sampling."""

    def __init__(self, keys: np.ndarray, members: np.ndarray) -> None:
        order = members[np.argsort(keys[members], kind="stable")]
        self.keys, starts, self.counts = np.unique(keys[order], return_index=True, return_counts=True)
        self.order, self.starts = order, starts
        self.position = {key: i for i, key in enumerate(self.keys)}

    def sample(self, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        slots = np.array([self.position[key] for key in keys], dtype=np.int64)  # int even when empty
        return self.order[self.starts[slots] + (rng.random(len(slots)) * self.counts[slots]).astype(np.int64)]


class TripletSampler:
    """Batches of ``classes`` labels times ``per_class`` items (street and shop mixed): the online-mining
    batches of Hermans et al. About ``in_class`` of the labels share one category, so that hard
    in-category negatives appear in every batch; the rest come from any category."""

    def __init__(self, items: ItemSet, batch_size: int, per_class: int = 4, in_class: float = 0.5) -> None:
        if batch_size < 2 * per_class:
            raise ValueError(f"batch size {batch_size} is too small for {per_class} items per class")
        self.items = items
        self.per_class = per_class
        self.classes = batch_size // per_class
        self.in_class = in_class
        self.by_label = _Index(items.labels, np.arange(len(items)))
        self.labels = self.by_label.keys
        label_group = items.groups[self.by_label.order[self.by_label.starts]]
        self.group_labels = [self.labels[label_group == group] for group in np.unique(label_group)]

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        count = min(self.classes, len(self.labels))
        in_group = self.group_labels[rng.integers(len(self.group_labels))]
        inside = rng.choice(in_group, size=min(len(in_group), int(round(self.in_class * count))), replace=False)
        rest = np.setdiff1d(self.labels, inside)
        outside = rng.choice(rest, size=min(len(rest), count - len(inside)), replace=False)
        chosen = np.repeat(np.concatenate([inside, outside]), self.per_class)
        rows = self.by_label.sample(chosen, rng)
        return self.items.vectors[rows], self.items.labels[rows]


class PairSampler:
    """Batches of (street, shop) pairs with about ``negatives`` non-matching pairs per matching one;
    ``in_class`` of the non-matching partners come from the anchor's category (hard negatives)."""

    def __init__(self, items: ItemSet, batch_size: int, negatives: float = 1.0, in_class: float = 0.5) -> None:
        if negatives < 0:
            raise ValueError(f"negatives per positive must be >= 0, got {negatives}")
        self.items = items
        self.batch_size = batch_size
        self.positives = max(1, int(round(batch_size / (1 + negatives))))
        self.in_class = in_class
        self.queries = np.flatnonzero(items.query)
        gallery = np.flatnonzero(items.gallery)
        self.by_label = _Index(items.labels, gallery)
        self.by_group = _Index(items.groups, gallery)
        self.gallery = gallery

    def _different(self, anchors: np.ndarray, rng: np.random.Generator, same_group: bool) -> np.ndarray:
        partners = (self.by_group.sample(self.items.groups[anchors], rng) if same_group
                    else self.gallery[rng.integers(len(self.gallery), size=len(anchors))])
        for _ in range(20):  # resample the few that drew the anchor's own label
            clash = self.items.labels[partners] == self.items.labels[anchors]
            if not clash.any():
                break
            redraw = (self.by_group.sample(self.items.groups[anchors[clash]], rng) if same_group
                      else self.gallery[rng.integers(len(self.gallery), size=int(clash.sum()))])
            partners[clash] = redraw
        return partners

    def partners(self, anchors: np.ndarray, rng: np.random.Generator, matching: bool) -> np.ndarray:
        """A gallery partner for each anchor: of its label, or (``matching=False``) of another label."""
        if matching:
            return self.by_label.sample(self.items.labels[anchors], rng)
        hard = rng.random(len(anchors)) < self.in_class
        partners = np.empty(len(anchors), dtype=np.int64)
        partners[hard] = self._different(anchors[hard], rng, same_group=True)
        partners[~hard] = self._different(anchors[~hard], rng, same_group=False)
        return partners

    def batch(self, rng: np.random.Generator) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        anchors = self.queries[rng.integers(len(self.queries), size=self.batch_size)]
        partners = np.concatenate([self.partners(anchors[: self.positives], rng, matching=True),
                                   self.partners(anchors[self.positives:], rng, matching=False)])
        matching = (self.items.labels[anchors] == self.items.labels[partners]).astype(np.float32)
        return (self.items.vectors[anchors], self.items.vectors[partners]), matching
