"""Tiny models for the extract tests (used as ``--arch tests/extract_models.py:Name`` and, for
the pickled-module test, imported as ``extract_models``)."""

from __future__ import annotations

import torch
import torch.nn as nn

IN, HID, P, C = 12, 16, 8, 4


class Net(nn.Module):
    def __init__(self, bias: bool = True, num_classes: int = C):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, P), nn.ReLU())
        self.fc = nn.Linear(P, num_classes, bias=bias)

    def forward(self, x):
        return self.fc(self.body(x))


class NoBias(Net):
    def __init__(self):
        super().__init__(bias=False)


class AuxAfter(nn.Module):
    """An auxiliary head registered (and called) after the classifier, not returned."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, P), nn.ReLU())
        self.fc = nn.Linear(P, C)
        self.aux = nn.Linear(P, 3)
        self.aux_out = None

    def forward(self, x):
        h = self.body(x)
        out = self.fc(h)
        self.aux_out = self.aux(h)
        return out


class AuxTuple(AuxAfter):
    """Returns (logits, aux): the logits are the first element."""

    def forward(self, x):
        h = self.body(x)
        return self.fc(h), self.aux(h)


class Projection(nn.Module):
    """A linear projection before the classifier: features are the projection's output."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, HID), nn.ReLU())
        self.proj = nn.Linear(HID, P)
        self.fc = nn.Linear(P, C)

    def forward(self, x):
        return self.fc(self.proj(self.body(x)))


class ViewOut(Net):
    def forward(self, x):
        return self.fc(self.body(x)).view(-1, C)


class DictOut(Net):
    def forward(self, x):
        return {"logits": self.fc(self.body(x)), "features": self.body(x)}


class ConvHead(nn.Module):
    """A 1x1-conv classifier: the head is not linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(IN, P)
        self.head = nn.Conv1d(P, C, 1)

    def forward(self, x):
        return self.head(self.embed(x).unsqueeze(-1)).squeeze(-1)


class CosineHead(nn.Module):
    """A normalised (cosine) classifier built on nn.Linear: features·Wᵀ + b does not hold."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, P), nn.ReLU())
        self.fc = nn.Linear(P, C)

    def forward(self, x):
        h = nn.functional.normalize(self.body(x), dim=1)
        w = nn.functional.normalize(self.fc.weight, dim=1)
        return 10 * h @ w.T


class SmallConv(nn.Module):
    """Inputs (N, IN) seen as (N, 1, 3, 4); for --layer with --pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, C)

    def forward(self, x):
        x = x.reshape(x.shape[0], 1, 3, 4)
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class Wrapper(nn.Module):
    """A model whose own keys start with 'model.' (must not be stripped)."""

    def __init__(self):
        super().__init__()
        self.model = Net()

    def forward(self, x):
        return self.model(x)


def make_net(hidden: int = HID, num_classes: int = C):
    """A factory taking arguments (for --arch-arg)."""
    m = Net(num_classes=num_classes)
    m.body[0] = nn.Linear(IN, hidden)
    m.body[2] = nn.Linear(hidden, P)
    return m


class Exploding(Net):
    def forward(self, x):
        raise RuntimeError("the model ran")


class Interrupting(Net):
    """Raises KeyboardInterrupt on its 4th call (discovery is the 1st)."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls >= 4:
            raise KeyboardInterrupt
        return super().forward(x)


class Tokens(nn.Module):
    """Integer inputs (token ids), as for text models."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, P)
        self.fc = nn.Linear(P, C)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1))


class InplaceAfter(nn.Module):
    """body.0's output is changed in place by the ReLU that follows it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, P), nn.ReLU(inplace=True))
        self.fc = nn.Linear(P, C)

    def forward(self, x):
        return self.fc(self.body(x))


VOCAB, SEQ = 20, 6


class MaskedTokens(nn.Module):
    """Named inputs, as language models take them: token ids and an attention mask (the mean
    of the unmasked token embeddings, a projection, the classifier)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, HID)
        self.proj = nn.Sequential(nn.Linear(HID, P), nn.ReLU())
        self.fc = nn.Linear(P, C)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        pooled = (self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.fc(self.proj(pooled))


class TokenEncoder(nn.Module):
    """Tokens (N, L, P) through a per-token block, then the mean over the attention mask: the
    block's output pooled by --pool avg (tokens) is the classifier's input."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, P)
        self.block = nn.Sequential(nn.Linear(P, P), nn.Tanh())
        self.fc = nn.Linear(P, C)

    def forward(self, input_ids, attention_mask):
        tokens = self.block(self.emb(input_ids))
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return self.fc((tokens * mask).sum(1) / mask.sum(1).clamp(min=1))


class Deep(nn.Module):
    """Eleven blocks (names blocks.0 .. blocks.10 sort out of forward order), registered
    after the classifier."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(P, C)
        self.stem = nn.Linear(IN, P)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(P, P), nn.Tanh()) for _ in range(11)])

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)))


class TinyLM(nn.Module):
    """A causal language model in the transformers manner: embeddings, a per-token block, an
    output layer tied to the embeddings (no bias), get_output_embeddings()."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, P)
        self.block = nn.Sequential(nn.Linear(P, P), nn.Tanh())
        self.lm_head = nn.Linear(P, VOCAB, bias=False)
        self.lm_head.weight = self.emb.weight

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.lm_head(self.block(self.emb(input_ids)))}


class TinyCNN(nn.Module):
    """Images (N, channels, H, W) of any size: a conv, global average pooling, the classifier."""

    def __init__(self, channels: int = 3, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x))
