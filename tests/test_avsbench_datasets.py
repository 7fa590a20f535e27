"""S4 / MS3 / AVSS loaders on tiny hand-built copies of the official layouts (no synthetic generator)."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from avs_mamba.data import audio
from avs_mamba.data.avsbench import (
    NUM_CLASSES,
    NUM_FRAMES,
    AVSSDataset,
    DatasetError,
    MS3Dataset,
    S4Dataset,
    avss_palette,
    build_dataset,
    decode_palette_mask,
)
from avs_mamba.data.transforms import TrainAugment, apply_to_image, short_side_crop_geometry

# ImageNet-normalised values of pure colours, worked out by hand: (c - mean) / std.
RED = (2.2489, -2.0357, -1.8044)  # (255, 0, 0)
WHITE = (2.2489, 2.4286, 2.6400)  # (255, 255, 255)
BLACK = (-2.1179, -2.0357, -1.8044)  # (0, 0, 0)
COLOURS = [(255, 0, 0), (255, 255, 255), (0, 0, 0), (0, 0, 0), (0, 0, 0)]

# ---------------------------------------------------------------------------------------------------------------
# fixture writers


def save_image(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def solid(h: int, w: int, colour) -> np.ndarray:
    return np.full((h, w, 3), colour, dtype=np.uint8)


def rows_mask(h: int, w: int, rows: int) -> np.ndarray:
    """0/255 mask whose first ``rows`` rows are foreground."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[:rows] = 255
    return m


def save_wav(path: Path, seconds: float, freq: float = 440.0, sr: int = 16000) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    data = (0.4 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    scipy.io.wavfile.write(path, sr, data)
    return data


def save_official_pkl(path: Path, examples: np.ndarray) -> None:
    """As the official preprocessing writes it: a pickled float32 tensor created with requires_grad."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(torch.tensor(examples, requires_grad=True)[:, None].float(), f)


def audio_pattern(n: int) -> np.ndarray:
    """Example i filled with the value i + 1 (so repeat/zero padding is visible)."""
    return np.broadcast_to(np.arange(1, n + 1, dtype=np.float64)[:, None, None], (n, 96, 64)).copy()


def make_s4(base: Path, size: int = 32) -> Path:
    """Single-source/ with clipA (train, pkl audio), clipB (val, wav only), clipC (test, pkl and wav)."""
    root = base / "Single-source"
    root.mkdir(parents=True)
    (root / "s4_meta_data.csv").write_text(
        "name,start_time,category,split\nclipA,0,dog_barking,train\nclipB,0,race_car,val\nclipC,1,race_car,test\n"
    )
    data = root / "s4_data"
    for name, cat, split in [
        ("clipA", "dog_barking", "train"),
        ("clipB", "race_car", "val"),
        ("clipC", "race_car", "test"),
    ]:
        for k in range(1, 6):
            save_image(
                data / "visual_frames" / split / cat / name / f"{name}_{k}.png", solid(size, size, COLOURS[k - 1])
            )
            if split != "train" or k == 1:
                save_image(data / "gt_masks" / split / cat / name / f"{name}_{k}.png", rows_mask(size, size, 2 * k))
        if name != "clipB":
            save_official_pkl(data / "audio_log_mel" / split / cat / f"{name}.pkl", audio_pattern(5))
        if name != "clipA":
            save_wav(data / "audio_wav" / split / cat / f"{name}.wav", 5.0)
    return root


def make_ms3(base: Path, size: int = 16) -> Path:
    """Multi-sources/ with m1 (train) and m2 (val); masks are 'P' images holding raw indices 0/1."""
    root = base / "Multi-sources"
    root.mkdir(parents=True)
    (root / "ms3_meta_data.csv").write_text("video_id,split\nm1,train\nm2,val\n")
    data = root / "ms3_data"
    for name, split in [("m1", "train"), ("m2", "val")]:
        for k in range(1, 6):
            save_image(data / "visual_frames" / name / f"{name}.mp4_{k}.png", solid(size, size, COLOURS[k - 1]))
            mask = Image.fromarray((rows_mask(size, size, k) > 0).astype(np.uint8), mode="P")
            mask.putpalette([0, 0, 0] * 256)  # index 1 is black too: only the raw index tells foreground
            (data / "gt_masks" / split / name).mkdir(parents=True, exist_ok=True)
            mask.save(data / "gt_masks" / split / name / f"{name}_{k}.png")
        save_official_pkl(data / "audio_log_mel" / split / f"{name}.pkl", audio_pattern(4))
    return root


def two_class_rgb(h: int, w: int, left: int, right: int) -> np.ndarray:
    pal = avss_palette()
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:, : w // 2] = pal[left]
    out[:, w // 2 :] = pal[right]
    return out


def make_avss(base: Path, h: int = 32, w: int = 48) -> Path:
    """AVSS root: v1s train clip (1 label), v1m val clip (5 labels), v2 test clip (labels_semantic, audio.pkl)."""
    root = base / "AVSBench_semantic"
    root.mkdir(parents=True)
    (root / "metadata.csv").write_text(
        "vid,uid,s_min,s_sec,a_obj,split,label\n"
        "aaa,aaa_0_5000,0,0,dog,train,v1s\n"
        "bbb,bbb_1,0,0,man_guitar,val,v1m\n"
        "ccc,ccc_0_10000,0,0,car,test,v2\n"
    )
    (root / "label2idx.json").write_text(json.dumps({f"class{i}": i + 1 for i in range(71)}))
    for uid, label, n, n_labels in [("aaa_0_5000", "v1s", 5, 1), ("bbb_1", "v1m", 5, 5), ("ccc_0_10000", "v2", 10, 10)]:
        clip = root / label / uid
        for i in range(n):
            save_image(clip / "frames" / f"{i}.jpg", solid(h, w, (255, 0, 0) if i == 0 else (0, 0, 0)), quality=100)
        for i in range(n_labels):
            if label == "v2":
                sem = np.full((h, w), 255, dtype=np.uint8)
                sem[:, : w // 2] = 3
                save_image(clip / "labels_semantic" / f"{i}.png", sem)
            else:
                save_image(clip / "labels_rgb" / f"{i}.png", two_class_rgb(h, w, 1, 15))
        if label == "v2":
            save_official_pkl(clip / "audio.pkl", audio_pattern(10))
        else:
            save_wav(clip / "audio.wav", 5.0)
    return root


@pytest.fixture()
def s4_root(tmp_path):
    return make_s4(tmp_path)


@pytest.fixture()
def ms3_root(tmp_path):
    return make_ms3(tmp_path)


@pytest.fixture()
def avss_root(tmp_path):
    return make_avss(tmp_path)


def assert_pixel(frames: torch.Tensor, t: int, expected, tol: float = 1e-3) -> None:
    got = frames[t, :, 0, 0].tolist()
    assert got == pytest.approx(list(expected), abs=tol), f"frame {t}: {got} != {expected}"


# ---------------------------------------------------------------------------------------------------------------
# S4


class TestS4:
    def test_train_item(self, s4_root):
        ds = S4Dataset(s4_root, "train", image_size=32)
        assert len(ds) == 1
        item = ds[0]
        assert item["frames"].shape == (5, 3, 32, 32) and item["frames"].dtype == torch.float32
        assert_pixel(item["frames"], 0, RED)
        assert_pixel(item["frames"], 1, WHITE)
        assert_pixel(item["frames"], 4, BLACK)
        assert item["masks"].shape == (5, 32, 32) and item["masks"].dtype == torch.float32
        assert item["masks"][0].sum().item() == 2 * 32  # first two rows
        assert set(item["masks"][0].unique().tolist()) == {0.0, 1.0}
        assert item["masks"][1:].eq(0).all()
        assert item["label_flags"].tolist() == [True, False, False, False, False]
        assert item["frame_flags"].tolist() == [True] * 5
        assert item["audio"].shape == (5, 1, 96, 64) and item["audio"].dtype == torch.float32
        assert item["audio"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # read from the pkl
        assert item["id"] == "clipA" and item["category"] == "dog_barking"

    def test_val_item_audio_from_wav(self, s4_root):
        item = S4Dataset(s4_root, "val", image_size=32)[0]
        assert item["label_flags"].tolist() == [True] * 5
        assert [m.sum().item() for m in item["masks"]] == [2 * k * 32 for k in range(1, 6)]
        wav = s4_root / "s4_data/audio_wav/val/race_car/clipB.wav"
        waveform, sr = audio.load_wav(wav)
        expected = torch.from_numpy(audio.waveform_to_examples(waveform, sr))[:, None]
        assert expected.shape[0] == 5
        torch.testing.assert_close(item["audio"], expected)

    def test_audio_source_choice(self, s4_root):
        from_pkl = S4Dataset(s4_root, "test", audio_source="pkl")[0]["audio"]
        from_wav = S4Dataset(s4_root, "test", audio_source="wav")[0]["audio"]
        auto = S4Dataset(s4_root, "test")[0]["audio"]
        assert auto.equal(from_pkl) and not from_wav.equal(from_pkl)
        with pytest.raises(DatasetError, match="clipB.pkl") as err:
            S4Dataset(s4_root, "val", audio_source="pkl")[0]
        assert err.value.kind == "missing_file"

    def test_resize_keeps_eval_masks_native(self, s4_root):
        val = S4Dataset(s4_root, "val", image_size=16)[0]
        assert val["frames"].shape == (5, 3, 16, 16) and val["masks"].shape == (5, 32, 32)
        assert_pixel(val["frames"], 0, RED)
        val8 = S4Dataset(s4_root, "val", image_size=16, mask_size=8)[0]
        assert val8["masks"].shape == (5, 8, 8) and val8["masks"][1].sum().item() == 1 * 8  # 4 of 32 rows -> 1 of 8
        train = S4Dataset(s4_root, "train", image_size=16)[0]
        assert train["masks"].shape == (5, 16, 16) and train["masks"][0].sum().item() == 1 * 16

    def test_dataloader_batches(self, s4_root):
        batch = next(iter(DataLoader(S4Dataset(s4_root, "val", image_size=32), batch_size=2)))
        assert batch["frames"].shape == (1, 5, 3, 32, 32) and batch["id"] == ["clipB"]


class TestMS3:
    def test_items(self, ms3_root):
        for split, name in [("train", "m1"), ("val", "m2")]:
            item = MS3Dataset(ms3_root, split, image_size=16)[0]
            assert item["id"] == name and "category" not in item
            assert item["frames"].shape == (5, 3, 16, 16)
            assert_pixel(item["frames"], 0, RED)
            assert [m.sum().item() for m in item["masks"]] == [k * 16 for k in range(1, 6)]  # raw 'P' index 1
            assert item["label_flags"].tolist() == [True] * 5
            assert item["audio"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 4.0]  # 4 examples, last repeated


# ---------------------------------------------------------------------------------------------------------------
# AVSS


class TestAVSS:
    def test_palette(self):
        pal = avss_palette()
        assert pal.shape == (71, 3)
        # PASCAL-VOC colours, by hand: 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 15 (192,128,128)
        assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0]
        assert pal[3].tolist() == [128, 128, 0] and pal[15].tolist() == [192, 128, 128]
        assert len({tuple(c) for c in pal.tolist()}) == 71
        np.testing.assert_array_equal(decode_palette_mask(pal[None, :, :]), np.arange(71)[None, :])

    def test_v1s_train_padding_and_flags(self, avss_root):
        ds = AVSSDataset(avss_root, "train", image_size=16)
        assert len(ds) == 1
        item = ds[0]
        assert item["frames"].shape == (10, 3, 16, 16) and item["masks"].shape == (10, 16, 16)
        assert item["masks"].dtype == torch.int64
        assert item["frame_flags"].tolist() == [True] * 5 + [False] * 5
        assert item["label_flags"].tolist() == [True] + [False] * 9
        assert_pixel(item["frames"], 0, RED, tol=0.05)  # JPEG
        assert_pixel(item["frames"], 1, BLACK, tol=0.05)
        assert item["frames"][5:].eq(0).all()
        # Official train crop of 48x32 to 16: short side 32 -> 16, width 24, crop x 4..20, i.e. source x 8..40;
        # output column j samples source x = 9 + 2j, class 1 below x = 24 (j <= 7), class 15 from j = 8.
        assert item["masks"][0, :, :8].eq(1).all() and item["masks"][0, :, 8:].eq(15).all()
        assert item["masks"][1:].eq(0).all()
        assert item["audio"].shape == (10, 1, 96, 64)
        assert item["audio"][:5].ne(0).any() and item["audio"][5:].eq(0).all()  # zero-padded to 10
        assert item["id"] == "aaa_0_5000" and item["subset"] == "v1s"

    def test_v1m_val_resize(self, avss_root):
        item = AVSSDataset(avss_root, "val", image_size=16)[0]
        assert item["label_flags"].tolist() == [True] * 5 + [False] * 5
        # Plain resize 48 -> 16: column j samples source x = 1.5 + 3j -> class 1 for j <= 7.
        assert item["masks"][:5, :, :8].eq(1).all() and item["masks"][:5, :, 8:].eq(15).all()
        assert item["masks"][5:].eq(0).all()
        assert AVSSDataset(avss_root, "val", image_size=16, mask_size=8)[0]["masks"].shape == (10, 8, 8)

    def test_v2_semantic_labels_and_pkl(self, avss_root):
        item = AVSSDataset(avss_root, "test", image_size=16)[0]
        assert item["frame_flags"].all() and item["label_flags"].all()
        assert item["masks"][:, :, :8].eq(3).all() and item["masks"][:, :, 8:].eq(255).all()
        assert item["audio"][:, 0, 0, 0].tolist() == [float(i) for i in range(1, 11)]

    def test_subsets_and_label_source(self, avss_root):
        assert len(AVSSDataset(avss_root, "test", subsets=("v1s", "v1m"))) == 0
        assert len(AVSSDataset(avss_root, "test", subsets=("v2",))) == 1
        with pytest.raises(DatasetError, match="labels_rgb") as err:
            AVSSDataset(avss_root, "test", label_source="rgb")[0]
        assert err.value.kind == "missing_file"
        with pytest.raises(ValueError, match="subsets"):
            AVSSDataset(avss_root, "test", subsets=("v3",))

    def test_short_side_crop_is_resize_then_crop(self):
        """The AVSS train geometry is the official two-step resize + centre crop, pixel for pixel."""
        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
        ours = np.asarray(apply_to_image(img, short_side_crop_geometry(50, 30, 24)))
        ow = int(50 * 24 / 30)  # 40
        x1 = int(round((ow - 24) / 2))  # 8
        official = np.asarray(img.resize((ow, 24), Image.BILINEAR).crop((x1, 0, x1 + 24, 24)))
        np.testing.assert_array_equal(ours, official)


# ---------------------------------------------------------------------------------------------------------------
# train augmentation


class TestAugment:
    def test_deterministic_and_epoch_dependent(self, ms3_root):
        a = MS3Dataset(ms3_root, "train", image_size=16, train_augment=TrainAugment(), seed=3)
        b = MS3Dataset(ms3_root, "train", image_size=16, train_augment=TrainAugment(), seed=3)
        assert a[0]["masks"].equal(b[0]["masks"]) and a[0]["frames"].equal(b[0]["frames"])
        draws = set()
        for epoch in range(6):
            a.set_epoch(epoch)
            draws.add(a[0]["frames"].sum().item())
        assert len(draws) > 1, "the draws must change with the epoch"

    @staticmethod
    def _identical_frames(tmp_path):
        root = make_ms3(tmp_path, size=24)
        for k in range(2, 6):  # make every frame and mask of m1 identical
            shutil.copy(
                root / "ms3_data/visual_frames/m1/m1.mp4_1.png", root / f"ms3_data/visual_frames/m1/m1.mp4_{k}.png"
            )
            shutil.copy(root / "ms3_data/gt_masks/train/m1/m1_1.png", root / f"ms3_data/gt_masks/train/m1/m1_{k}.png")
        return root

    def test_per_clip_draw_is_shared_by_the_frames(self, tmp_path):
        ds = MS3Dataset(
            self._identical_frames(tmp_path), "train", image_size=16, train_augment=TrainAugment(per_frame=False)
        )
        for epoch in range(3):
            ds.set_epoch(epoch)
            item = ds[0]
            assert all(item["frames"][t].equal(item["frames"][0]) for t in range(5))
            assert all(item["masks"][t].equal(item["masks"][0]) for t in range(5))

    def test_official_draws_are_per_frame(self, tmp_path):
        ds = MS3Dataset(self._identical_frames(tmp_path), "train", image_size=16, train_augment=TrainAugment())
        item = ds[0]
        assert any(not item["frames"][t].equal(item["frames"][0]) for t in range(1, 5))

    def test_flip_moves_frames_and_masks_together(self, tmp_path):
        root = make_avss(tmp_path)
        half = solid(32, 48, (0, 0, 0))
        half[:, :24] = (255, 0, 0)  # left half red, like the class-1 half of the label
        save_image(root / "v1s/aaa_0_5000/frames/0.jpg", half, quality=100)
        flip = TrainAugment(flip_p=1.0, photometric=False, geometry=False)
        item = AVSSDataset(root, "train", image_size=16, train_augment=flip)[0]
        assert item["masks"][0, :, :8].eq(15).all() and item["masks"][0, :, 8:].eq(1).all()
        assert item["frames"][0, 0, :, 15].tolist() == pytest.approx([RED[0]] * 16, abs=0.05)
        assert item["frames"][0, 0, :, 0].tolist() == pytest.approx([BLACK[0]] * 16, abs=0.05)

    def test_unlabelled_s4_frames_get_no_resize_or_crop(self, s4_root):
        """Official per-frame form: frames without a mask (S4 train frames 2-5) skip the geometry branch."""
        geo_only = TrainAugment(flip_p=0.0, photometric=False)
        plain = S4Dataset(s4_root, "train", image_size=16)[0]["frames"]
        for epoch in range(4):
            ds = S4Dataset(s4_root, "train", image_size=16, train_augment=geo_only)
            ds.set_epoch(epoch)
            frames = ds[0]["frames"]
            assert frames[1:].equal(plain[1:])

    def test_soft_train_masks(self, ms3_root):
        """train_mask_resize=bilinear up-samples 0/1 masks to soft targets (official AVS-Mamba); nearest does not."""
        soft = MS3Dataset(ms3_root, "train", image_size=64, train_mask_resize="bilinear")[0]["masks"]
        hard = MS3Dataset(ms3_root, "train", image_size=64)[0]["masks"]
        assert set(hard.unique().tolist()) <= {0.0, 1.0}
        inner = soft[(soft > 0) & (soft < 1)]
        assert inner.numel() > 0 and soft.min() >= 0 and soft.max() <= 1
        assert (soft.round() - hard).abs().mean() < 0.05  # same masks, soft only at their edges

    def test_augment_only_for_train(self, s4_root):
        with pytest.raises(ValueError, match="train_augment"):
            S4Dataset(s4_root, "val", train_augment=TrainAugment())


# ---------------------------------------------------------------------------------------------------------------
# bad input


S4_FAULTS = {
    "missing_frame": (
        lambda r: (r / "s4_data/visual_frames/val/race_car/clipB/clipB_3.png").unlink(),
        "wrong_frame_count",
        "clipB_3.png",
    ),
    "extra_frame": (
        lambda r: shutil.copy(
            r / "s4_data/visual_frames/val/race_car/clipB/clipB_1.png",
            r / "s4_data/visual_frames/val/race_car/clipB/clipB_6.png",
        ),
        "wrong_frame_count",
        "clipB_6.png",
    ),
    "missing_mask": (
        lambda r: (r / "s4_data/gt_masks/val/race_car/clipB/clipB_2.png").unlink(),
        "missing_file",
        "clipB_2.png",
    ),
    "missing_audio": (lambda r: (r / "s4_data/audio_wav/val/race_car/clipB.wav").unlink(), "missing_file", "clipB.wav"),
    "unreadable_image": (
        lambda r: (r / "s4_data/visual_frames/val/race_car/clipB/clipB_4.png").write_bytes(b"\x89PNG garbage"),
        "unreadable_image",
        "clipB_4.png",
    ),
    "short_audio": (lambda r: save_wav(r / "s4_data/audio_wav/val/race_car/clipB.wav", 0.5), "bad_audio", "clipB.wav"),
    "mask_size": (
        lambda r: save_image(r / "s4_data/gt_masks/val/race_car/clipB/clipB_5.png", rows_mask(16, 16, 2)),
        "size_mismatch",
        "clipB_5.png",
    ),
}


class TestBadInput:
    @pytest.mark.parametrize("fault", list(S4_FAULTS))
    def test_s4_clip_faults(self, s4_root, fault):
        plant, kind, name = S4_FAULTS[fault]
        plant(s4_root)
        ds = S4Dataset(s4_root, "val", image_size=32)
        with pytest.raises(DatasetError, match=name) as err:
            ds[0]
        assert err.value.kind == kind

    def test_missing_root_and_csv(self, tmp_path, s4_root):
        with pytest.raises(DatasetError, match="nowhere") as err:
            S4Dataset(tmp_path / "nowhere", "train")
        assert err.value.kind == "missing_file" and err.value.path == tmp_path / "nowhere"
        (s4_root / "s4_meta_data.csv").unlink()
        with pytest.raises(DatasetError, match="s4_meta_data.csv") as err:
            S4Dataset(s4_root, "train")
        assert err.value.kind == "missing_file"

    def test_bad_csv(self, s4_root):
        (s4_root / "s4_meta_data.csv").write_text("name,category\nclipA,dog_barking\n")
        with pytest.raises(DatasetError, match="split") as err:
            S4Dataset(s4_root, "train")
        assert err.value.kind == "bad_csv"

    def test_unknown_palette_colour(self, avss_root, caplog):
        bad = two_class_rgb(32, 48, 1, 15)
        bad[0, :3] = (1, 2, 3)
        save_image(avss_root / "v1m/bbb_1/labels_rgb/2.png", bad)
        with pytest.raises(DatasetError, match=r"2\.png.*RGB\(1, 2, 3\)") as err:
            AVSSDataset(avss_root, "val", off_palette="error")[0]
        assert err.value.kind == "unknown_palette_colour"
        # default: class 0 as the official loader reads it, said once per clip with the pixel count
        ds = AVSSDataset(avss_root, "val", image_size=48)
        with caplog.at_level("WARNING", logger="avs_mamba.data"):
            first, _ = ds[0], ds[0]
        assert first["masks"][2, 0, :3].tolist() == [0, 0, 0]
        reports = [r.getMessage() for r in caplog.records if "outside the AVSBench palette" in r.getMessage()]
        assert len(reports) == 1 and "3 label pixel(s) in 1 frame(s)" in reports[0]

    def test_avss_frame_count_label_and_label_map(self, avss_root):
        (avss_root / "v2/ccc_0_10000/frames/9.jpg").unlink()
        with pytest.raises(DatasetError, match="found 9 frame files, expected 10; missing: 9.jpg") as err:
            AVSSDataset(avss_root, "test")[0]
        assert err.value.kind == "wrong_frame_count"
        csv = avss_root / "metadata.csv"
        csv.write_text(csv.read_text() + "ddd,ddd_1,0,0,x,test,v3\n")
        with pytest.raises(DatasetError, match="v3") as err:
            AVSSDataset(avss_root, "test")
        assert err.value.kind == "bad_csv"
        (avss_root / "label2idx.json").write_text(json.dumps({"a": 1}))
        with pytest.raises(DatasetError, match="label2idx.json") as err:
            AVSSDataset(avss_root, "train")
        assert err.value.kind == "bad_label_map"

    def test_bad_pkl(self, ms3_root):
        (ms3_root / "ms3_data/audio_log_mel/val/m2.pkl").write_bytes(pickle.dumps(torch.zeros(5, 1, 64, 96)))
        with pytest.raises(DatasetError, match="m2.pkl") as err:
            MS3Dataset(ms3_root, "val", image_size=16)[0]
        assert err.value.kind == "bad_audio"

    def test_semantic_label_out_of_range(self, avss_root):
        save_image(avss_root / "v2/ccc_0_10000/labels_semantic/4.png", np.full((32, 48), 80, dtype=np.uint8))
        with pytest.raises(DatasetError, match=r"4\.png.*\[80\]") as err:
            AVSSDataset(avss_root, "test")[0]
        assert err.value.kind == "bad_mask"


def test_constants_and_factory(s4_root):
    assert NUM_FRAMES == {"s4": 5, "ms3": 5, "avss": 10}
    assert NUM_CLASSES == {"s4": 1, "ms3": 1, "avss": 71}
    assert isinstance(build_dataset("s4", s4_root, "val"), S4Dataset)
    with pytest.raises(ValueError, match="s4"):
        build_dataset("s5", s4_root, "val")
    with pytest.raises(ValueError, match="split"):
        build_dataset("s4", s4_root, "dev")
