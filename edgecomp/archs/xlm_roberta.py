"""XLM-RoBERTa: RoBERTa's layout with a larger vocabulary."""

from dataclasses import replace

from .base import register
from .bert import BERT

XLM_ROBERTA = register(replace(BERT, family="xlm-roberta"))
