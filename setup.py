"""pip install of the ROS-free library and the `lerf-ros` command.

The ROS interfaces (msg/srv) are built by colcon (see scripts/setup.sh); everything under
lerf_ros/ except lerf_ros/ros works without them.
"""

from setuptools import find_packages, setup

setup(
    name="lerf_ros",
    version="0.1.0",
    description="Language Embedded Radiance Fields trained online for ROS 2 robots",
    packages=find_packages(include=["lerf_ros", "lerf_ros.*"]),
    python_requires=">=3.10",
    install_requires=["numpy", "pyyaml", "pillow", "torch", "open_clip_torch", "timm", "open3d", "rosbags", "mujoco"],
    extras_require={"test": ["pytest", "pytest-timeout", "ruff"]},
    entry_points={"console_scripts": ["lerf-ros=lerf_ros.cli:main"]},
    license="Apache-2.0",
)
