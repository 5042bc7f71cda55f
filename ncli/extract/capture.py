"""``ncli.capture(model)``: the classifier's input (the penultimate features) and output at
every forward pass of a torch model, for the accumulator API in a training loop.

    cap = ncli.capture(model)          # hooks only: nothing runs yet
    logits = model(x)                  # the first call also finds the classifier
    acc.update(cap.features, y)

The classifier is found exactly as ``ncli extract`` finds it (the eager extractor's forward
hooks: the ``nn.Linear`` whose output is what the model returns; ``classifier="name"``
overrides), on the first batch the model is called with: that batch runs once more before the
real call, in eval mode under ``torch.no_grad`` (no batch-norm statistics change, no
gradients), and the model's mode is restored. ``cap.features`` / ``cap.logits`` are the
last call's tensors, detached, where the model computed them.
"""

from __future__ import annotations

from ncli.errors import UsageError


class Capture:
    """Forward hooks on ``model`` (see the module docstring); ``close()`` or the end of a
    ``with`` block removes them."""

    def __init__(self, model, classifier: str | None = None):
        from ncli.extract.extractors.eager import EagerExtractor

        was_training = model.training
        self.model = model
        self._extractor = EagerExtractor(model, classifier=classifier)  # (it puts the model in eval mode)
        model.train(was_training)
        self._discovering = False
        self._pre_hook = model.register_forward_pre_hook(self._first_call, with_kwargs=True)

    def _first_call(self, module, args, kwargs):
        if self._discovering:
            return None
        import torch

        if len(args) == 1 and not kwargs:
            inputs = args[0]
        elif not args and kwargs:
            inputs = dict(kwargs)
        else:
            raise UsageError("ncli.capture: the model must be called with one tensor or with keyword tensors only")
        self._discovering = True
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                self._extractor.discover(inputs)
        finally:
            module.train(was_training)
            self._discovering = False
        self._pre_hook.remove()
        return None

    def _last(self):
        captured = self._extractor._captured
        if captured is None:
            raise UsageError("ncli.capture: the model has not been called since the hooks were set")
        return captured

    @property
    def features(self):
        """(n, p) the classifier's input at the last forward pass (detached)."""
        return self._last()[0].detach()

    @property
    def logits(self):
        """(n, C) the classifier's output at the last forward pass (detached)."""
        return self._last()[1].detach()

    @property
    def classifier(self) -> str:
        """The classifier's module name (after the first forward pass)."""
        self._found()
        return self._extractor.classifier

    @property
    def found_by(self) -> str:
        self._found()
        return self._extractor.found_by

    @property
    def weight(self):
        """The classifier's weight (C, p), as it is now (detached)."""
        self._found()
        return self._extractor.modules[self._extractor.classifier].weight.detach()

    @property
    def bias(self):
        """The classifier's bias (C,), or None."""
        self._found()
        bias = self._extractor.modules[self._extractor.classifier].bias
        return None if bias is None else bias.detach()

    def _found(self) -> None:
        if not self._extractor.classifier:
            raise UsageError("ncli.capture: the classifier is found at the model's first forward pass; call the model first")

    def close(self) -> None:
        self._pre_hook.remove()
        self._extractor.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def capture(model, classifier: str | None = None) -> Capture:
    """Hooks capturing ``model``'s classifier input and output (see :class:`Capture`)."""
    return Capture(model, classifier=classifier)
