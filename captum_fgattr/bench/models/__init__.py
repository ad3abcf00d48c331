"""Models: loading timm / open_clip / project models (``fgattr:<name>``) by name; checkpoints and folders."""
