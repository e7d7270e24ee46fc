"""The presets (``tiny``, ``lerf-lite``, ``lerf``, ``lerf-big``) as data: {name: {dotted key: value}}.

A preset is the default configuration with these values set; ``lerf_ros.config.preset`` builds and
validates it.
"""

from __future__ import annotations

from typing import Any, Dict

PRESETS: Dict[str, Dict[str, Any]] = {
    # The reference LERF (ViT-B/16 OpenCLIP).
    "lerf": {},
    # Smaller networks and fewer samples, and a cheaper crop pyramid.
    "lerf-lite": {
        # reference lerf-lite: one language grid of 16 levels, 16..512, 2^19; 12 language samples
        "model.lang_num_levels": (16,),
        "model.lang_log2_hashmap_size": (19,),
        "model.lang_base_resolution": (16,),
        "model.lang_max_resolution": (512,),
        "model.num_lang_samples": 12,
        # 4 scales from 10% to 50%: 513 crops per 640x480 keyframe instead of 1,250, within one query
        # of the reference pyramid's 3D localization (bench/pyramid_study.py)
        "teacher.pyramid_levels": 4,
        "teacher.pyramid_min": 0.1,
    },
    # ViT-L/14 OpenCLIP.
    "lerf-big": {
        "teacher.clip_model": "ViT-L-14",
        "teacher.clip_pretrained": "laion2b_s32b_b82k",
        # reference lerf-big: two language grids of 16 levels (16..128, 128..512), 2^20 each
        "model.lang_num_levels": (16, 16),
        "model.lang_log2_hashmap_size": (20, 20),
    },
    # Trains on 2 CPU cores in minutes (tests, demo, benchmark).
    "tiny": {
        "device": "cpu",
        "model.num_levels": 8,
        "model.features_per_level": 2,
        "model.log2_hashmap_size": 15,
        "model.base_resolution": 16,
        "model.max_resolution": 512,
        "model.hidden_dim": 32,
        "model.hidden_dim_color": 32,
        "model.sh_degree": 3,
        "model.num_proposal_samples": (48,),
        "model.num_nerf_samples": 24,
        "model.proposal_num_levels": 5,
        "model.proposal_log2_hashmap_size": 14,
        "model.proposal_max_resolution": (128,),
        "model.proposal_anneal_steps": 300,
        "model.lang_num_levels": (8,),
        "model.lang_log2_hashmap_size": (15,),
        "model.lang_base_resolution": (16,),
        "model.lang_max_resolution": (256,),
        "model.lang_features_per_level": 4,
        "model.lang_hidden_dim": 64,
        "model.lang_num_layers": 2,
        "model.dino_hidden_dim": 64,
        "model.num_lang_samples": 8,
        "trainer.rays_per_batch": 1024,
        "trainer.max_steps": 3000,
        "trainer.decay_steps": 3000,
        "trainer.lang_decay_steps": 3000,
        "trainer.checkpoint_every": 500,
        "teacher.pyramid_levels": 4,
        "teacher.pyramid_min": 0.1,
        "teacher.pyramid_max": 0.5,
        "keyframes.max_keyframes": 60,
        "query.surface_stride": 2,
        "query.surface_max_views": 20,
        "query.max_candidate_points": 20000,
    },
}
