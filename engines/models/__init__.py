"""The networks and what is stored of them: U-Net, ResNet, one file per family, the checkpoint format,
the registry of shipped engines (their files are in ``engines/weights/``)."""
