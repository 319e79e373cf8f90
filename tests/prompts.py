"""Random prompts of the native-engine tests (tests/native): token ids from a seeded CPU generator."""
import torch


def ids(batch, length, seed=0, vocab=1000):
    """(batch, length) int64 ids in [1, vocab), the same for the same arguments."""
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
