"""What answers call a classifier's classes, the same on every serving path.

A version may name its classes in ``model_schema["class_labels"]``: one text per class,
in the order of the model's classes (``["legit", "fraud"]`` for classes ``[0, 1]``).
The model server answers the name as ``prediction_label``; platform inference (routes,
fast path) answers it as the prediction and keys probabilities by it; batch jobs name
their ``probability_<name>`` columns by it. A list that is not one distinct text per
class is not used, and then each class is named by itself as text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ClassLabels:
    classes: tuple[Any, ...]
    names: tuple[str, ...]  # one per class, in the classes' order
    declared: bool  # the version named them (else each class as text)
    _by_class: dict[Any, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_class", dict(zip(self.classes, self.names, strict=True)))

    @classmethod
    def of(cls, classes: list[Any] | None, model_schema: Any) -> ClassLabels | None:
        """The names of ``classes`` (None for a regressor) that ``model_schema`` declares."""
        if classes is None:
            return None
        declared = model_schema.get("class_labels") if isinstance(model_schema, Mapping) else None
        if isinstance(declared, list) and len(declared) == len(classes):
            names = tuple(str(name) for name in declared)
            if len(set(names)) == len(names):
                return cls(tuple(classes), names, True)
        return cls(tuple(classes), tuple(str(value) for value in classes), False)

    def texts(self, values: list[Any]) -> list[str]:
        """The name of each predicted class (a value outside the classes as text)."""
        names = self._by_class
        try:
            if len(values) > 16:  # a batch holds few distinct classes: name each once
                distinct = {value: names.get(value, str(value)) for value in set(values)}
                return list(map(distinct.__getitem__, values))
            return [names.get(value, str(value)) for value in values]
        except TypeError:  # several outputs per row: no class of their own
            return [str(value) for value in values]

    def answers(self, values: list[Any]) -> list[Any]:
        """Predictions as platform inference and batch jobs answer them: the declared
        names, or the classes as the model gives them when none are declared."""
        return self.texts(values) if self.declared else values
