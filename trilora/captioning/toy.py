"""The toy world's captioner: the shipped judge reads style, colour, floors and time of a render,
and `world.caption` says them in the world's own words, as the renders' true captions do."""

from trilora.toy.judge import load_judge
from trilora.toy.world import caption


class ToyCaptioner:
    def __init__(self):
        self.judge = load_judge()

    def __call__(self, images) -> list[str]:
        return [caption(attributes) for attributes in self.judge.predict(images)]
