"""ELECTRA (discriminator/encoder): BERT's blocks; a narrower table projected up (embeddings_project)."""

from dataclasses import replace

from .base import register
from .bert import BERT

ELECTRA = register(replace(BERT, family="electra"))
