"""The params-file writer of the nodes (``lerf_ros.ros.params.params_file_text``)."""

import pathlib

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")

from lerf_ros.ros.params import params_file_text  # noqa: E402


def test_params_file_takes_paths_nested_maps_and_numpy_scalars():
    text = params_file_text(
        {
            "/**": {"output_dir": pathlib.Path("out") / "run", "trainer": {"max_steps": np.int64(800)}},
            "lerf_query": {"snapshot_min_interval_s": np.float64(2.5), "autostart": np.bool_(False)},
        }
    )
    parsed = yaml.safe_load(text)
    assert parsed == {
        "/**": {"ros__parameters": {"output_dir": "out/run", "trainer": {"max_steps": 800}}},
        "lerf_query": {"ros__parameters": {"snapshot_min_interval_s": 2.5, "autostart": False}},
    }
    assert type(parsed["/**"]["ros__parameters"]["trainer"]["max_steps"]) is int
