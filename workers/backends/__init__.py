"""Model backends behind :class:`workers.backends.base.ModelBackend`: ``local`` (embedded) and ``openai``."""

from workers.backends.base import ModelBackend, ModelCall, ModelReply

__all__ = ["ModelBackend", "ModelCall", "ModelReply"]
