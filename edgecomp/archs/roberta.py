"""RoBERTa: BERT's layout (its classifier head sits outside the encoder)."""

from dataclasses import replace

from .base import register
from .bert import BERT

ROBERTA = register(replace(BERT, family="roberta"))
