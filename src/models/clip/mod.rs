//! CLIP (ViT-L/14): the vision tower for rewards and the text tower for prompts.
