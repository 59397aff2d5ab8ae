"""The captioner and generator families behind the interfaces the losses use.

captioner.py and generator.py: the interfaces and the build scaffolds every family shares. One
folder per family (blip, blip2, git, sd, sdxl): its wrapper and builder (model.py), its published
and tiny configs (configs.py). archs.py lists every family's published architectures; lora.py,
adapters.py, attention.py, tokenizers.py and trained_tokenizers.py are shared pieces. Adding a
family: docs/adding_a_model.md.
"""
