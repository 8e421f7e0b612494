"""On-disk adapter and model formats, one module per format.

Each module owns every reader and writer of its format (STYLE.md rule 15): ``gguf.py``
(llama.cpp adapters and merged models), ``modelfile.py`` (Ollama Modelfiles),
``kohya.py`` (kohya / A1111 / Civitai image LoRAs), ``diffusers.py`` (diffusers' PEFT-style
keys), ``label_map.py`` (an image classifier's class names beside its adapter). The PEFT
adapter format still lives in
``lorakit/io.py`` until the architecture issue moves it here as ``peft.py``.
"""
