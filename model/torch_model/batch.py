"""The torch model's batch path: a batch of clicks learned in waves, one GRU step each.

A batch is cut into waves: wave w holds every user's w-th click of the batch, in stream
order, so a user appears at most once per wave and a user's clicks keep their order
across waves. Per wave:

1. one candidate block (`MixRanker.learn_many`) for all the wave's users, from the
   index answers kept when each user was last ranked by `recommend_many`
   (`SearchMemory`) and one index search for the others, the mixer stepping click by
   click in wave order; then, click by click, what `TorchRecommender.learn_one` does
   before its GRU step: the popularity, transition and co-occurrence counts, and the
   item's row (created if new);
2. one batched GRU training step (`GruEncoder.step_many`) over the wave's clicks that
   have a previous item, and one batched `read` of all of them;
3. one index upsert of every item row the wave changed.

The approximations against one click at a time, which is what the contract tests
bound: the counts, the mixer and the repeat rate see the clicks in wave order rather
than stream order; within a wave the mixer's candidates and features come from the
item vectors, index and counts as they were at the wave's start (and a kept index
answer from the user's last ranking); and the wave takes one Adagrad step on the
summed gradients where one click at a time would take one step per click. A wave of a
single click is `learn_one` itself, so a batch of one is exactly today's path.

Each item the batch changed is reported once, in the `Update` of the last interaction
(in stream order) that changed it, with its vector before the batch (None: the batch
created it) and after it: waves run out of stream order, so per-click changes would not
chain in the order of the updates.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.base import (
    Interaction,
    ItemChange,
    Update,
    UserContext,
    search_ids_each,
    waves,
)
from model.baselines import count_click
from model.torch_model.encoder import ClickInputs, click_inputs

if TYPE_CHECKING:
    from model.torch_model.recommender import TorchRecommender


def learn_many(
    model: TorchRecommender,
    contexts: Mapping[str, UserContext],
    interactions: Sequence[Interaction],
) -> list[Update]:
    """`model.learn_many`: see the module docstring."""
    current = dict(contexts)
    updates: list[Update | None] = [None] * len(interactions)
    # Each changed item: its vector before the batch, after it, and the last position.
    net: dict[str, tuple[np.ndarray | None, np.ndarray, int]] = {}
    for wave in waves(interactions):
        clicks = [interactions[p] for p in wave]
        if len(clicks) == 1:
            done = [model.learn_one(current[clicks[0].user_id], clicks[0])]
        else:
            done = _learn_wave(model, [current[c.user_id] for c in clicks], clicks)
        for position, click, update in zip(wave, clicks, done, strict=True):
            current[click.user_id] = update.context
            updates[position] = update
            for item_id, change in update.item_changes.items():
                first = net.get(item_id)
                before = change.before if first is None else first[0]
                last = position if first is None else max(first[2], position)
                net[item_id] = (before, change.after, last)
    reported: list[dict[str, ItemChange]] = [{} for _ in interactions]
    for item_id, (before, after, position) in net.items():
        reported[position][item_id] = ItemChange(before, after)
    return [
        dataclasses.replace(update, item_changes=changes)
        for update, changes in zip(updates, reported, strict=True)
        if update is not None
    ]


def _learn_wave(
    model: TorchRecommender, contexts: list[UserContext], clicks: list[Interaction]
) -> list[Update]:
    """One wave: clicks of distinct users, `contexts[j]` the context before `clicks[j]`."""
    encoder, ranker = model.encoder, model.ranker
    unpacked = [encoder.unpack(context.state) for context in contexts]

    inputs: list[ClickInputs] = []
    targets: list[int] = []
    lasts: list[int | None] = []
    created: set[int] = set()
    hs = [h for _, h, _ in unpacked]
    ranker.learn_many(contexts, hs, [c.item_id for c in clicks], model.searched.take(hs))
    for context, click in zip(contexts, clicks, strict=True):
        gap = click.timestamp - context.last_timestamp if context.recent else None
        inputs.append(click_inputs(gap, click.event_type))
        same_session = count_click(model.popularity, model.transitions, context, click)
        ranker.forget_successors(context.recent, click.item_id, same_session)
        known = len(encoder)
        targets.append(encoder.row(click.item_id))
        if targets[-1] == known:
            created.add(targets[-1])
        lasts.append(encoder.rows.get(context.recent[-1]) if context.recent else None)

    stepping = [j for j, last in enumerate(lasts) if last is not None]
    rows = [(last, targets[j]) for j, last in enumerate(lasts) if last is not None]
    # Each row the wave changes, with the first click that touches it (the one whose
    # Update reports the change) and its vector before the wave (None: created by it).
    touched: dict[int, tuple[int, np.ndarray | None]] = {}
    for j, target in enumerate(targets):
        if target in created and target not in touched:
            touched[target] = (j, None)
    hs = [h for _, h, _ in unpacked]
    losses: list[float | None] = [None] * len(clicks)
    if stepping:
        befores = {row: encoder.vector(row) for pair in rows for row in pair}
        h_after, stepped_losses = encoder.step_many(
            torch.stack([unpacked[j][0] for j in stepping]),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [unpacked[j][2] for j in stepping],
        )
        for at, j in enumerate(stepping):
            hs[j] = h_after[at]
            if stepped_losses is not None:
                losses[j] = stepped_losses[at]
                for row in rows[at]:
                    if row not in touched:
                        touched[row] = (j, befores[row])
    h = torch.stack(hs)
    h_next = encoder.read_many(targets, inputs, h)

    changes: list[dict[str, ItemChange]] = [{} for _ in clicks]
    for row in sorted(touched):
        j, before = touched[row]
        changes[j][encoder.ids[row]] = ItemChange(before, encoder.vector(row))
    if touched:
        ids = [encoder.ids[row] for row in sorted(touched)]
        model.index.upsert(ids, encoder.emb[sorted(touched)].numpy())
    if model.content is not None:
        for changed in changes:
            model.content.learn(changed)
    # Rows of numpy arrays: cheaper to index and to turn into floats than torch rows.
    h_rows, next_rows = h.numpy(), h_next.numpy()
    return [
        Update(
            context=model.advance(
                context, click, state=encoder.pack(h_rows[j], next_rows[j], inputs[j])
            ),
            item_changes=changes[j],
            user_vector=next_rows[j].copy(),
            loss=losses[j],
        )
        for j, (context, click) in enumerate(zip(contexts, clicks, strict=True))
    ]


class SearchMemory:
    """What the ranking of a batch found in the index for each user, kept for the
    user's next click: that click's mixer step needs the index's unexcluded answer for
    the same h, so one search serves both (the step's candidates then come from the
    index as it was when the user was last ranked). Holds the last `size` users' answers;
    derived data, never state."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._answers: OrderedDict[bytes, list[str]] = OrderedDict()

    def take(self, hs: Sequence[torch.Tensor]) -> list[list[str] | None]:
        """The kept answer for each h (None: search it), each given out once."""
        return [self._answers.pop(h.numpy().tobytes(), None) for h in hs]

    def search(
        self,
        model: TorchRecommender,
        contexts: Sequence[UserContext],
        excludes: Sequence[Collection[str]],
        hs: Mapping[int, torch.Tensor],
    ) -> list[list[str] | None]:
        """The ids of the index's top `retrieve` for each context that ranks (`hs`: its
        h by position), `excludes[i]` left out, from one unexcluded search of `retrieve`
        plus the most exclusions; the unexcluded top `retrieve` of each is kept for
        `take`. None for a context without recent items, and for all when the
        exclusions outnumber `retrieve` (a search that wide would cost more than the
        second search it saves)."""
        found: list[list[str] | None] = [None] * len(contexts)
        retrieve = model.ranker.retrieve
        ranking = list(hs)
        widest = max((len(excludes[i]) for i in ranking), default=0)
        if not ranking or retrieve <= 0 or len(model.index) == 0 or widest > retrieve:
            return found
        queries = np.stack([h.numpy() for h in hs.values()])
        answers = search_ids_each(model.index, queries, retrieve + widest)
        for i, h, answer in zip(ranking, hs.values(), answers, strict=True):
            exclude = excludes[i]
            found[i] = [item for item in answer if item not in exclude][:retrieve]
            key = h.numpy().tobytes()
            self._answers[key] = answer[:retrieve]
            self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        return found
