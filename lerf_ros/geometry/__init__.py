"""ROS-free geometry shared by every layer: rigid transforms and quaternions (``poses``), pinhole
back-projection and projection (``camera``), and decoding of raw ``sensor_msgs/Image`` fields
into numpy (``image``). Nothing here imports another part of the package."""
