"""RViz markers for grasp targets: an approach arrow and a parallel-jaw gripper outline per grasp.

Gripper frame convention (see lerf_ros.query.grasp): +z is the approach direction (from the gripper
towards the object), +y the closing axis; the pose's origin is the point between the fingertips.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from lerf_ros.ros.convert import matrix_to_pose

FINGER_DEPTH = 0.04  # m, finger length drawn along the approach axis
APPROACH_LENGTH = 0.10  # m, arrow length before the grasp point


def _point(p: np.ndarray) -> Point:
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def gripper_outline(width: float) -> np.ndarray:
    """(N, 3) line-list vertices of an open gripper in its own frame (pairs of points)."""
    h = width / 2.0
    d = FINGER_DEPTH
    palm_z = -d
    return np.array(
        [
            [0, -h, palm_z],
            [0, h, palm_z],  # palm
            [0, -h, palm_z],
            [0, -h, 0.0],  # left finger
            [0, h, palm_z],
            [0, h, 0.0],  # right finger
            [0, 0, palm_z],
            [0, 0, palm_z - d],  # wrist stub
        ],
        dtype=np.float64,
    )


def grasp_markers(
    poses: Sequence[np.ndarray],
    widths: Sequence[float],
    scores: Sequence[float],
    header: Header,
    namespace: str = "lerf_grasps",
) -> MarkerArray:
    """Markers for ranked grasps (best first): the best is green, the others fade to grey.

    A DELETEALL marker comes first so that a new answer replaces the previous one.
    """
    out = MarkerArray()
    out.markers.append(Marker(header=header, ns=namespace, action=Marker.DELETEALL))
    for i, (T, w, s) in enumerate(zip(poses, widths, scores)):
        T = np.asarray(T, dtype=np.float64)
        best = i == 0
        colour = ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0) if best else ColorRGBA(r=0.6, g=0.6, b=0.6, a=0.6)
        approach = T[:3, 2]
        tip = T[:3, 3]
        arrow = Marker(
            header=header,
            ns=namespace,
            id=2 * i,
            type=Marker.ARROW,
            action=Marker.ADD,
            color=colour,
            lifetime=Duration(),
        )
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.008, 0.016, 0.02
        arrow.points = [
            _point(tip - approach * (APPROACH_LENGTH + FINGER_DEPTH)),
            _point(tip - approach * FINGER_DEPTH),
        ]
        arrow.pose.orientation.w = 1.0
        out.markers.append(arrow)
        outline = Marker(
            header=header,
            ns=namespace,
            id=2 * i + 1,
            type=Marker.LINE_LIST,
            action=Marker.ADD,
            color=colour,
            lifetime=Duration(),
        )
        outline.pose = matrix_to_pose(T)
        outline.scale.x = 0.005 if best else 0.003
        outline.points = [_point(p) for p in gripper_outline(float(w))]
        out.markers.append(outline)
        label = Marker(
            header=header,
            ns=namespace + "_labels",
            id=i,
            type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            color=colour,
            text=f"#{i + 1} {float(s):.2f}",
        )
        label.pose.position = _point(tip - approach * (APPROACH_LENGTH + FINGER_DEPTH + 0.02))
        label.pose.orientation.w = 1.0
        label.scale.z = 0.02
        out.markers.append(label)
    return out
