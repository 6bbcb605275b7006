"""Reference cases for the StoryGPT-V data layer (FlintstonesSV / PororoSV readers, pickle decoding).

Standard library + numpy only (no torch). Every file is deterministic: noise comes from
``hashlib.shake_256`` of a fixed key, pickles use an explicit protocol, ``.npy`` files are written
with ``np.save``, JSON with ``sort_keys=True, indent=2`` and a trailing newline.

  flintstones_mini/  12 clips in the original `data/flintstones/` layout (split.json,
                     cleaned_annotations.json, flintstones_annotations_v1-0.json, following_cache3.pkl,
                     labels.pkl, labels_bg.pkl, video_frames_sampled_4x/*.npy, seg_mask_4x_comb/*.npy)
                     with 32x32 frames; expected_referential.json = the captions StoryGPT-V's
                     co-reference rule produces for every story (computed by a port of that rule).
  pororo_mini/       8 clips in the `data/pororo/` layout (no seg masks, no labels_bg.pkl), same extras.
  pickle_golden/     one Python object pickled with protocols 0..5 (+ numpy-1.x module-name variants),
                     expected.json (its JSON form), and hostile / malformed pickles.

The co-reference ports below follow StoryGPT-V's `EvalStoryDataset.prepare_data_batch` /
`EvalPororoStoryDataset.prepare_data_batch` ("eval") and `gill` `StoryDataset.__getitem__` /
`PororoStoryDataset.__getitem__` ("train") line by line, quirks included (see the READMEs).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_pickle(path: Path, obj, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _noise(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic uint8 noise (version-independent: SHAKE-256 of the key)."""
    n = int(np.prod(shape))
    return np.frombuffer(hashlib.shake_256(key.encode()).digest(n), dtype=np.uint8).reshape(shape).copy()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _find_start_match(s1: str, s2: str) -> str:
    min_len = min(len(s1), len(s2))
    for i in range(min_len):
        if s1[i] != s2[i]:
            return s1[:i]
    return s1[:min_len]


# --------------------------------------------------------------------------------------------
# co-reference rules, ported from StoryGPT-V (kept literal, quirks included)
# --------------------------------------------------------------------------------------------

FLINT_FEMALE = ["wilma", "betty", "pebbles"]
FLINT_MALE = ["fred", "barney", "mr slate", "dino"]


def flintstones_coref(captions: list[str], characters: list[list[str]], mode: str):
    """``mode="eval"``: EvalStoryDataset.prepare_data_batch; ``mode="train"``: gill StoryDataset.

    ``characters[i]`` = stripped entityLabels of frame i, in flintstones_annotations_v1-0.json order.
    The train variant tests ``imidiate_char in female`` (a list in a list of str: always False), so
    a repeated single character always becomes "He" there; eval tests ``imidiate_char[0]``.
    Returns (captions, ref_flags).
    """
    out, flags = [], []
    imidiate_char = None
    for idx, (caption, chars) in enumerate(zip(captions, characters)):
        ref_flag = False
        if idx == 0:
            imidiate_char = chars
        else:
            if sorted(chars) == sorted(imidiate_char) or chars in imidiate_char:
                if len(imidiate_char) > 1:
                    replace_char = "They"
                    if len(imidiate_char) == 2:
                        char_name = imidiate_char[0].capitalize() + " and " + imidiate_char[1].capitalize()
                        if char_name not in caption:
                            char_name = imidiate_char[1].capitalize() + " and " + imidiate_char[0].capitalize()
                        caption = caption.replace(char_name, replace_char)
                    elif len(imidiate_char) == 3:
                        char_name = (imidiate_char[0].capitalize() + ", " + imidiate_char[1].capitalize()
                                     + " and " + imidiate_char[2].capitalize())
                        caption = caption.replace(char_name, replace_char)
                elif mode == "eval":
                    # IndexError here when two consecutive frames both have no character.
                    if imidiate_char[0] in FLINT_FEMALE or chars in FLINT_FEMALE:
                        caption = caption.replace(imidiate_char[0].capitalize(), "She")
                    elif imidiate_char[0] in FLINT_MALE or chars in FLINT_MALE:
                        caption = caption.replace(imidiate_char[0].capitalize(), "He")
                else:
                    if imidiate_char in FLINT_FEMALE or chars in FLINT_FEMALE:  # never true
                        replace_char = "She"
                    else:
                        replace_char = "He"
                    caption = caption.replace(imidiate_char[0].capitalize(), replace_char)
                ref_flag = True
            else:
                imidiate_char = chars
        out.append(caption)
        flags.append(ref_flag)
    return out, flags


PORORO_ALL = ["Pororo", "Loopy", "Crong", "Eddy", "Poby", "Petty", "Tongtong", "Rody", "Harry",
              "pororo", "loopy", "crong", "eddy", "poby", "petty", "tongtong", "rody", "harry"]
PORORO_FEMALE = ["Petty", "Loopy", "petty", "loopy"]


def _pororo_main_char(caption: str) -> str:
    char_name = [x for x in PORORO_ALL if x in caption]
    if len(char_name) > 1:
        if len(caption[:-1].split(".")) > 1:
            char_name = [x for x in PORORO_ALL if x in caption[:-1].split(".")[-1]]
            return char_name[0] if len(char_name) > 0 else ""
        return char_name[0]
    if len(char_name) == 1:
        return char_name[0]
    return ""


def pororo_coref(captions: list[str], mode: str):
    """``mode="eval"``: EvalPororoStoryDataset (``replace(.., 'They')`` replaces every occurrence);
    ``mode="train"``: gill PororoStoryDataset (``replace(.., 'They', 1)``). Returns (captions, flags)."""
    out, flags = [], []
    imidiate_char = pre_caption = None
    for idx, caption in enumerate(captions):
        ref_flag = False
        if idx == 0:
            imidiate_char = _pororo_main_char(caption)
            pre_caption = caption
        else:
            match_words = _find_start_match(pre_caption, caption).split(" ")
            w_idx = 0
            for w_idx, word in enumerate(match_words):
                if (word.replace(",", "").replace("'", "").strip() not in PORORO_ALL
                        and "," not in word and "and" not in word):
                    break
            match_words = match_words[:w_idx]
            if len(match_words) > 1:
                replace_string = " ".join(match_words)
                if mode == "eval":
                    caption = caption.replace(replace_string, "They")
                else:
                    caption = caption.replace(replace_string, "They", 1)
            char_name = _pororo_main_char(caption)
            if char_name != "" and char_name == imidiate_char:
                replace_char = "She" if char_name in PORORO_FEMALE else "He"
                ref_flag = True
                pre_caption = caption
                caption = caption.replace(char_name, replace_char)
            else:
                imidiate_char = char_name
        out.append(caption)
        flags.append(ref_flag)
    return out, flags


def pororo_train_caption_index(frame: int, n_frames: int, n_captions: int) -> int:
    """gill PororoStoryDataset / ImageDataset: caption picked for video frame ``frame``."""
    cap_idx = int(np.ceil((frame + 1) / n_frames * n_captions))
    return min(cap_idx, n_captions - 1)


# --------------------------------------------------------------------------------------------
# case: flintstones_mini
# --------------------------------------------------------------------------------------------

FLINT_CHARS = ["fred", "wilma", "barney", "betty", "pebbles", "slate", "dino"]
FLINT_COLOURS = {  # flat RGB painted over each character's segment
    "fred": (255, 128, 0), "wilma": (255, 255, 255), "barney": (139, 69, 19), "betty": (0, 0, 255),
    "pebbles": (255, 0, 0), "slate": (128, 128, 128), "dino": (160, 32, 240),
}
N_BG = 323

E1 = "s_01_e_02_shot_{}"  # train, 5 consecutive shots -> 2 train stories (sliding window)
E2 = "s_03_e_11_shot_{}"  # train, 3 shots -> no story (too short)
E3 = "s_05_e_20_shot_{}"  # test story: 2 test ids + 2 val ids

# (id, caption, [(entityLabel as stored, word, start, end, seg id, bbox128)], n_frames, setting index)
FLINT_CLIPS = [
    (E1.format("010500_010580"), "Fred and Wilma are talking in the kitchen.",
     [("fred", "fred", 0, 1, 1, [8, 16, 56, 120]), ("wilma", "wilma", 2, 3, 2, [68, 12, 120, 124])], 3, 17),
    (E1.format("010581_010660"), "Wilma is cooking dinner at the stove.",
     [("wilma", "wilma", 0, 1, 4, [40, 20, 96, 124])], 2, 17),
    (E1.format("010661_010744"), "Wilma is smiling while holding a plate.",
     [("wilma ", "wilma", 0, 1, 1, [32, 8, 100, 120])], 2, 17),
    (E1.format("010745_010830"), "Fred, Wilma and Barney are standing in the living room.",
     [("fred", "fred", 0, 1, 1, [4, 20, 40, 120]), ("wilma", "wilma", 1, 2, 2, [44, 16, 84, 124]),
      ("barney", "barney", 3, 4, 7, [88, 24, 124, 120])], 2, 42),
    (E1.format("010831_010900"), "Fred, Wilma and Barney are laughing together.",
     [("fred", "fred", 0, 1, 3, [4, 24, 40, 124]), ("wilma", "wilma", 1, 2, 300, [44, 20, 84, 120]),
      ("barney", "barney", 3, 4, 1, [88, 16, 124, 124])], 2, 42),
    (E2.format("002000_002077"), "Mr Slate is yelling in his office.",
     [("slate", "mr slate", 0, 2, 5, [24, 8, 104, 124])], 3, 101),
    (E2.format("002078_002150"), "Fred is walking.",
     [("fred", "fred", 0, 1, 1, [48, 16, 88, 124])], 2, 230),
    (E2.format("002151_002230"), "Pebbles is playing with Dino in the yard.",
     [("pebbles", "pebbles", 0, 1, 2, [8, 64, 48, 124]), ("dino", "dino", 4, 5, 9, [60, 8, 124, 124])], 2, 230),
    (E3.format("033300_033371"), "Barney and Betty are sitting on the couch.",
     [("barney", "barney", 0, 1, 1, [8, 24, 60, 124]), ("betty", "betty", 2, 3, 2, [68, 20, 120, 124])], 2, 42),
    (E3.format("033372_033450"), "Betty and Barney are watching television.",
     [("barney", "barney", 2, 3, 6, [72, 24, 124, 124]), ("betty", "betty", 0, 1, 5, [4, 16, 60, 120])], 2, 42),
    (E3.format("033451_033520"), "The living room is empty.", [], 2, 42),
    (E3.format("033521_033600"), "Dino is running through the yard.",
     [("dino", "dino", 0, 1, 3, [20, 40, 108, 124])], 2, 230),
]
FLINT_INT64_SEG = {E1.format("010831_010900")}  # seg maps stored as int64 (one value is 300 > 255)
FLINT_LABEL_AS_LIST = E2.format("002078_002150")  # labels.pkl value is a plain list of int
FLINT_LABEL_AS_INT64 = E3.format("033521_033600")  # labels.pkl value is an np.int64 array
FLINT_SPLIT = {
    # deliberately not sorted: readers must not assume an order
    "train": [E1.format("010745_010830"), E1.format("010500_010580"), E2.format("002151_002230"),
              E1.format("010581_010660"), E2.format("002000_002077"), E1.format("010831_010900"),
              E1.format("010661_010744"), E2.format("002078_002150")],
    "val": [E3.format("033451_033520"), E3.format("033521_033600")],
    "test": [E3.format("033300_033371"), E3.format("033372_033450")],
}
FLINT_EXTRA_ANNOTATION = E2.format("002231_002300")  # in v1-0 annotations only (not in split)


def _flint_following() -> dict[str, list[str]]:
    ids = [c[0] for c in FLINT_CLIPS]
    e1, e2, e3 = ids[0:5], ids[5:8], ids[8:12]
    fol: dict[str, list[str]] = {}
    for ep in (e1, e3):
        for i, cid in enumerate(ep):
            fol[cid] = ep[i + 1:i + 4]
    fol[e2[0]] = e2[1:3]
    fol[e2[1]] = e2[2:3]
    # e2[2] is deliberately absent from following_cache3
    return fol


def _flint_stories(fol: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: [k] + v for k, v in sorted(fol.items()) if len(v) == 3}


# Expected eval-mode output, written by hand and asserted against the port above.
FLINT_EXPECTED_EVAL = {
    E1.format("010500_010580"): ["Fred and Wilma are talking in the kitchen.",
                                 "Wilma is cooking dinner at the stove.",
                                 "She is smiling while holding a plate.",
                                 "Fred, Wilma and Barney are standing in the living room."],
    E1.format("010581_010660"): ["Wilma is cooking dinner at the stove.",
                                 "She is smiling while holding a plate.",
                                 "Fred, Wilma and Barney are standing in the living room.",
                                 "They are laughing together."],
    E3.format("033300_033371"): ["Barney and Betty are sitting on the couch.",
                                 "They are watching television.",
                                 "The living room is empty.",
                                 "Dino is running through the yard."],
}

FLINT_README = """\
# flintstones_mini

Generated by `scripts/reference/data_fixtures.py` (case `flintstones_mini`); do not edit by hand.
A 12-clip FlintstonesSV in the layout StoryGPT-V reads from `data/flintstones/`:

- `split.json` — `{"train": 8 ids, "val": 2, "test": 2}`; the lists are deliberately **not sorted**.
- `cleaned_annotations.json` — id -> `{"caption", "tokens" (= caption.split(' ')), "segments"}`; each
  segment `{"id", "word", "start", "end", "bbox"}`: `start..end` (end exclusive) index `tokens`, `id` is
  the value of that character in the seg maps, `bbox` = `[x1, y1, x2, y2]` in 128-px coordinates
  (StoryGPT-V crops `image[:, y1:y2, x1:x2]` after scaling by resolution/128).
- `flintstones_annotations_v1-0.json` — JSON **list** of `{"globalID", "characters": [{"entityLabel",
  "labelNPC", "entitySpan"}], "description", "setting", "objects": []}`; the co-reference rule uses the
  stripped `entityLabel`s in this order.
- `following_cache3.pkl` (protocol 4) — id -> next ids; only entries with exactly 3 followers are stories.
- `labels.pkl` (protocol 4) — id -> multi-hot over fred, wilma, barney, betty, pebbles, slate, dino.
- `labels_bg.pkl` (protocol 2) — `{'label': {id: float32 one-hot (323,)}}` (the clip's setting index).
- `video_frames_sampled_4x/<id>.npy` — uint8 `[n_frames, 32, 32, 3]` (n_frames 2 or 3; real data is
  512x512): SHAKE-256 noise with each character's segment painted a flat colour per character
  (fred 255,128,0; wilma 255,255,255; barney 139,69,19; betty 0,0,255; pebbles 255,0,0;
  slate 128,128,128; dino 160,32,240).
- `seg_mask_4x_comb/<id>-frame<k>.npy` — `[32, 32]` segment-id map of frame k (0 = background): each
  segment is the rectangle `bbox * 32 // 128` with its left edge moved right by k pixels, so every
  frame's mask differs; the painted pixels of frame k are exactly the mask's non-zero pixels.
- `expected_referential.json` — per story (start id): ids, captions, characters, and the captions +
  ref flags StoryGPT-V's co-reference rule produces: `eval` = `EvalStoryDataset.prepare_data_batch`,
  `train` = gill `StoryDataset.__getitem__` (identical except that a repeated single character is
  always "He" there: it tests `imidiate_char in female` on a list).

Stories (following_cache3 entries with 3 followers): `s_01_e_02_shot_010500_010580` and
`s_01_e_02_shot_010581_010660` (train, overlapping sliding windows) and `s_05_e_20_shot_033300_033371`
(test; its followers are 1 test id and 2 val ids).

Deliberate variations (readers must cope with all of them):
- seg-map dtype: **int64** for `s_01_e_02_shot_010831_010900` (whose segment id 300 does not fit in
  u8), **uint8** for every other clip; segment ids are small, non-consecutive per clip (1, 2, 4, 5, 7, ...).
- `labels.pkl` values: np.float64 arrays, except `s_03_e_11_shot_002078_002150` = a plain Python
  `list` of int and `s_05_e_20_shot_033521_033600` = an np.int64 array.
- `following_cache3.pkl`: entries with 0, 1 and 2 followers (not stories) and one id
  (`s_03_e_11_shot_002151_002230`) that has no entry at all.
- `flintstones_annotations_v1-0.json`: one entityLabel with a trailing space (`"wilma "`, StoryGPT-V
  strips it), characters not in caption order (`s_05_e_20_shot_033372_033450`: barney, betty for
  "Betty and Barney ..."), and one extra globalID that is in no split.
- captions: a frame with no character (no segments, all-zero seg maps), "Mr Slate" (entityLabel
  `slate`, segment word `mr slate` spanning tokens 0..2), 1-, 2- and 3-character frames, a token with a
  trailing comma ("Fred,"), and segments listed out of token order (`..._033372_033450`).
- `n_frames` is 3 for `s_01_e_02_shot_010500_010580` and `s_03_e_11_shot_002000_002077`, 2 for the others.

Quirks of the reference rule worth knowing (not exercised by the stories): two consecutive frames
with no character raise IndexError in StoryGPT-V, and a repeated "Mr Slate" frame would become
"Mr He" (entityLabel `slate` capitalised).
"""


def gen_flintstones_mini(out: Path) -> None:
    ids = [c[0] for c in FLINT_CLIPS]
    assert len(ids) == 12 and sorted(ids) == sorted(sum(FLINT_SPLIT.values(), []))
    _write_json(out / "split.json", FLINT_SPLIT)

    cleaned, v1, labels, labels_bg = {}, [], {}, {}
    for cid, caption, segs, n_frames, setting in FLINT_CLIPS:
        tokens = caption.split(" ")
        segments = []
        for label, word, start, end, seg_id, bbox in segs:
            assert word.split(" ")[-1] == tokens[end - 1].strip(",.").lower(), (cid, word)
            segments.append({"id": seg_id, "word": word, "start": start, "end": end, "bbox": bbox})
        cleaned[cid] = {"caption": caption, "tokens": tokens, "segments": segments}

        chars = []
        for label, word, start, end, _, _ in sorted(segs, key=lambda s: FLINT_CHARS.index(s[0].strip())):
            off = len(" ".join(tokens[:start])) + (1 if start else 0)
            span_text = " ".join(tokens[start:end]).rstrip(",")
            chars.append({"entityLabel": label, "labelNPC": span_text, "entitySpan": [off, off + len(span_text)]})
        v1.append({"globalID": cid, "characters": chars, "description": caption,
                   "setting": f"setting {setting}", "objects": []})

        hot = [0] * len(FLINT_CHARS)
        for s in segs:
            hot[FLINT_CHARS.index(s[0].strip())] = 1
        if cid == FLINT_LABEL_AS_LIST:
            labels[cid] = hot
        elif cid == FLINT_LABEL_AS_INT64:
            labels[cid] = np.array(hot, dtype=np.int64)
        else:
            labels[cid] = np.array(hot, dtype=np.float64)
        bg = np.zeros(N_BG, dtype=np.float32)
        bg[setting] = 1.0
        labels_bg[cid] = bg

        # frames and seg maps
        video = _noise(f"flintstones_mini/{cid}", (n_frames, 32, 32, 3))
        seg_dtype = np.int64 if cid in FLINT_INT64_SEG else np.uint8
        for k in range(n_frames):
            seg = np.zeros((32, 32), dtype=np.int64)
            for label, _, _, _, seg_id, (x1, y1, x2, y2) in segs:
                c1, r1, c2, r2 = (v * 32 // 128 for v in (x1, y1, x2, y2))
                c1 = min(c1 + k, c2 - 1)
                assert seg[r1:r2, c1:c2].max() == 0, (cid, "overlapping segments")
                seg[r1:r2, c1:c2] = seg_id
                video[k, r1:r2, c1:c2] = FLINT_COLOURS[label.strip()]
            assert seg_dtype == np.int64 or seg.max() <= 255
            _save_npy(out / "seg_mask_4x_comb" / f"{cid}-frame{k}.npy", seg.astype(seg_dtype))
        _save_npy(out / "video_frames_sampled_4x" / f"{cid}.npy", video)

    v1.append({"globalID": FLINT_EXTRA_ANNOTATION, "characters": [{"entityLabel": "barney", "labelNPC": "Barney",
               "entitySpan": [0, 6]}], "description": "Barney is driving his car.", "setting": "setting 7",
               "objects": []})
    _write_json(out / "cleaned_annotations.json", cleaned)
    _write_json(out / "flintstones_annotations_v1-0.json", v1)

    fol = _flint_following()
    _write_pickle(out / "following_cache3.pkl", fol, 4)
    _write_pickle(out / "labels.pkl", labels, 4)
    _write_pickle(out / "labels_bg.pkl", {"label": labels_bg}, 2)

    # expected co-reference output per story
    characters = {e["globalID"]: [c["entityLabel"].strip() for c in e["characters"]] for e in v1}
    stories = _flint_stories(fol)
    assert len([s for s in stories if s in FLINT_SPLIT["train"]]) == 2
    assert len([s for s in stories if s in FLINT_SPLIT["test"]]) == 1
    expected = {}
    for start, sids in stories.items():
        for sid in sids:
            season, episode = int(sid.split("_")[1]), int(sid.split("_")[3])
            assert (season, episode) == (int(start.split("_")[1]), int(start.split("_")[3]))
        caps = [cleaned[s]["caption"] for s in sids]
        chars = [characters[s] for s in sids]
        ev, ev_flags = flintstones_coref(caps, chars, "eval")
        tr, tr_flags = flintstones_coref(caps, chars, "train")
        assert ev == FLINT_EXPECTED_EVAL[start], (start, ev)
        split = next(k for k, v in FLINT_SPLIT.items() if start in v)
        expected[start] = {"split": split, "ids": sids, "captions": caps, "characters": chars,
                           "eval": {"captions": ev, "ref_flags": ev_flags},
                           "train": {"captions": tr, "ref_flags": tr_flags}}
    _write_json(out / "expected_referential.json", expected)
    (out / "README.md").write_text(FLINT_README)


# --------------------------------------------------------------------------------------------
# case: pororo_mini
# --------------------------------------------------------------------------------------------

PORORO_CHARS = ["Pororo", "Loopy", "Crong", "Eddy", "Poby", "Petty", "Tongtong", "Rody", "Harry"]
P1 = "Pororo_ENGLISH1_1_ep1_{:02d}"
P2 = "Pororo_ENGLISH2_3_ep7_{:02d}"
PORORO_CLIPS = {
    P1.format(0): ["Pororo and Crong are playing in the snow.",
                   "Pororo and Crong are building a snowman.",
                   "Crong is laughing. Pororo is rolling a big snowball."],
    P1.format(1): ["Pororo and Crong are throwing snowballs at each other.",
                   "Pororo and Crong are running around the snowman."],
    P1.format(2): ["Loopy is baking cookies in her house."],
    P1.format(3): ["Loopy is giving cookies to her friends.",
                   "Loopy smiles and says the cookies are ready."],
    P2.format(4): ["Eddy is fixing his machine in the workshop.",
                   "Eddy is holding a hammer."],
    P2.format(5): ["Eddy is testing his new invention.",
                   "Eddy is pressing a red button on the machine.",
                   "Eddy looks happy."],
    P2.format(6): ["Poby and Pororo are walking to the workshop."],
    P2.format(7): ["Poby and Pororo are knocking on the door.",
                   "Poby waves at Eddy."],
}
PORORO_SPLIT = {
    "train": [P1.format(i) for i in range(4)] + [P2.format(5), P2.format(6)],
    "val": [P2.format(7)],
    "test": [P2.format(4)],
}
PORORO_N_FRAMES = 2

PORORO_EXPECTED_EVAL_FIRST = {
    P1.format(0): ["Pororo and Crong are playing in the snow.",
                   "They are throwing snowballs at each other.",
                   "Loopy is baking cookies in her house.",
                   "She is giving cookies to her friends."],
    P2.format(4): ["Eddy is fixing his machine in the workshop.",
                   "He is testing his new invention.",
                   "Poby and Pororo are walking to the workshop.",
                   "Poby and He are knocking on the door."],
}

PORORO_README = """\
# pororo_mini

Generated by `scripts/reference/data_fixtures.py` (case `pororo_mini`); do not edit by hand.
An 8-clip PororoSV in the layout StoryGPT-V reads from `data/pororo/` (no seg masks, no labels_bg.pkl):

- `split.json` — train 6 / val 1 / test 1.
- `cleaned_annotations.json` — id -> `{"captions": [1 to 3 str]}`.
- `following_cache3.pkl` (protocol 4) — two stories only: `Pororo_ENGLISH1_1_ep1_00` (train; all four
  ids in train) and `Pororo_ENGLISH2_3_ep7_04` (the only test id; its followers are 2 train ids and the
  val id). No short entries: StoryGPT-V's Pororo readers do not filter by length.
- `labels.pkl` (protocol 4) — id -> float64 0/1 `(9,)` over Pororo, Loopy, Crong, Eddy, Poby, Petty,
  Tongtong, Rody, Harry (characters named in any caption of the clip).
- `video_frames_sampled_4x/<id>.npy` — uint8 `[2, 32, 32, 3]` SHAKE-256 noise.
- `expected_referential.json` — per story and per caption selection: the captions + ref flags of
  StoryGPT-V's Pororo co-reference rule, `eval` = `EvalPororoStoryDataset.prepare_data_batch`
  (`replace(prefix, 'They')`), `train` = gill `PororoStoryDataset.__getitem__`
  (`replace(prefix, 'They', 1)`). Selections: `first` = caption 0 of every clip; `train_frame0` /
  `train_frame1` = the caption gill picks for video frame 0 / 1, `min(ceil((f+1)/n_frames*len), len-1)`,
  which with 2 frames is the last caption for both frames (caption 0 of a multi-caption clip is never
  used in training).

The captions are made to exercise the rule: a shared leading "Pororo and Crong" prefix (-> "They"),
a repeated female character (Loopy -> "She"), a repeated male (Eddy -> "He"), a two-sentence caption
whose main character is taken from the last sentence, and the rule's quirks: `pre_caption` is only
updated when a He/She replacement happens, so the second "Poby and Pororo ..." caption is not
prefix-matched and instead becomes "Poby and He ..." (main character = first of the fixed
character list present, not the first in the text).
"""


def gen_pororo_mini(out: Path) -> None:
    ids = sorted(PORORO_CLIPS)
    assert sorted(sum(PORORO_SPLIT.values(), [])) == ids
    _write_json(out / "split.json", PORORO_SPLIT)
    _write_json(out / "cleaned_annotations.json", {k: {"captions": v} for k, v in PORORO_CLIPS.items()})
    fol = {P1.format(0): [P1.format(i) for i in (1, 2, 3)], P2.format(4): [P2.format(i) for i in (5, 6, 7)]}
    _write_pickle(out / "following_cache3.pkl", fol, 4)
    labels = {}
    for cid, caps in PORORO_CLIPS.items():
        text = " ".join(caps)
        labels[cid] = np.array([1.0 if c in text else 0.0 for c in PORORO_CHARS], dtype=np.float64)
        _save_npy(out / "video_frames_sampled_4x" / f"{cid}.npy",
                  _noise(f"pororo_mini/{cid}", (PORORO_N_FRAMES, 32, 32, 3)))
    _write_pickle(out / "labels.pkl", labels, 4)

    expected = {}
    for start, rest in sorted(fol.items()):
        sids = [start] + rest
        sels = {"first": [0] * 4}
        for f in range(PORORO_N_FRAMES):
            sels[f"train_frame{f}"] = [pororo_train_caption_index(f, PORORO_N_FRAMES, len(PORORO_CLIPS[s]))
                                       for s in sids]
        entry = {"split": next(k for k, v in PORORO_SPLIT.items() if start in v), "ids": sids, "selections": {}}
        for name, sel in sels.items():
            caps = [PORORO_CLIPS[s][i] for s, i in zip(sids, sel)]
            ev, ev_flags = pororo_coref(caps, "eval")
            tr, tr_flags = pororo_coref(caps, "train")
            if name == "first":
                assert ev == PORORO_EXPECTED_EVAL_FIRST[start], (start, ev)
            entry["selections"][name] = {"caption_indices": sel, "captions": caps,
                                         "eval": {"captions": ev, "ref_flags": ev_flags},
                                         "train": {"captions": tr, "ref_flags": tr_flags}}
        expected[start] = entry
    _write_json(out / "expected_referential.json", expected)
    (out / "README.md").write_text(PORORO_README)


# --------------------------------------------------------------------------------------------
# case: pickle_golden
# --------------------------------------------------------------------------------------------


def _golden_object() -> dict:
    inner = [1, 2]
    return {
        "none": None,
        "true": True,
        "false": False,
        "small_int": 42,
        "int_300": 300,
        "int_70000": 70000,
        "neg_int": -3,
        "int_2_40": 2**40,
        "big_neg_int": -(2**70),
        "float": 1.5,
        "neg_float": -0.25,
        "float_tenth": 0.1,
        "unicode": "Fréd ☃",
        "empty_str": "",
        "long_str": "x" * 300,
        "bytes": b"\x00\x01\xff",
        "list": [1, "two", 3.0, None],
        "empty_list": [],
        "nested_tuple": (1, (2, 3), (), ("x",), (4, 5, 6, 7)),
        "nested_dict": {"a": {"b": [1, 2]}, "c": None, "empty": {}},
        "shared": [inner, inner],
        "arr_bool": np.array([True, False, True]),
        "arr_u8": np.array([[0, 1, 255], [128, 7, 9]], dtype=np.uint8),
        "arr_u8_empty": np.zeros((0,), dtype=np.uint8),
        "arr_i32": np.array([-2147483648, 0, 2147483647], dtype=np.int32),
        "arr_i64": np.array([[-(2**40) - 1, 0, 1], [2, -3, 2**40 + 1]], dtype=np.int64),
        "arr_f32": np.array([0.5, -1.25, 3.0], dtype=np.float32),
        "arr_f32_empty": np.zeros((0,), dtype=np.float32),
        "arr_f64": np.array([[0.1, -2.5, 1e300], [0.0, -0.0, 7.0]], dtype=np.float64),
        "arr_f64_fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3) * 1.5),
        "arr_f64_0d": np.array(2.0),
        "arr_str": np.array(["ab", "cde"]),
        "np_f64": np.float64(2.5),
        "np_i64": np.int64(7),
    }


def _to_expected(v):
    if isinstance(v, np.ndarray):
        return {"ndarray": {"dtype": v.dtype.str, "shape": list(v.shape), "data": v.ravel(order="C").tolist()}}
    if isinstance(v, np.generic):
        return {"scalar": {"dtype": v.dtype.str, "value": v.item()}}
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        assert math.isfinite(v)
        return v
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list):
        return {"list": [_to_expected(x) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [_to_expected(x) for x in v]}
    if isinstance(v, dict):
        assert all(isinstance(k, str) for k in v)
        return {k: _to_expected(x) for k, x in v.items()}
    raise TypeError(type(v))


_NUMPY1_MODULES = {"numpy._core.multiarray": "numpy.core.multiarray", "numpy._core.numeric": "numpy.core.numeric"}


class _Numpy1Pickler(pickle._Pickler):  # the pure-Python pickler, so save_global can be overridden
    """Writes numpy globals under their numpy-1.x module names (as pickles made with numpy 1.x
    spell them: `numpy.core.multiarray._reconstruct`, ...) instead of numpy 2's `numpy._core`."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        if module not in _NUMPY1_MODULES:
            return super().save_global(obj, name)
        name = name or obj.__qualname__
        old = _NUMPY1_MODULES[module]
        if self.proto >= 4:
            self.save(old)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + bytes(old, "ascii") + b"\n" + bytes(name, "ascii") + b"\n")
        self.memoize(obj)


def _dumps_numpy1(obj, protocol: int) -> bytes:
    buf = io.BytesIO()
    _Numpy1Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _globals_of(data: bytes) -> list[str]:
    """GLOBAL / STACK_GLOBAL names of a pickle, without executing it (pickletools.genops; memoised
    module / name strings fetched back with *GET are followed)."""
    found, pushed, memo = [], [], {}
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
            pushed.append(None)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == "STACK_GLOBAL":
            assert all(isinstance(x, str) for x in pushed[-2:]), "STACK_GLOBAL with non-literal names"
            found.append(".".join(pushed[-2:]))
            pushed.append(None)
        elif op.name not in ("PROTO", "FRAME", "STOP"):
            pushed.append(None)
    return sorted(set(found))


def _assert_equal(a, b, path="obj"):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b) and a.tobytes() == b.tobytes(), path
        return
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path


PICKLE_README = """\
# pickle_golden

Generated by `scripts/reference/data_fixtures.py` (case `pickle_golden`); do not edit by hand.
Goldens for a data-only pickle reader (one that never imports or calls anything it does not know).
Written with Python 3.11 and numpy 2.x (`numpy._core...` module names) unless noted.

- `obj_p0.pkl` ... `obj_p5.pkl` — the same dict pickled with `pickle.dumps(obj, protocol=N)`, N = 0..5.
  Protocols 0-2 spell `bytes` (and the raw data of every numpy array/scalar) as
  `_codecs.encode(<latin-1 str>, 'latin1')`, and an *empty* bytes (the raw data of the 0-size
  arrays) as `__builtin__.bytes()` (REDUCE with an empty tuple); protocol 0 is the text form (`V...` raw-unicode-escape
  strings, `I`/`L` decimal ints, `F` repr floats). numpy arrays are
  `numpy._core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` + BUILD `(1, shape, dtype,
  is_fortran, raw bytes)` for protocols 0-4, and `numpy._core.numeric._frombuffer(buffer, dtype,
  shape, order)` with an in-band `BYTEARRAY8` buffer for protocol 5; dtypes are `numpy.dtype('f8',
  False, True)` + BUILD state; numpy scalars are `numpy._core.multiarray.scalar(dtype, raw bytes)`.
  `arr_f64_fortran` is Fortran-ordered: its raw bytes (and the protocol-5 buffer, order 'F') are in
  column-major order. `shared` holds the same list object twice (second one is a memo GET).
- `obj_p2_numpy1.pkl`, `obj_p4_numpy1.pkl` — the same object with the numpy-1.x module names that
  pickles written by numpy < 2 use (`numpy.core.multiarray._reconstruct`,
  `numpy.core.multiarray.scalar`), as the real FlintstonesSV / PororoSV `labels.pkl` files
  presumably do; written by Python's pure-Python pickler with `save_global` overridden for those two
  modules (protocol 4 framing may differ slightly from the C pickler's).
- `expected.json` — the object in this JSON convention: dict -> object; list / tuple ->
  `{"list": [...]}` / `{"tuple": [...]}`; None -> null; bool -> bool; int -> `{"int": "<decimal>"}`;
  float -> number; str -> string; bytes -> `{"bytes": "<hex>"}`; numpy array -> `{"ndarray": {"dtype":
  dtype.str (e.g. "<f4", "|b1", "<U3"), "shape": [...], "data": [C-order flat values]}}`; numpy scalar
  -> `{"scalar": {"dtype": ..., "value": ...}}`.
- `globals.json` — for each pickle above, the sorted list of globals it references
  (module.name, read with `pickletools.genops`, nothing executed): the allow-list a reader needs.

Hostile / malformed inputs (a reader must return an error, never execute or panic):
- `bad_os_system.pkl` — hand-assembled protocol-2 pickle `GLOBAL 'os system'`, `BINUNICODE 'echo
  pwned'`, `TUPLE1`, `REDUCE`, `STOP`: unpickling it with Python would run `os.system("echo pwned")`.
  It is never loaded by the generator (only disassembled with `pickletools`).
- `bad_truncated.pkl` — the first half of `obj_p4.pkl` (no STOP).
- `bad_object_array.pkl` — protocol 4, `np.array([1, "a"], dtype=object)`: dtype `|O`, whose BUILD
  state holds a Python list instead of raw bytes.
- `labels_list.pkl` — protocol 4, a labels file whose top level is a list of three float64 (7,)
  arrays instead of a dict.
- `labels_bg_no_label_key.pkl` — protocol 2, `{'labels': {id: float32 (323,) one-hot}}` (key
  `labels` instead of `label`).
"""


def gen_pickle_golden(out: Path) -> None:
    obj = _golden_object()
    assert obj["arr_f64_fortran"].flags.f_contiguous and not obj["arr_f64_fortran"].flags.c_contiguous
    assert obj["shared"][0] is obj["shared"][1]
    files: dict[str, bytes] = {}
    for proto in range(6):
        files[f"obj_p{proto}.pkl"] = pickle.dumps(obj, protocol=proto)
    for proto in (2, 4):
        files[f"obj_p{proto}_numpy1.pkl"] = _dumps_numpy1(obj, proto)
    for name, data in files.items():
        back = pickle.loads(data)  # our own, trusted bytes
        _assert_equal(obj, back)
        assert back["shared"][0] is back["shared"][1], name
        names = _globals_of(data)
        if name.endswith("_numpy1.pkl"):
            assert not any("numpy._core" in g for g in names) and "numpy.core.multiarray._reconstruct" in names
        (out / name).write_bytes(data)
    _write_json(out / "expected.json", _to_expected(obj))
    _write_json(out / "globals.json", {name: _globals_of(data) for name, data in sorted(files.items())})

    # hostile / malformed
    payload = "echo pwned".encode()
    evil = (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n"
            + pickle.BINUNICODE + struct.pack("<I", len(payload)) + payload
            + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    pickletools.dis(evil, io.StringIO())  # well-formed; never unpickled
    assert _globals_of(evil) == ["os.system"]
    (out / "bad_os_system.pkl").write_bytes(evil)

    p4 = files["obj_p4.pkl"]
    (out / "bad_truncated.pkl").write_bytes(p4[: len(p4) // 2])
    _write_pickle(out / "bad_object_array.pkl", np.array([1, "a"], dtype=object), 4)
    _write_pickle(out / "labels_list.pkl",
                  [np.array(v, dtype=np.float64) for v in ([1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0],
                                                           [0, 0, 0, 0, 0, 0, 0])], 4)
    bg = {}
    for i, cid in enumerate(["s_01_e_02_shot_010500_010580", "s_01_e_02_shot_010581_010660"]):
        v = np.zeros(N_BG, dtype=np.float32)
        v[17 + i] = 1.0
        bg[cid] = v
    _write_pickle(out / "labels_bg_no_label_key.pkl", {"labels": bg}, 2)
    (out / "README.md").write_text(PICKLE_README)


# --------------------------------------------------------------------------------------------


def register(case) -> None:
    """Registers this module's cases with generate.py's ``@case`` decorator."""
    case("flintstones_mini")(gen_flintstones_mini)
    case("pororo_mini")(gen_pororo_mini)
    case("pickle_golden")(gen_pickle_golden)
