"""DVC stages: one module per stage, each a thin `main()` over a typed core function in `multimodal`."""
