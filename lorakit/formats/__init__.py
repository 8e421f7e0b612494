"""On-disk adapter and model formats, one module per format.

Each module owns every reader and writer of its format (STYLE.md rule 15): ``peft.py`` (PEFT
adapter directories: file names, tensor keys, ``adapter_config.json``), ``gguf.py``
(llama.cpp adapters and merged models), ``modelfile.py`` (Ollama Modelfiles),
``kohya.py`` (kohya / A1111 / Civitai image LoRAs), ``diffusers.py`` (diffusers' PEFT-style
keys), ``label_map.py`` (an image classifier's class names beside its adapter). ``files.py``
holds what they share: the one atomic writer (files and directories) and the checked
safetensors reader. See docs/formats.md.
"""
