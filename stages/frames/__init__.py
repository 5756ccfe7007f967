"""`skel frames`: the RGB frames behind each pose volume, for RGBPose-Conv3D (``params``, ``stage``)."""
