"""Objective parameters that moved to a shared owner (TextInjection, BestRQMasking, TransducerLoss), and the rewrite
that lets a gin config saved before the move parse again: evaluation and export rebuild a model from the operative
config saved with its checkpoint, and gin rejects a binding of a parameter that its configurable no longer has.

    apply_operative_config(upgrade_bindings(config_text))
"""

import re

_TEXT_INJECTION_MOVES = {
    "paired_start_step": "TextInjection.paired_start_step",
    "text_start_step": "TextInjection.text_start_step",
    "bestrq_weight": "TextInjection.bestrq_weight",
    "ctc_weight": "TextInjection.ctc_weight",
    "bestrq_mask_prob": "BestRQMasking.mask_prob",
    "bestrq_mask_span": "BestRQMasking.mask_span",
    "chunk_size": "TransducerLoss.chunk_size",
}
# "configurable.parameter" before the move -> after it.
MOVED = {
    **{f"{objective}.{old}": new for objective in ("maestro", "astra") for old, new in _TEXT_INJECTION_MOVES.items()},
    "bestrq.mask_prob": "BestRQMasking.mask_prob",
    "bestrq.mask_span": "BestRQMasking.mask_span",
    "bestrq.noise_std": "BestRQMasking.noise_std",
    "supervised.chunk_size": "TransducerLoss.chunk_size",
}
_BINDING = re.compile(r"^(\s*)(" + "|".join(map(re.escape, MOVED)) + r")(\s*=)", re.MULTILINE)


def upgrade_bindings(config_text: str) -> str:
    """gin `config_text` with every binding of a moved parameter renamed to its new owner's; other lines unchanged."""
    return _BINDING.sub(lambda match: match.group(1) + MOVED[match.group(2)] + match.group(3), config_text)
