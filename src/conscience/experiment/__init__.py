"""The paper's experiment: emergent misalignment (plain SFT on insecure code) against emergent
alignment (the same fine-tune with the conscience term), and recovery of a misaligned model."""
