"""Constrained generation: JSON Schema, any JSON object, a regex, a grammar or a choice, through llguidance.

spec.Constraint is what the options carry (torch-free); compiler.py checks and compiles it once per
content; stage.ConstraintStage is the pipeline's token mask (it imports torch: import it from
gpt2kit.constraints.stage, so that this package stays light for the CLI's help).
"""

from .spec import KINDS, Constraint

__all__ = ["KINDS", "Constraint"]
