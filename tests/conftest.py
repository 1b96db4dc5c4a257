import os

# timm must never wait on the Hugging Face hub: tests run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
