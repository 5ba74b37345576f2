"""Per-position crops and per-sample quantization noise: what makes DDP compression runs equal one process."""
from __future__ import annotations

import torch

from finetune_kit.tasks.compression.data import EpochPositions, SeededCrops
from finetune_kit.tasks.compression.models.training_noise import (EntropyBottleneck, GaussianConditional,
                                                                  per_sample_noise, training_noise)


def test_positions_of_two_ranks_make_up_the_one_process_batches():
    one = EpochPositions(10, 4, seed=3, draws=12)
    ranks = []
    for r in range(2):
        s = EpochPositions(10, 4, seed=3, draws=12)
        s.rank, s.world = r, 2
        ranks.append(list(s))
        assert len(s) == len(ranks[-1])  # the arithmetic length agrees with the drawn order
    order = list(one)
    assert len(order) == 12 and len(ranks[0]) == len(ranks[1]) == 6
    for k in range(3):  # batch k of 2 per rank = batch k of 4 in one process
        assert sorted(ranks[0][2 * k:2 * k + 2] + ranks[1][2 * k:2 * k + 2]) == sorted(order[4 * k:4 * k + 4])
    one.set_epoch(1)
    assert list(one) != order
    perm = EpochPositions(10, 4, seed=3)  # one pass without replacement: cut to whole batches
    assert len(list(perm)) == len(perm) == 8 and len({i for _, _, i in perm}) == 8
    short = EpochPositions(3, 4, seed=3)
    short.rank, short.world = 1, 2
    assert len(short) == len(list(short)) == 2  # 3 images padded to 4, shorter than one batch


def test_seeded_crops_do_not_depend_on_the_reader_or_repeats():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    ds = SeededCrops(Noise(), seed=3)
    a, seed = ds[(0, 5, 2)]
    torch.rand(5)  # another reader's RNG use in between
    assert torch.equal(ds[(0, 5, 2)][0], a) and int(ds[(0, 5, 2)][1]) == int(seed)
    assert not torch.equal(ds[(0, 6, 2)][0], a)  # the same image drawn again at another position
    assert not torch.equal(ds[(1, 5, 2)][0], a)


def test_a_samples_noise_does_not_depend_on_its_batch():
    like = torch.zeros(3, 4, 2, 2)
    with per_sample_noise([7, 8, 9]):
        full = [training_noise(like), training_noise(like)]
    with per_sample_noise([8]):
        alone = [training_noise(like[:1]), training_noise(like[:1])]
    assert torch.equal(full[0][1], alone[0][0]) and torch.equal(full[1][1], alone[1][0])
    assert not torch.equal(full[0][1], full[1][1])  # the second draw (y after z) is another stream
    assert full[0].abs().max() <= 0.5


def test_entropy_models_draw_compressais_noise_outside_the_context():
    from compressai.entropy_models import EntropyBottleneck as CompressAIBottleneck

    ours, theirs = EntropyBottleneck(4), CompressAIBottleneck(4)
    theirs.load_state_dict(ours.state_dict())
    z = torch.randn(2, 4, 3, 3)
    torch.manual_seed(0)
    a = ours(z)
    torch.manual_seed(0)
    b = theirs(z)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # inside: sample 1 of a batch of 2 is coded as when it is alone
    with per_sample_noise([1, 2]):
        pair = ours(z)[0]
    with per_sample_noise([2]):
        single = ours(z[1:])[0]
    assert torch.allclose(pair[1], single[0])
    gc = GaussianConditional(None)
    y, s = torch.randn(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    with per_sample_noise([1, 2]):
        pair = gc(y, s)[1]
    with per_sample_noise([2]):
        single = gc(y[1:], s[1:])[1]
    assert torch.allclose(pair[1], single[0])
