"""Query engine: text in; a 3D relevancy point cloud and grasp-target poses out (no ROS here)."""

from lerf_ros.query.engine import NO_MODEL_MESSAGE, QueryEngine, QueryResult
from lerf_ros.query.grasp import Grasp, GraspPlan, GripperModel, plan_grasps
from lerf_ros.query.surface import SurfaceCache, SurfacePoints, extract_surface

__all__ = [
    "NO_MODEL_MESSAGE",
    "QueryEngine",
    "QueryResult",
    "Grasp",
    "GraspPlan",
    "GripperModel",
    "plan_grasps",
    "SurfaceCache",
    "SurfacePoints",
    "extract_surface",
]
