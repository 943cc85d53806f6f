"""Fine-tuning stage: full, LoRA and DoRA on chosen layers/modules, with edit decay tracked during training."""
