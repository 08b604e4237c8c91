"""Tensor names between stages. A graph cannot use one name as both input and output, so stage i+1 takes
``prev_hidden_state`` / ``prev_exit_state`` where stage i returned ``hidden_state`` / ``exit_state``."""

CARRIED = ("hidden_state", "exit_state")
SEQ_NAMES = ("input_ids", "token_type_ids", "attention_mask", "prev_hidden_state", "hidden_state")


def carry(outputs: dict) -> dict:
    """A stage's outputs renamed as the next stage's inputs (``logits`` stays behind)."""
    return {f"prev_{k}": v for k, v in outputs.items() if k in CARRIED}
