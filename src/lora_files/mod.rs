//! LoRA files: diffusers (PEFT) and kohya formats, and merging a kohya LoRA into base weights.
