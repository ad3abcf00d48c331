"""Models: loading timm / open_clip / the default ViT by name, and the default ViT itself."""
