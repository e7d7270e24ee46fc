"""The ground-truth teacher: crop mixtures from instance maps, text lookups, instance features."""

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic import VOCABULARY, make_scene
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.ground_truth import GroundTruthTeacher


@dataclass
class Obj:
    instance_id: int
    class_name: str
    name: str = ""


def _frame(inst: np.ndarray) -> Frame:
    h, w = inst.shape
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return Frame(rgb=np.zeros((h, w, 3), np.uint8), K=K, c2w=np.eye(4), instance=inst.astype(np.int32), index=7)


@pytest.fixture(scope="module")
def teacher():
    # two mugs (ids 1, 2) and a banana (id 3)
    return GroundTruthTeacher([Obj(1, "mug"), Obj(2, "mug"), Obj(3, "banana")], VOCABULARY, seed=0)


def _emb(teacher, name):
    return teacher.class_embeddings[teacher.class_names.index(name)]


def test_interface_and_description(teacher):
    assert isinstance(teacher, Teacher)
    assert teacher.clip_dim == 512 and teacher.dino_dim == 64
    assert "ground-truth" in teacher.description and "not CLIP" in teacher.description
    E = teacher.class_embeddings
    assert E.shape == (len(VOCABULARY) + 1, 512)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-6)
    off = E @ E.T - np.eye(len(E))
    assert np.abs(off).max() < 0.25  # distinct classes are nearly orthogonal


def test_crop_inside_one_object_is_its_class_embedding(teacher):
    inst = np.zeros((30, 40), np.int32)
    inst[5:25, 5:20] = 1
    inst[5:25, 22:38] = 3
    out = teacher.encode_crops(_frame(inst), np.array([[6, 6, 16, 16], [25, 8, 35, 18], [0, 0, 4, 4]]))
    assert out.dtype == torch.float32 and out.shape == (3, 512)
    np.testing.assert_allclose(out[0].numpy(), _emb(teacher, "mug"), atol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), _emb(teacher, "banana"), atol=1e-6)
    np.testing.assert_allclose(out[2].numpy(), _emb(teacher, "background"), atol=1e-6)


def test_mixed_crops_are_area_weighted_and_normalised(teacher):
    inst = np.zeros((20, 40), np.int32)
    inst[:, :20] = 1  # mug left, banana right
    inst[:, 20:] = 3
    f = _frame(inst)
    out = teacher.encode_crops(f, np.array([[10, 0, 30, 20], [14, 0, 34, 20], [30, 0, 50, 20]])).numpy()
    m, b = _emb(teacher, "mug").astype(np.float64), _emb(teacher, "banana").astype(np.float64)

    def unit(x):
        return x / np.linalg.norm(x)

    np.testing.assert_allclose(out[0], unit(0.5 * m + 0.5 * b), atol=1e-6)
    np.testing.assert_allclose(out[1], unit(0.3 * m + 0.7 * b), atol=1e-6)
    # a crop reaching outside the image: only its in-image part (all banana) counts
    np.testing.assert_allclose(out[2], b, atol=1e-6)
    fr = teacher.class_fractions(f, np.array([[14, 0, 34, 20]]))
    assert fr[0, teacher.class_names.index("mug")] == pytest.approx(0.3)
    assert fr.sum() == pytest.approx(1.0)


def test_matches_a_per_crop_reference_on_a_random_map(teacher):
    rng = np.random.default_rng(0)
    inst = rng.integers(0, 4, size=(48, 64)).astype(np.int32)
    f = _frame(inst)
    x0, y0 = rng.integers(-10, 60, 300), rng.integers(-10, 44, 300)
    s = rng.integers(1, 30, 300)
    boxes = np.stack([x0, y0, x0 + s, y0 + s], 1)
    inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < 64) & (boxes[:, 1] < 48)
    boxes = boxes[inside]
    got = teacher.encode_crops(f, boxes).numpy()
    cls = teacher.instance_to_class[inst]
    for i in range(0, len(boxes), 7):  # reference: explicit histogram of the crop's pixels
        a, b, c, d = boxes[i]
        crop = cls[max(b, 0) : d, max(a, 0) : c].ravel()
        w = np.bincount(crop, minlength=len(teacher.class_names)) / crop.size
        ref = w @ teacher.class_embeddings.astype(np.float64)
        np.testing.assert_allclose(got[i], ref / np.linalg.norm(ref), atol=1e-5)


def test_many_crops_are_cheap(teacher):
    import time

    inst = np.zeros((480, 640), np.int32)
    inst[100:300, 100:300] = 1
    inst[200:400, 350:600] = 3
    rng = np.random.default_rng(1)
    x0, y0 = rng.integers(0, 600, 5000), rng.integers(0, 440, 5000)
    boxes = np.stack([x0, y0, x0 + 40, y0 + 40], 1)
    t = time.perf_counter()
    out = teacher.encode_crops(_frame(inst), boxes)
    assert time.perf_counter() - t < 2.0
    assert out.shape == (5000, 512)


def test_text_synonyms_and_unknown_words(teacher):
    mug = _emb(teacher, "mug")
    out = teacher.encode_text(["mug", "Coffee  Mug", " the cup ", "A tea cup.", "mugs"]).numpy()
    for row in out:
        np.testing.assert_allclose(row, mug, atol=1e-7)
    # an absent class still has its own embedding (queries for it should find nothing)
    np.testing.assert_allclose(teacher.encode_text(["tennis ball"])[0].numpy(), _emb(teacher, "tennis ball"), atol=1e-7)
    # (the generic canonical phrases are tested separately: they lean towards every class)
    words = ["giraffe", "zebra crossing", "quantum", "red mug handle"]
    unk = teacher.encode_text(words).numpy()
    np.testing.assert_allclose(np.linalg.norm(unk, axis=1), 1.0, atol=1e-6)
    cos = unk @ teacher.class_embeddings.T
    assert np.abs(cos).max() < 0.2
    assert np.abs(unk @ unk.T - np.eye(len(words))).max() < 0.3  # unrelated to each other too
    again = GroundTruthTeacher([Obj(1, "mug")], VOCABULARY, seed=0).encode_text(["giraffe"]).numpy()
    np.testing.assert_array_equal(again[0], unk[0])
    other_seed = GroundTruthTeacher([Obj(1, "mug")], VOCABULARY, seed=1).encode_text(["giraffe", "mug"]).numpy()
    assert abs(float(other_seed[0] @ unk[0])) < 0.3 and abs(float(other_seed[1] @ mug)) < 0.3
    with pytest.raises(TypeError):
        teacher.encode_text("mug")


def test_unknown_text_vector_does_not_depend_on_python_hash_seed(teacher):
    code = (
        "import numpy as np; from lerf_ros.data.synthetic import VOCABULARY; "
        "from lerf_ros.teachers.ground_truth import GroundTruthTeacher as G; "
        "print(' '.join(f'{x:.7f}' for x in G([], VOCABULARY).encode_text(['giraffe'])[0, :4].tolist()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    here = teacher.encode_text(["giraffe"])[0, :4].numpy()
    np.testing.assert_allclose(np.array(out.split(), float), here, atol=2e-7)


def test_dense_features_separate_instances_of_one_class(teacher):
    inst = np.zeros((12, 16), np.int32)
    inst[:, 4:8] = 1
    inst[:, 8:12] = 2  # a second mug
    feats = teacher.dense_features(_frame(inst))
    assert feats.shape == (12, 16, 64) and feats.dtype == torch.float32
    a, b, bg = feats[0, 5], feats[0, 9], feats[0, 0]
    torch.testing.assert_close(feats[11, 6], a)
    assert torch.linalg.norm(a - b) > 0.5 and torch.linalg.norm(a - bg) > 0.5


def test_clear_errors(teacher):
    f = _frame(np.zeros((10, 10), np.int32))
    no_inst = Frame(rgb=f.rgb, K=f.K, c2w=f.c2w, index=3)
    with pytest.raises(ValueError, match="frame 3 has no instance map"):
        teacher.encode_crops(no_inst, np.array([[0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="no instance map"):
        teacher.dense_features(no_inst)
    with pytest.raises(ValueError, match="lies entirely outside"):
        teacher.encode_crops(f, np.array([[0, 0, 4, 4], [20, 20, 30, 30]]))
    with pytest.raises(ValueError, match="is empty"):
        teacher.encode_crops(f, np.array([[5, 5, 5, 9]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        teacher.encode_crops(f, np.array([1, 2, 3, 4]))
    bad = _frame(np.full((10, 10), 9, np.int32))
    with pytest.raises(ValueError, match="not all in the scene's object list"):
        teacher.encode_crops(bad, np.array([[0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        GroundTruthTeacher([Obj(1, "unicorn")], VOCABULARY)


def test_on_a_rendered_scene():
    scene = make_scene(seed=2, width=64, height=48, n_frames=3)
    teacher = GroundTruthTeacher(scene)
    frame = scene.frames[0]
    # find a 3x3 patch fully inside some object and check it embeds as that object's class
    inst = frame.instance
    for y in range(1, 47):
        xs = [x for x in range(1, 63) if inst[y, x] > 0 and (inst[y - 1 : y + 2, x - 1 : x + 2] == inst[y, x]).all()]
        if xs:
            x = xs[0]
            break
    else:
        pytest.fail("no object patch in view")
    obj = scene.objects[inst[y, x] - 1]
    e = teacher.encode_crops(frame, np.array([[x - 1, y - 1, x + 2, y + 2]]))[0]
    t = teacher.encode_text([obj.synonyms[0]])[0]
    assert float(e @ t) > 0.999
    absent = teacher.encode_text(scene.absent_classes())
    whole = teacher.encode_crops(frame, np.array([[0, 0, 64, 48]]))[0]
    assert float((absent @ whole).abs().max()) < 0.25


def test_frame_without_instance_map_gets_the_scene_ground_truth_at_its_pose():
    """A streamed frame (RGB + pose only) is labelled by rendering the scene at its pose."""
    import copy

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    sc = make_scene(seed=4, width=48, height=36, n_frames=3, nthreads=1)
    teacher = GroundTruthTeacher(sc)
    f = sc.frames[1]
    streamed = copy.copy(f)
    streamed.instance = None
    boxes = np.array([[0, 0, 16, 16], [10, 8, 40, 30]])
    np.testing.assert_allclose(
        teacher.encode_crops(streamed, boxes).numpy(), teacher.encode_crops(f, boxes).numpy(), atol=1e-5
    )
    np.testing.assert_array_equal(streamed.instance, f.instance)
    bare = GroundTruthTeacher(sc.objects, sc.vocabulary)
    streamed.instance = None
    with pytest.raises(ValueError, match="no instance map"):
        bare.encode_crops(streamed, boxes)


def test_canonical_phrases_are_generic_so_unrelated_text_scores_below_half():
    """'object', 'things', ... are equally similar to every class; relevancy of an object's region to
    its own name is near 1, to another class or an unknown word clearly below 0.5 (below the
    default threshold 0.55 with a margin)."""
    from lerf_ros.teachers.text import CANONICAL_PHRASES, relevancy

    sc = make_scene(seed=4, width=32, height=24, n_frames=2, nthreads=1)
    teacher = GroundTruthTeacher(sc)
    canon = teacher.encode_text(list(CANONICAL_PHRASES))
    sims = canon @ torch.from_numpy(teacher.class_embeddings).T  # (4, C)
    assert float(sims.min()) > 0.1 and float(sims.max() - sims.min()) < 0.1
    assert float((canon @ canon.T - torch.eye(4)).abs().max()) < 0.95  # distinct phrases
    mug = teacher.encode_text(["mug"])[0]
    phi = torch.from_numpy(teacher.class_embeddings)  # one "point" per class
    rel = relevancy(phi, mug, canon)
    mug_row = teacher.class_index("mug")
    assert float(rel[mug_row]) > 0.95
    others = torch.cat([rel[:mug_row], rel[mug_row + 1 :]])
    assert float(others.max()) < 0.4 and float(others.mean()) < 0.25
    unknown = teacher.encode_text(["zebra crossing"])[0]
    assert float(relevancy(phi, unknown, canon).max()) < 0.4
