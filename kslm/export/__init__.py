"""kslm models out to Hugging Face (`kslm export`) and back in (kslm.export.reader): writer.py (the directory),
native.py (exact HF architectures), modeling_kslm.py + configuration_kslm.py (remote code over kslm.nn),
tokenizer_files.py, card.py (README.md), cli.py."""
